"""Builders shared by the maintenance tests (no tests here): a real SQLite Iceberg catalog in a temp directory and a
`ticks` table filled in micro-batches through the exactly-once writer, so every snapshot carries a watermark."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
from pyiceberg.table import Table

from k2.feed.simulator import generate
from k2_resources.arrow_util import conform
from k2_resources.iceberg import IcebergResource, OffsetRange, commit_offset_ranges
from k2_resources.tables import TICKS

SESSION = dt.date(2026, 11, 25)
TOPIC = "market.ticks.asx"


def catalog_in(tmp_path: Path) -> IcebergResource:
    return IcebergResource(catalog_uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=(tmp_path / "warehouse").as_uri())


def tick_rows(table: Table, n: int, seed: int = 3, symbols: int = 3) -> pa.Table:
    feed = generate(n, seed=seed, symbols=symbols, day=SESSION)
    return conform(feed.ticks.to_arrow(), table.schema().as_arrow())


def append_batches(table: Table, rows: pa.Table, batches: int, *, first_offset: int = 0) -> list[int]:
    """Append `rows` as `batches` consecutive Kafka ranges of partition 0; returns the snapshot ids."""
    step = -(-rows.num_rows // batches)
    ids = []
    for i in range(batches):
        part = rows.slice(i * step, step)
        lo = first_offset + i * step
        outcome = commit_offset_ranges(
            table, [OffsetRange(TOPIC, 0, lo, lo + part.num_rows)], lambda _todo, p=part: p, batch_id=f"b{lo}"
        )
        assert outcome.snapshot_id is not None
        ids.append(outcome.snapshot_id)
    return ids


def ticks_table(tmp_path: Path, *, rows: int = 6_000, batches: int = 6, symbols: int = 3) -> tuple[Table, pa.Table]:
    """A fresh `ticks` table holding `rows` ticks in `batches` micro-batches (one small file per partition each)."""
    table = catalog_in(tmp_path).ensure_table(TICKS)
    data = tick_rows(table, rows, symbols=symbols)
    append_batches(table, data, batches)
    return table, data


def canonical(rows: pa.Table) -> pa.Table:
    """Rows in a fixed order, for equality checks independent of file layout."""
    keys = [name for name in rows.column_names if not pa.types.is_nested(rows.schema.field(name).type)]
    return rows.sort_by([(name, "ascending") for name in keys])
