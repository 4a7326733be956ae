"""Small Iceberg tables for query tests that need no broker: ticks and bars written straight to a fresh catalog."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.types import DecimalType, NestedField, StringType, TimestamptzType

from k2_resources.arrow_util import conform
from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource
from k2_resources.tables import QUARANTINE, RAW_TICKS, TICKS, TableDef

DAY = dt.datetime(2026, 11, 24, 23, 0, tzinfo=dt.UTC)
SYMBOLS = ("BHP", "CBA", "CSL")
PNL = TableDef(
    name="pnl",
    schema=Schema(
        NestedField(1, "desk", StringType(), required=False),
        NestedField(2, "pnl", DecimalType(18, 6), required=False),
    ),
)
BARS_1M_SCHEMA = Schema(
    NestedField(1, "exchange", StringType(), required=False),
    NestedField(2, "symbol", StringType(), required=False),
    NestedField(4, "window_start", TimestamptzType(), required=False),
    NestedField(8, "close", DecimalType(18, 6), required=False),
)


def tick_rows(n: int, first_sequence: int = 1, start: dt.datetime = DAY) -> pa.Table:
    """`n` ticks per symbol, one second apart, prices 10.00, 10.01, ... (integer space, as the pipeline writes)."""
    t0 = int(start.timestamp() * 1_000_000)
    seq = np.arange(first_sequence, first_sequence + n, dtype=np.int64)
    frames = [
        pl.DataFrame(
            {
                "exchange": "ASX",
                "symbol": symbol,
                "sequence": seq,
                "exchange_ts": t0 + (seq - 1) * 1_000_000 + i * 1000,
                "ingest_ts": t0 + (seq - 1) * 1_000_000 + i * 1000 + 500,
                "price": 10_000_000 + seq * 10_000 + i * 1_000_000,
                "volume": seq * 10,
                "trade_id": [f"{symbol}-{s}" for s in seq],
                "side": "BUY",
                "conditions": [[] for _ in seq],
            },
            schema_overrides={"conditions": pl.List(pl.String)},
        )
        for i, symbol in enumerate(SYMBOLS)
    ]
    return pl.concat(frames).to_arrow()


def seed(settings: Settings, n: int = 20) -> IcebergResource:
    """ticks (n per symbol), bars_1m (one bar per symbol-minute), empty raw_ticks and quarantine, a pnl table."""
    iceberg = IcebergResource.from_settings(settings)
    ticks = iceberg.ensure_table(TICKS)
    ticks.append(conform(tick_rows(n), ticks.schema().as_arrow()))
    for table_def in (RAW_TICKS, QUARANTINE, PNL):
        iceberg.ensure_table(table_def)
    pnl = iceberg.load("pnl")
    pnl.append(conform(pa.table({"desk": ["d1"], "pnl": pa.array([1_000_000], pa.int64())}), pnl.schema().as_arrow()))
    iceberg.catalog().create_table(iceberg.identifier("bars_1m"), schema=BARS_1M_SCHEMA)
    append_bars(iceberg, minutes=3)
    return iceberg


def append_bars(iceberg: IcebergResource, minutes: int, first_minute: int = 0) -> None:
    bars = iceberg.load("bars_1m")
    t0 = int(DAY.timestamp() * 1_000_000)
    rows = pl.DataFrame(
        {
            "exchange": "ASX",
            "symbol": [s for s in SYMBOLS for _ in range(minutes)],
            "window_start": [t0 + (first_minute + m) * 60_000_000 for _ in SYMBOLS for m in range(minutes)],
            "close": [10_000_000 + m for _ in SYMBOLS for m in range(minutes)],
        }
    )
    bars.append(conform(rows.to_arrow(), bars.schema().as_arrow()))
