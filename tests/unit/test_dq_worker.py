"""The GE suites run in a worker process once `prewarm` started one: same results as in process, Data Docs built
after the answer when deferred (and waited for), and a dead worker is a typed error that publishes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from k2.feed.producer import produce_feed
from k2.feed.simulator import generate
from k2_assets.serving import dq_suites, dq_worker
from k2_assets.ticks.dlq import MemoryDeadLetters
from k2_assets.ticks.gate import BATCH_SUITE, GateConfig
from k2_assets.ticks.ingest import ingest_raw
from k2_assets.ticks.planning import plan_ranges
from k2_assets.ticks.publish import QualityConfig, publish_validated
from k2_assets.ticks.validated import validation_tables
from k2_resources.errors import QualityGateError
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka_file import FileTickLog
from k2_resources.schemas import FileSchemaStore
from k2_resources.tables import RAW_TICKS

TOPIC = "market.ticks.asx"


def batch(rows_in: int, quarantined: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rows_in": [rows_in],
            "rows_accounted": [rows_in],
            "rows_validated": [rows_in - quarantined],
            "rows_staged": [rows_in - quarantined],
            "quarantine_rate": [quarantined / rows_in],
        }
    )


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[dq_worker.SuiteWorker]:
    dq_suites.prewarm((BATCH_SUITE,), tmp_path / "docs")
    started = dq_worker.current()
    assert started is not None and started.alive()
    yield started
    dq_worker._close()
    dq_worker._WORKER = None


def docs_pages(docs: Path, run_name: str) -> list[Path]:
    return [p for p in docs.rglob("*.html") if run_name in str(p)]


def test_the_worker_answers_like_this_process_and_defers_the_docs_until_waited_for(
    tmp_path: Path, worker: dq_worker.SuiteWorker
) -> None:
    docs = tmp_path / "docs"
    params = {"quarantine_ceiling": 0.1}
    for rate, passes in ((1, True), (50, False)):
        frame = batch(100, rate)
        remote = dq_suites.run_suite(
            BATCH_SUITE, frame, params, run_name=f"remote-{rate}", docs_dir=docs, defer_docs=True
        )
        assert [s.kind for s in worker._owed] == ["docs"]  # answered before its Data Docs were built
        dq_worker.wait_docs()
        assert worker._owed == []
        assert docs_pages(docs, f"remote-{rate}")  # built, and complete once wait_docs returned
        local, _ = dq_suites.validate_here(
            BATCH_SUITE, frame, params, run_name=f"local-{rate}", docs_dir=tmp_path / "d2"
        )
        assert remote.success is local.success is passes
        assert [(e.expectation, e.column, e.success, e.observed) for e in remote.expectations] == [
            (e.expectation, e.column, e.success, e.observed) for e in local.expectations
        ]
    assert (docs / "index.html").exists()


def test_docs_of_a_suite_run_without_deferral_exist_when_it_returns(
    tmp_path: Path, worker: dq_worker.SuiteWorker
) -> None:
    docs = tmp_path / "docs"
    dq_suites.run_suite(BATCH_SUITE, batch(10, 0), {"quarantine_ceiling": 0.1}, run_name="now", docs_dir=docs)
    assert docs_pages(docs, "now")


def test_a_dead_worker_fails_the_gate_and_nothing_is_published(tmp_path: Path, worker: dq_worker.SuiteWorker) -> None:
    log = FileTickLog(tmp_path / "log")
    produce_feed(log, TOPIC, generate(1_000, seed=5, day=dt.date(2026, 11, 25)), FileSchemaStore(), 2)
    iceberg = IcebergResource(catalog_uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh")
    ranges = plan_ranges(TOPIC, log.offsets(TOPIC), {}, 10_000)
    ingest_raw(log, iceberg.ensure_table(RAW_TICKS), ranges, FileSchemaStore(), batch_id="raw")
    worker.proc.kill()
    worker.proc.wait()
    tables = validation_tables(iceberg)
    config = QualityConfig(gate=GateConfig(docs_dir=tmp_path / "docs"))
    with pytest.raises(QualityGateError, match="worker"):
        publish_validated(
            tables, batch_id="b", max_per_partition=10_000, config=config, dead_letters=MemoryDeadLetters()
        )
    tables.ticks.refresh()
    main = tables.ticks.current_snapshot()
    assert main is None or main.summary is None or main.summary.additional_properties.get("k2.batch-id") != "b"
    assert iceberg.load("ticks").scan().to_arrow().num_rows == 0


def test_suites_submitted_together_come_back_to_their_callers_in_any_order(
    tmp_path: Path, worker: dq_worker.SuiteWorker
) -> None:
    docs = tmp_path / "docs"
    params = {"quarantine_ceiling": 0.1}
    first = dq_suites.submit_suite(BATCH_SUITE, batch(100, 50), params, run_name="a", docs_dir=docs, defer_docs=True)
    second = dq_suites.submit_suite(BATCH_SUITE, batch(100, 1), params, run_name="b", docs_dir=docs, defer_docs=True)
    assert second().success and not first().success
    dq_worker.wait_docs()
    assert docs_pages(docs, "a") and docs_pages(docs, "b")


def test_a_failing_suite_with_deferred_docs_neither_hangs_nor_shifts_later_answers(
    tmp_path: Path, worker: dq_worker.SuiteWorker
) -> None:
    docs = tmp_path / "docs"
    with pytest.raises(QualityGateError, match="no_such_suite"):
        dq_suites.run_suite("no_such_suite", batch(1, 0), run_name="x", docs_dir=docs, defer_docs=True)
    after = dq_suites.run_suite(BATCH_SUITE, batch(10, 0), {"quarantine_ceiling": 0.1}, run_name="y", docs_dir=docs)
    assert after.success and after.suite.startswith(BATCH_SUITE)
    dq_worker.wait_docs()
    assert worker._owed == []
