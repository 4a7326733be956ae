"""Shared by the bar tests: a real local Iceberg catalog (SQLite) with the tick and bar tables, a way to publish
ticks like validated_ticks does, and an oracle that shares no code with k2_assets.bars."""

from __future__ import annotations

import itertools
from pathlib import Path

import duckdb
import polars as pl

from k2_assets.bars.build import BarTables
from k2_assets.bars.store import arrow_to_frame
from k2_resources.arrow_util import conform
from k2_resources.iceberg import IcebergResource

MIN = 60_000_000
T0 = 1_795_561_200_000_000  # 2026-11-24 23:00:00 UTC = 2026-11-25 10:00 Sydney (AEDT, UTC+11): the open
SYDNEY_OFFSET_US = 11 * 3_600_000_000  # AEDT all of November 2026
VALUES = ["open", "high", "low", "close", "volume", "trade_count", "vwap", "first_sequence", "last_sequence"]
KEY = ["exchange", "symbol", "window_start"]
_namespaces = itertools.count(1)


def bar_tables(home: Path) -> BarTables:
    """Fresh tables in their own namespace of a SQLite catalog under `home`."""
    iceberg = IcebergResource(
        catalog_uri=f"sqlite:///{home}/catalog.db",
        warehouse=f"file://{home}/warehouse",
        namespace=f"t{next(_namespaces)}",
    )
    return BarTables.open(iceberg)


def publish(tables: BarTables, ticks: pl.DataFrame) -> None:
    """Append validated ticks (integer space) to the ticks table, as validated_ticks does."""
    frame = ticks.with_columns(pl.col("exchange_ts").alias("ingest_ts"))
    tables.ticks.append(conform(frame.to_arrow(), tables.ticks.schema().as_arrow()))


def stored(tables: BarTables, interval: str) -> pl.DataFrame:
    table = tables.bars[interval]
    table.refresh()
    if table.current_snapshot() is None:
        return pl.DataFrame()
    return arrow_to_frame(table.scan().to_arrow()).sort(KEY)


def corrections(tables: BarTables) -> pl.DataFrame:
    tables.corrections.refresh()
    if tables.corrections.current_snapshot() is None:
        return pl.DataFrame()
    return arrow_to_frame(tables.corrections.scan().to_arrow())


# Bucket width in µs and the offset that aligns it to the exchange's local time (hours and days are local).
BUCKETS = {"1m": (MIN, 0), "5m": (5 * MIN, 0), "1h": (60 * MIN, SYDNEY_OFFSET_US), "1d": (1440 * MIN, SYDNEY_OFFSET_US)}


def oracle(ticks: pl.DataFrame, interval: str) -> pl.DataFrame:
    """Bars straight from the ticks in DuckDB SQL: open/close = arg_min/arg_max by (exchange_ts, sequence), vwap =
    exact Σ price·volume / Σ volume rounded half-up, in integer millionths."""
    width, offset = BUCKETS[interval]
    con = duckdb.connect()
    con.register("t", ticks.select("exchange", "symbol", "sequence", "exchange_ts", "price", "volume").to_arrow())
    sql = f"""
    SELECT exchange, symbol, ((exchange_ts + {offset}) // {width}) * {width} - {offset} AS window_start,
           arg_min(price, (exchange_ts, sequence)) AS open, max(price) AS high, min(price) AS low,
           arg_max(price, (exchange_ts, sequence)) AS close, sum(volume)::BIGINT AS volume,
           count(*)::BIGINT AS trade_count,
           CASE WHEN sum(volume) > 0 THEN
             ((sum(price::HUGEINT * volume) * 2 + sum(volume)) // (2 * sum(volume)))::BIGINT END AS vwap,
           arg_min(sequence, (exchange_ts, sequence)) AS first_sequence,
           arg_max(sequence, (exchange_ts, sequence)) AS last_sequence
    FROM t GROUP BY ALL ORDER BY ALL
    """
    return con.sql(sql).pl()


def mismatches(bars: pl.DataFrame, expected: pl.DataFrame) -> pl.DataFrame:
    """Rows where the stored bars and the oracle disagree (a missing row on either side counts)."""
    if bars.is_empty():
        return expected
    got = bars.select(KEY + VALUES)
    joined = got.join(expected, on=KEY, how="full", coalesce=True, suffix="_oracle")
    return joined.filter(pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_oracle")) for c in VALUES]))
