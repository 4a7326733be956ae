"""validated_ticks takes the rows raw_ticks just committed in the same process instead of reading them back from
Iceberg, only when they are exactly what raw's current snapshot holds for the planned ranges; otherwise it reads
Iceberg. Either way it gets the same rows in the same (arrival) order, and publishes the same tables."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import k2_assets.ticks.publish as publish_module
from k2.feed.producer import produce_feed
from k2.feed.simulator import FaultRates, generate
from k2_assets.ticks import handover
from k2_assets.ticks.dlq import MemoryDeadLetters
from k2_assets.ticks.ingest import ingest_raw
from k2_assets.ticks.planning import plan_ranges
from k2_assets.ticks.publish import QualityConfig, arrival_order, publish_validated, read_raw
from k2_assets.ticks.validated import validation_tables
from k2_resources.duckdb import connect
from k2_resources.iceberg import IcebergResource, OffsetRange, append_with_properties
from k2_resources.kafka_file import FileTickLog
from k2_resources.schemas import FileSchemaStore
from k2_resources.tables import RAW_TICKS

TOPIC = "market.ticks.asx"
FAULTS = FaultRates(duplicates=0.02, gaps=0.02, non_positive_price=0.01, undecodable=0.01)


def landed(root: Path) -> tuple[IcebergResource, list[OffsetRange]]:
    log = FileTickLog(root / "log")
    produce_feed(log, TOPIC, generate(2_000, seed=3, day=dt.date(2026, 11, 25), faults=FAULTS), FileSchemaStore(), 3)
    iceberg = IcebergResource(catalog_uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/warehouse")
    ranges = plan_ranges(TOPIC, log.offsets(TOPIC), {}, 10_000)
    ingest_raw(log, iceberg.ensure_table(RAW_TICKS), ranges, FileSchemaStore(), batch_id="raw")
    return iceberg, ranges


@pytest.fixture
def iceberg_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = publish_module.read_files_matching

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(publish_module, "read_files_matching", counting)
    return calls


def test_handed_over_rows_equal_the_iceberg_read_and_skip_it(tmp_path: Path, iceberg_reads: list[int]) -> None:
    iceberg, ranges = landed(tmp_path)
    raw = iceberg.load("raw_ticks")
    offered = handover.peek()
    assert offered is not None and offered.snapshot_id == raw.current_snapshot().snapshot_id  # type: ignore[union-attr]

    handed = read_raw(raw, ranges)
    assert iceberg_reads == []
    assert handover.peek() is None  # taken once
    from_iceberg = read_raw(raw, ranges)
    assert iceberg_reads == [1]
    assert handed.height == sum(r.size for r in ranges) == 2_000
    assert_frame_equal(handed, from_iceberg)


def test_a_subset_of_the_ranges_is_cut_from_the_hand_over(tmp_path: Path, iceberg_reads: list[int]) -> None:
    iceberg, ranges = landed(tmp_path)
    raw = iceberg.load("raw_ticks")
    part = [OffsetRange(r.topic, r.partition, r.start + 10, r.stop - 5) for r in ranges]
    handed = read_raw(raw, part)
    assert iceberg_reads == []
    assert_frame_equal(handed, read_raw(raw, part))
    assert handed.height == sum(r.size for r in part)


def test_a_newer_raw_snapshot_falls_back_to_iceberg(tmp_path: Path, iceberg_reads: list[int]) -> None:
    iceberg, ranges = landed(tmp_path)
    raw = iceberg.load("raw_ticks")
    summary = raw.current_snapshot().summary  # type: ignore[union-attr]
    append_with_properties(raw, raw.schema().as_arrow().empty_table(), dict(summary.additional_properties))  # type: ignore[union-attr]
    rows = read_raw(raw, ranges)
    assert iceberg_reads == [1]
    assert rows.height == sum(r.size for r in ranges)


def test_ranges_outside_the_hand_over_fall_back_to_iceberg(tmp_path: Path, iceberg_reads: list[int]) -> None:
    iceberg, ranges = landed(tmp_path)
    raw = iceberg.load("raw_ticks")
    wider = [OffsetRange(r.topic, r.partition, r.start, r.stop + 1) for r in ranges]
    read_raw(raw, wider)
    assert iceberg_reads == [1]


def _published(iceberg: IcebergResource) -> dict[str, pl.DataFrame]:
    con = connect(iceberg)
    return {
        "ticks": con.sql("SELECT * FROM ticks ORDER BY ALL").pl(),
        "quarantine": con.sql("SELECT kafka_partition, kafka_offset, reasons FROM quarantine ORDER BY ALL").pl(),
        "gaps": con.sql("SELECT gap_id, missing_count FROM sequence_gaps ORDER BY ALL").pl(),
    }


def test_publishing_with_and_without_the_hand_over_gives_the_same_tables(
    tmp_path: Path, iceberg_reads: list[int]
) -> None:
    config = QualityConfig(gate_enabled=False)
    results = []
    for name, keep in (("handed", True), ("read", False)):
        iceberg, _ = landed(tmp_path / name)
        if not keep:
            handover.discard()
        publish_validated(
            validation_tables(iceberg),
            batch_id="b",
            max_per_partition=10_000,
            config=config,
            dead_letters=MemoryDeadLetters(),
        )
        results.append(_published(iceberg))
    assert iceberg_reads == [1]  # only the run without the hand-over read raw_ticks back
    for table in results[0]:
        assert_frame_equal(results[0][table], results[1][table])


def test_arrival_order_sorts_only_when_needed() -> None:
    frame = pl.DataFrame({"kafka_topic": ["t"] * 4, "kafka_partition": [0, 0, 1, 1], "kafka_offset": [5, 6, 0, 1]})
    assert arrival_order(frame) is frame
    shuffled = frame[[2, 0, 3, 1]]
    assert_frame_equal(arrival_order(shuffled), frame)
