"""SQL of the typed reads (ticks, latest, bars, as-of join) and the normalisation of their arguments."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from k2_resources.errors import QueryError

ORDER_TICKS = "exchange_ts, symbol, sequence"
KEY = ("exchange", "symbol", "sequence")
TAIL_VIEW = "_k2_kafka_tail"
TRADES_VIEW = "_k2_trades"
INTERVAL = re.compile(r"^(\d+)([mhd])$")
INTERVAL_UNITS = {"m": "MINUTE", "h": "HOUR", "d": "DAY"}


def symbols_list(symbols: str | Iterable[str] | None) -> list[str]:
    if symbols is None:
        return []
    items = symbols.split(",") if isinstance(symbols, str) else list(symbols)
    return sorted({s.strip().upper() for s in items if s and s.strip()})


def timestamp(value: dt.datetime | dt.date | str | None) -> dt.datetime | None:
    """A tz-aware UTC datetime; naive input and bare dates are taken as UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise QueryError(f"{value!r} is not an ISO 8601 time (e.g. 2026-11-24T00:00:00Z)") from exc
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time())
    return (value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def time_range(
    start: dt.datetime | dt.date | str | None, end: dt.datetime | dt.date | str | None, window_s: float
) -> tuple[dt.datetime, dt.datetime]:
    """[start, end): end defaults to now, start to `window_s` before end (the newest window)."""
    stop = timestamp(end) or dt.datetime.now(dt.UTC)
    begin = timestamp(start) or stop - dt.timedelta(seconds=window_s)
    if begin >= stop:
        raise QueryError(f"empty time range: start {begin.isoformat()} is not before end {stop.isoformat()}")
    return begin, stop


def where(
    symbols: Sequence[str], time_column: str, start: dt.datetime | None, end: dt.datetime | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if symbols:
        clauses.append(f"symbol IN ({', '.join('?' for _ in symbols)})")
        params.extend(symbols)
    if start is not None:
        clauses.append(f"{time_column} >= ?")
        params.append(start)
    if end is not None:
        clauses.append(f"{time_column} < ?")
        params.append(end)
    return (" AND ".join(clauses) or "TRUE"), params


def ticks_sql(predicate: str, with_tail: bool, latest: bool = False) -> tuple[str, int]:
    """The read of ticks (Iceberg, plus the Kafka tail minus keys Iceberg already has); returns (sql, how many
    times the predicate's parameters repeat). Column `_k2_source` says where each row came from."""
    if not with_tail:  # every row is from Iceberg: no _k2_source column to fill and count
        body = f"SELECT * FROM ticks WHERE {predicate}"
        repeats = 1
    else:
        on = " AND ".join(f"l.{k} = t.{k}" for k in KEY)
        body = (
            f"WITH lake AS (SELECT * FROM ticks WHERE {predicate}), "
            f"tail AS (SELECT * FROM {TAIL_VIEW} WHERE {predicate}) "
            "SELECT *, 'iceberg' AS _k2_source FROM lake UNION ALL "
            f"SELECT *, 'kafka' AS _k2_source FROM tail t WHERE NOT EXISTS (SELECT 1 FROM lake l WHERE {on})"
        )
        repeats = 2
    if latest:
        sql = (
            f"SELECT * FROM ({body}) QUALIFY row_number() OVER "
            "(PARTITION BY exchange, symbol ORDER BY exchange_ts DESC, sequence DESC) = 1 ORDER BY exchange, symbol"
        )
    else:
        sql = f"SELECT * FROM ({body}) ORDER BY {ORDER_TICKS}"
    return sql, repeats


def tail_only_sql(predicate: str, latest: bool = False) -> str:
    body = f"SELECT *, 'kafka' AS _k2_source FROM {TAIL_VIEW} WHERE {predicate}"
    if latest:
        return (
            f"SELECT * FROM ({body}) QUALIFY row_number() OVER "
            "(PARTITION BY exchange, symbol ORDER BY exchange_ts DESC, sequence DESC) = 1 ORDER BY exchange, symbol"
        )
    return f"SELECT * FROM ({body}) ORDER BY {ORDER_TICKS}"


def bars_table(interval: str) -> tuple[str, str]:
    """bars_<interval> and the DuckDB interval of one bar."""
    match = INTERVAL.match(interval.strip().lower())
    if match is None:
        raise QueryError(f"interval {interval!r}: use 1m, 5m, 1h, 1d")
    n, unit = match.groups()
    return f"bars_{n}{unit}", f"INTERVAL {int(n)} {INTERVAL_UNITS[unit]}"


def split_source(table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Drop the `_k2_source` column, counting rows per source."""
    if "_k2_source" not in table.column_names:
        return table, {}
    counts = {str(r["values"]): int(r["counts"]) for r in table["_k2_source"].value_counts().to_pylist()}
    return table.drop_columns(["_k2_source"]), counts


def as_arrow(frame: Any) -> pa.Table:
    """pyarrow, polars or pandas in, pyarrow out."""
    if isinstance(frame, pa.Table):
        return frame
    if hasattr(frame, "to_arrow"):
        out = frame.to_arrow()
        if isinstance(out, pa.Table):
            return out
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (TypeError, AttributeError) as exc:
        raise QueryError(f"trades must be a pyarrow Table, polars or pandas DataFrame, not {type(frame)}") from exc


def asof_sql(
    left_columns: Sequence[str],
    right_columns: Sequence[str],
    right: str,
    right_time: str,
    by: str,
    on: str,
    predicate: str,
    prefix: str,
) -> str:
    """Each trade with the last right row known at its time (bars: the last bar *closed* by then, no look-ahead)."""
    left_cols = ", ".join(f"t.{ident(c)}" for c in left_columns)
    right_cols = ", ".join(f"r.{ident(c)} AS {ident(prefix + c)}" for c in right_columns)
    return (
        f"WITH r AS (SELECT *, {right_time} AS _k2_known_at FROM {right} WHERE {predicate}) "
        f"SELECT {left_cols}, {right_cols} FROM {TRADES_VIEW} t ASOF LEFT JOIN r "
        f"ON t.{ident(by)} = r.symbol AND t.{ident(on)} >= r._k2_known_at ORDER BY t.{ident(on)}, t.{ident(by)}"
    )


def ident(name: str) -> str:
    """A quoted SQL identifier (column names come from the caller's frame)."""
    return '"' + name.replace('"', '""') + '"'
