"""What a raw SQL statement reads, from DuckDB's own parser (json_serialize_sql), before it runs.

Only SELECT statements parse; anything else (DELETE, COPY, ATTACH, SET, ...) is refused. Table functions
(read_parquet, iceberg_scan, ...) reach files behind the views' back, so only roles with `*` may use them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import duckdb

from k2_resources.errors import QueryError

_lock = threading.Lock()


@cache
def _parser() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


@cache
def aggregate_functions() -> frozenset[str]:
    with _lock:
        rows = (
            _parser()
            .execute("SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'aggregate'")
            .fetchall()
        )
    return frozenset(str(r[0]).lower() for r in rows) | {"count_star"}


@dataclass(frozen=True)
class SqlShape:
    tables: frozenset[str]  # base tables referenced, namespace stripped, CTE names excluded
    table_functions: frozenset[str]
    aggregate: bool
    qualified: frozenset[str] = frozenset()  # tables referenced as <namespace>.<table>


@lru_cache(maxsize=512)
def _serialized(sql: str) -> str | None:
    """DuckDB's parse tree of `sql` as JSON text (cached: analyse and where_bounds read the same statement)."""
    with _lock:
        raw = _parser().execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    return str(raw[0]) if raw else None


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def analyse(sql: str, namespace: str) -> SqlShape:
    raw = _serialized(sql)
    tree: dict[str, Any] = json.loads(raw) if raw else {"error": True, "error_message": "no result"}
    if tree.get("error"):
        message = tree.get("error_message", "")
        if "Only SELECT" in message:
            raise QueryError(
                "only SELECT statements run through K2 (tables are read-only; the audit log is append-only)"
            )
        raise QueryError(f"the SQL does not parse: {message}")
    if len(tree.get("statements", [])) != 1:
        raise QueryError("give exactly one SELECT statement")
    ctes: set[str] = set()
    tables: set[str] = set()
    qualified: set[str] = set()  # namespace.table never means a CTE
    functions: set[str] = set()
    aggregate = False
    aggregates = aggregate_functions()
    for node in _walk(tree["statements"]):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            ctes.update(str(item.get("key", "")).lower() for item in cte_map.get("map", []))
        kind = node.get("type")
        if kind == "BASE_TABLE":
            schema = str(node.get("schema_name") or "").lower()
            if schema not in ("", namespace.lower()) or node.get("catalog_name"):
                raise QueryError(f"{schema}.{node.get('table_name')}: only tables of {namespace} can be read")
            (qualified if schema else tables).add(str(node["table_name"]).lower())
        elif kind == "TABLE_FUNCTION":
            functions.add(str(node.get("function", {}).get("function_name", "?")).lower())
        elif node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in aggregates:
            aggregate = True
        if node.get("type") == "SELECT_NODE" and node.get("group_expressions"):
            aggregate = True
    return SqlShape(frozenset((tables - ctes) | qualified), frozenset(functions), aggregate, frozenset(qualified))


# ---- predicates a statement's WHERE implies (the file-list fast path for raw SQL) ------------------------------

_TIME_CASTS = frozenset({"TIMESTAMP WITH TIME ZONE", "TIMESTAMP", "DATE", "VARCHAR", "TIMESTAMP_NS", "TIMESTAMP_MS"})
_FLIP = {
    "COMPARE_EQUAL": "COMPARE_EQUAL",
    "COMPARE_GREATERTHAN": "COMPARE_LESSTHAN",
    "COMPARE_GREATERTHANOREQUALTO": "COMPARE_LESSTHANOREQUALTO",
    "COMPARE_LESSTHAN": "COMPARE_GREATERTHAN",
    "COMPARE_LESSTHANOREQUALTO": "COMPARE_GREATERTHANOREQUALTO",
}


@cache
def _utc() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # the query slots' time zone: a literal means what it means there
    return con


@dataclass(frozen=True)
class TableBounds:
    """What every row a statement can use of one table satisfies: symbol in `symbols` (None: unconstrained) and,
    per column, [start, end) in epoch µs (None: open)."""

    symbols: frozenset[str] | None
    times: dict[str, tuple[int | None, int | None]]


def _column(node: Any, names: set[str]) -> str | None:
    if not isinstance(node, dict) or node.get("class") != "COLUMN_REF":
        return None
    parts = [str(p).lower() for p in node.get("column_names", [])]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2 and parts[0] in names:
        return parts[1]
    return None


def _string(node: Any) -> str | None:
    if isinstance(node, dict) and node.get("class") == "CONSTANT":
        value = node.get("value", {})
        if not value.get("is_null") and value.get("type", {}).get("id") == "VARCHAR":
            return str(value.get("value"))
    return None


def _time_literal(node: Any) -> tuple[str, str] | None:
    """(text, DuckDB type) of a literal time: a string, or a cast of one to a time type; else None."""
    cast = "VARCHAR"
    if isinstance(node, dict) and node.get("class") == "CAST" and not node.get("try_cast"):
        cast = str(node.get("cast_type", {}).get("id", ""))
        node = node.get("child")
    text = _string(node)
    return None if text is None or cast not in _TIME_CASTS else (text, cast)


