"""What a raw SQL statement reads, from DuckDB's own parser (json_serialize_sql), before it runs.

Only SELECT statements parse; anything else (DELETE, COPY, ATTACH, SET, ...) is refused. Table functions
(read_parquet, iceberg_scan, ...) reach files behind the views' back, so only roles with `*` may use them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
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


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def analyse(sql: str, namespace: str) -> SqlShape:
    with _lock:
        raw = _parser().execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree: dict[str, Any] = json.loads(raw[0]) if raw else {"error": True, "error_message": "no result"}
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
    return SqlShape(frozenset((tables - ctes) | qualified), frozenset(functions), aggregate)
