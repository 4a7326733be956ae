"""A validated_ticks batch that dies after its side tables committed but before ticks was published is completed
by the next run with the same result as an uninterrupted run: nothing doubled, nothing lost (file-backed log, local
Iceberg catalog; the crash is injected at the publish step)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

import k2_assets.ticks.publish as publish_module
from k2.feed.producer import produce_feed
from k2.feed.simulator import FaultRates, generate
from k2_assets.ticks.dlq import MemoryDeadLetters
from k2_assets.ticks.ingest import ingest_raw
from k2_assets.ticks.planning import plan_ranges
from k2_assets.ticks.publish import QualityConfig, publish_validated
from k2_assets.ticks.validated import validation_tables
from k2_resources.duckdb import connect
from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.kafka_file import FileTickLog
from k2_resources.schemas import FileSchemaStore
from k2_resources.tables import RAW_TICKS

TOPIC = "market.ticks.asx"
FAULTS = FaultRates(duplicates=0.02, gaps=0.02, non_positive_price=0.01, jumps=0.01, undecodable=0.01)


class Crash(RuntimeError):
    pass


def lakehouse(root: Path) -> IcebergResource:
    log = FileTickLog(root / "log")
    feed = generate(3_000, seed=9, day=dt.date(2026, 11, 25), faults=FAULTS)
    produce_feed(log, TOPIC, feed, FileSchemaStore(), 3)
    iceberg = IcebergResource(catalog_uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/warehouse")
    raw = iceberg.ensure_table(RAW_TICKS)
    ingest_raw(log, raw, plan_ranges(TOPIC, log.offsets(TOPIC), {}, 10_000), FileSchemaStore(), batch_id="raw")
    return iceberg


def validate_once(iceberg: IcebergResource, sink: MemoryDeadLetters) -> None:
    config = QualityConfig(gate_enabled=False)  # the GE gate has its own tests; here: commit order and recovery
    publish_validated(
        validation_tables(iceberg), batch_id="b", max_per_partition=10_000, config=config, dead_letters=sink
    )


def contents(iceberg: IcebergResource) -> dict[str, pl.DataFrame]:
    con = connect(iceberg)
    return {
        "ticks": con.sql("SELECT symbol, sequence, price FROM ticks ORDER BY ALL").pl(),
        "quarantine": con.sql("SELECT kafka_partition, kafka_offset, reasons FROM quarantine ORDER BY ALL").pl(),
        "gaps": con.sql("SELECT gap_id, missing_count, filled_count FROM sequence_gaps ORDER BY ALL").pl(),
        "state": con.sql("SELECT symbol, epoch, last_sequence, last_price FROM symbol_state ORDER BY ALL").pl(),
    }


def test_a_batch_interrupted_before_publish_completes_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = lakehouse(tmp_path / "reference")
    validate_once(reference, MemoryDeadLetters())
    expected = contents(reference)
    assert expected["ticks"].height > 2_500 and expected["quarantine"].height > 50 and expected["gaps"].height > 30

    crashed = lakehouse(tmp_path / "crashed")
    letters = MemoryDeadLetters()

    def die(*_: object) -> bool:
        raise Crash("killed between the side-table commits and the publish of ticks")

    monkeypatch.setattr(publish_module, "publish", die)
    with pytest.raises(Crash):
        validate_once(crashed, letters)
    tables = validation_tables(crashed)
    assert read_watermarks(tables.quarantine) and read_watermarks(tables.gaps) and read_watermarks(tables.state)
    assert read_watermarks(tables.ticks) == {}  # main untouched: the batch waits on the audit branch
    sent_before_crash = len(letters.sent)

    monkeypatch.undo()
    validate_once(crashed, letters)
    got = contents(crashed)
    for name, frame in expected.items():
        assert got[name].equals(frame), name
    assert len(letters.sent) == sent_before_crash  # dead letters were sent once, with the quarantine commit
    assert read_watermarks(tables.ticks.refresh()) == read_watermarks(tables.raw)