def _micros(literals: list[tuple[str, str]]) -> list[int | None]:
    """The literals as epoch µs, read by DuckDB in UTC as the query slot reads them (None: not a time), in one
    query."""
    if not literals:
        return []
    terms = ", ".join(f"epoch_us(TRY_CAST(TRY_CAST(? AS {cast}) AS TIMESTAMPTZ))" for _, cast in literals)
    with _lock:
        row = _utc().execute(f"SELECT [{terms}]", [text for text, _ in literals]).fetchone()
    values = row[0] if row else None
    return [int(v) if v is not None else None for v in values] if values else [None] * len(literals)


def _conjuncts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict) and node.get("type") == "CONJUNCTION_AND":
        for child in node.get("children", []):
            yield from _conjuncts(child)
    elif isinstance(node, dict):
        yield node


def _bounds(where: Any, names: set[str]) -> TableBounds:
    symbols: frozenset[str] | None = None
    conflict = False
    ranges: list[tuple[str, tuple[str, str] | None, tuple[str, str] | None, bool]] = []  # column, lo, hi, hi incl.

    for node in _conjuncts(where):
        kind = node.get("type")
        found: frozenset[str] | None = None
        if kind == "COMPARE_IN" and node.get("class") == "OPERATOR":
            children = node.get("children", [])
            values = [_string(c) for c in children[1:]]
            if _column(children[0] if children else None, names) == "symbol" and values and None not in values:
                found = frozenset(v for v in values if v is not None)
        elif kind == "COMPARE_BETWEEN":
            column = _column(node.get("input"), names)
            if column is not None:
                ranges.append((column, _time_literal(node.get("lower")), _time_literal(node.get("upper")), True))
        elif kind in _FLIP and node.get("class") == "COMPARISON":
            left, right, op = node.get("left"), node.get("right"), kind
            if _column(left, names) is None:
                left, right, op = right, left, _FLIP[kind]
            column = _column(left, names)
            literal = _time_literal(right)
            if column == "symbol" and op == "COMPARE_EQUAL" and _string(right) is not None:
                found = frozenset({str(_string(right))})
            elif column is not None and literal is not None:
                if op == "COMPARE_EQUAL":
                    ranges.append((column, literal, literal, True))
                elif op in ("COMPARE_GREATERTHAN", "COMPARE_GREATERTHANOREQUALTO"):
                    ranges.append((column, literal, None, False))
                else:
                    ranges.append((column, None, literal, op == "COMPARE_LESSTHANOREQUALTO"))
        if found is not None:
            if symbols is not None and not (symbols & found):
                conflict = True  # contradictory: no row matches; do not prune on symbols rather than reason about it
            symbols = found if symbols is None else symbols & found or symbols

    literals = [lit for _, lo, hi, _ in ranges for lit in (lo, hi) if lit is not None]
    at = iter(_micros(literals))
    times: dict[str, tuple[int | None, int | None]] = {}
    for column, lo_lit, hi_lit, inclusive in ranges:
        start = next(at) if lo_lit is not None else None
        end = next(at) if hi_lit is not None else None
        if end is not None and inclusive:
            end += 1
        lo, hi = times.get(column, (None, None))
        lo = start if lo is None else (lo if start is None else max(lo, start))
        hi = end if hi is None else (hi if end is None else min(hi, end))
        times[column] = (lo, hi)
    return TableBounds(None if conflict else symbols, times)


def where_bounds(sql: str, namespace: str) -> dict[str, TableBounds]:
    """For a statement that is one SELECT over one base table, referenced once, with no CTE, no time travel
    clause and no sample: the bounds its WHERE clause's top-level AND terms put on that table's rows (`symbol = `,
    `symbol IN`, comparisons and BETWEEN of a column with a time literal). Anything else constrains nothing:
    {} means "read everything". Every row the statement can use satisfies the bounds, so files whose column
    bounds exclude them can be skipped."""
    raw = _serialized(sql)
    tree: dict[str, Any] = json.loads(raw) if raw else {}
    statements = tree.get("statements") or []
    if tree.get("error") or len(statements) != 1:
        return {}
    nodes = list(_walk(statements))
    if any((n.get("cte_map") or {}).get("map") for n in nodes):
        return {}
    bases = [n for n in nodes if n.get("type") == "BASE_TABLE"]
    select = statements[0].get("node", {})
    source = select.get("from_table") or {}
    if (
        select.get("type") != "SELECT_NODE"
        or len(bases) != 1
        or source is not bases[0]
        or source.get("at_clause")
        or source.get("sample")
        or source.get("catalog_name")
        or str(source.get("schema_name") or "").lower() not in ("", namespace.lower())
        or select.get("where_clause") is None
    ):
        return {}
    table = str(source.get("table_name", "")).lower()
    names = {table, str(source.get("alias") or "").lower()} - {""}
    return {table: _bounds(select["where_clause"], names)}
