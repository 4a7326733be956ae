"""Write-audit-publish on a local Iceberg catalog, and how validated_ticks re-plans a batch interrupted between its
table commits (no Kafka needed: the watermarks are written directly)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from pyiceberg.table import Table

from k2_assets.ticks.publish import pending_ranges
from k2_assets.ticks.state import pinned_snapshot
from k2_assets.ticks.wap import AUDIT_BRANCH, publish, read_staged, stage
from k2_resources.arrow_util import conform
from k2_resources.iceberg import (
    WATERMARK_PROPERTY,
    IcebergResource,
    OffsetRange,
    append_with_properties,
    encode_watermarks,
    read_watermarks,
)
from k2_resources.tables import QUARANTINE, RAW_TICKS, SEQUENCE_GAPS, SYMBOL_STATE, TICKS

T = "market.ticks.asx"
NOON = int(dt.datetime(2026, 11, 25, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)


@pytest.fixture
def iceberg(tmp_path: Path) -> IcebergResource:
    return IcebergResource(catalog_uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")


def ticks_rows(table: Table, sequences: list[int]) -> pa.Table:
    n = len(sequences)
    frame = pl.DataFrame(
        {"exchange": ["ASX"] * n, "symbol": ["BHP"] * n, "sequence": sequences, "exchange_ts": [NOON] * n}
    )
    return conform(frame.to_arrow(), table.schema().as_arrow())


def mark(table: Table, marks: dict[int, int]) -> None:
    append_with_properties(
        table, table.schema().as_arrow().empty_table(), {WATERMARK_PROPERTY: encode_watermarks({T: marks})}
    )


def test_a_staged_batch_reaches_main_only_when_published_with_its_watermark(iceberg: IcebergResource) -> None:
    ticks = iceberg.ensure_table(TICKS)
    staged = stage(ticks, [OffsetRange(T, 0, 0, 3)], lambda todo: ticks_rows(ticks, [1, 2, 3]), batch_id="b1")
    assert staged is not None and staged.rows == 3
    assert ticks.scan().to_arrow().num_rows == 0  # main: only the empty root snapshot
    assert read_watermarks(ticks) == {}
    assert read_staged(ticks, staged)["sequence"].to_pylist() == [1, 2, 3]
    assert ticks.scan().use_ref(AUDIT_BRANCH).to_arrow().num_rows == 3

    assert publish(ticks, staged)
    assert ticks.scan().to_arrow().num_rows == 3
    assert read_watermarks(ticks) == {T: {0: 3}}
    # The same range again: main already has it, nothing is staged.
    assert stage(ticks, [OffsetRange(T, 0, 0, 3)], lambda todo: ticks_rows(ticks, [1, 2, 3]), batch_id="b2") is None


def test_publishing_is_refused_when_main_moved_after_staging(iceberg: IcebergResource) -> None:
    ticks = iceberg.ensure_table(TICKS)
    staged = stage(ticks, [OffsetRange(T, 0, 0, 2)], lambda todo: ticks_rows(ticks, [1, 2]), batch_id="b1")
    assert staged is not None
    ticks.append(ticks_rows(ticks, [9]))  # another writer (a release, compaction) commits to main meanwhile
    head = ticks.current_snapshot()
    assert not publish(ticks, staged)
    ticks.refresh()
    assert ticks.current_snapshot() == head
    assert ticks.scan().to_arrow()["sequence"].to_pylist() == [9]


def test_the_rows_read_for_the_gate_are_exactly_the_staged_batch(iceberg: IcebergResource) -> None:
    ticks = iceberg.ensure_table(TICKS)
    first = stage(ticks, [OffsetRange(T, 0, 0, 2)], lambda todo: ticks_rows(ticks, [1, 2]), batch_id="b1")
    assert first is not None and publish(ticks, first)
    second = stage(ticks, [OffsetRange(T, 0, 2, 5)], lambda todo: ticks_rows(ticks, [3, 4, 5]), batch_id="b2")
    assert second is not None
    assert sorted(read_staged(ticks, second)["sequence"].to_pylist()) == [3, 4, 5]


def test_a_batch_interrupted_between_table_commits_is_planned_again_exactly(iceberg: IcebergResource) -> None:
    raw, ticks, quarantine, gaps, state = (
        iceberg.ensure_table(d) for d in (RAW_TICKS, TICKS, QUARANTINE, SEQUENCE_GAPS, SYMBOL_STATE)
    )
    mark(raw, {0: 100, 1: 50})
    for table in (ticks, quarantine, gaps, state):
        mark(table, {0: 40, 1: 20})
    outputs = [ticks, quarantine, gaps, state]
    assert pending_ranges(raw, outputs, 1_000) == [OffsetRange(T, 0, 40, 100), OffsetRange(T, 1, 20, 50)]
    # The batch [40, 60) of partition 0 reached gaps, state and quarantine, then the run died before ticks.
    for table in (quarantine, gaps, state):
        mark(table, {0: 60, 1: 20})
    assert pending_ranges(raw, outputs, 1_000) == [OffsetRange(T, 0, 40, 60)]
    assert pending_ranges(raw, outputs, 15) == [OffsetRange(T, 0, 40, 55)]


def test_state_is_read_as_of_the_batchs_first_offsets(iceberg: IcebergResource) -> None:
    state = iceberg.ensure_table(SYMBOL_STATE)
    assert pinned_snapshot(state, {(T, 0): 0}) is None  # nothing written yet
    mark(state, {0: 10})
    at_10 = state.current_snapshot()
    mark(state, {0: 40})
    at_40 = state.current_snapshot()
    assert pinned_snapshot(state, {(T, 0): 40}) == at_40  # the normal case: the current state
    assert pinned_snapshot(state, {(T, 0): 20}) == at_10  # a re-run of [10, 40): the state before it
    assert pinned_snapshot(state, {(T, 0): 5}) is None
