"""Compaction racing continuous ingest on the real broker: no tick lost or doubled, watermark intact, and every
query answers the same before and after compaction."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

import dagster as dg
import polars as pl
import pytest

from k2.runner import run_until_caught_up
from k2_assets.maintenance.assets import compaction, maintained_tables
from k2_assets.maintenance.compaction import MAINTENANCE_PROPERTY, CompactionPolicy, CompactionResult, compact_table
from k2_assets.maintenance.expiry import main_ancestry
from k2_assets.maintenance.files import live_files
from k2_resources.env import Settings
from k2_resources.iceberg import WATERMARK_PROPERTY, IcebergResource
from tests.integration.helpers import produce, query, raw_offsets, run

pytestmark = pytest.mark.integration

INGEST_TABLES = ("raw_ticks", "ticks", "quarantine")
TICKS = 12_000  # 2,000 per Kafka partition, landed 500 at a time: 4 micro-batches, many small files
RACED_BATCHES = 3
QUERIES = {
    "raw": "SELECT kafka_topic, kafka_partition, kafka_offset, symbol, sequence FROM raw_ticks ORDER BY ALL",
    "ticks": "SELECT * EXCLUDE (conditions), len(conditions) AS n_conditions FROM ticks ORDER BY ALL",
    "per_symbol": "SELECT symbol, count(*) n, sum(volume) v, min(price) lo, max(price) hi FROM ticks GROUP BY 1 ORDER BY 1",
    "point": "SELECT count(*) n, sum(volume) v FROM ticks WHERE symbol = 'BHP' AND exchange_ts < "
    "(SELECT min(exchange_ts) + INTERVAL 1 HOUR FROM ticks)",
    "bars": "SELECT * EXCLUDE (computed_at, source_snapshot_id) FROM bars_1m ORDER BY ALL",
}


def _answers(settings: Settings) -> dict[str, pl.DataFrame]:
    return {name: query(settings, sql) for name, sql in QUERIES.items()}


def _watermarks_along_main(iceberg: IcebergResource, name: str) -> list[tuple[bool, str]]:
    """(is a compaction snapshot, watermark property) for every main snapshot, oldest first."""
    table = iceberg.load(name)
    out = []
    for snap in reversed(main_ancestry(table)):
        props = snap.summary.additional_properties if snap.summary else {}
        out.append((props.get(MAINTENANCE_PROPERTY) == "compaction", props.get(WATERMARK_PROPERTY, "")))
    return out


def test_compaction_racing_continuous_ingest_loses_and_duplicates_nothing(
    lakehouse: Settings, dagster_instance: dg.DagsterInstance
) -> None:
    settings = dataclasses.replace(lakehouse, max_batch_per_partition=500)  # many micro-batches, many small files
    iceberg = IcebergResource.from_settings(settings)
    produced = produce(settings, TICKS)
    policy = CompactionPolicy(max_files_per_partition=1, min_avg_file_bytes=0, poll_s=0.2)  # any partition of 2+ files
    stop = threading.Event()
    results: list[CompactionResult] = []
    errors: list[BaseException] = []

    def compact_continuously() -> None:
        while not stop.is_set():
            try:
                # Tables appear with the first batch; until then there is nothing to compact.
                results.extend(compact_table(t, policy) for t in maintained_tables(iceberg, INGEST_TABLES))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)
                return
            time.sleep(0.1)

    compactor = threading.Thread(target=compact_continuously, daemon=True)
    compactor.start()
    try:
        # Raises if any ingest run fails.
        raced = run_until_caught_up(settings, max_batches=RACED_BATCHES, instance=dagster_instance)
    finally:
        stop.set()
        compactor.join(timeout=120)
    assert not errors, errors
    assert raced.batches == RACED_BATCHES
    assert any(r.partitions_compacted for r in results), "compaction never committed during ingest"
    print(  # shown with -s: how hard the two raced
        f"compaction commits during ingest: {sum(1 for r in results if r.partitions_compacted)}, "
        f"retries: {sum(max(0, r.commit_attempts - 1) for r in results)}, waits for audit: "
        f"{sum(r.waits for r in results)}, partitions given up: {sum(len(r.given_up) for r in results)}"
    )
    rest = run(settings, dagster_instance)  # the rest of the backlog, left in small files for the last compaction
    assert rest.ticks_planned > 0

    landed = raw_offsets(settings)
    assert landed.height == len(produced.positions) == TICKS
    assert set(landed.iter_rows()) == set(produced.positions)
    assert query(settings, "SELECT count(*) n, count(DISTINCT (symbol, sequence)) d FROM ticks").row(0) == (
        TICKS,
        TICKS,
    )

    interleaved = False
    for name in INGEST_TABLES:
        history = _watermarks_along_main(iceberg, name)
        assert all(mark for _, mark in history), f"{name}: a snapshot without the watermark"
        for (_, previous), (is_compaction, mark) in itertools.pairwise(history):
            if is_compaction:
                assert mark == previous, f"{name}: compaction changed the watermark"
        flags = [c for c, _ in history]
        interleaved |= any(c and not later for c, later in itertools.pairwise(flags))
    assert interleaved, "no ingest commit landed on top of a compaction snapshot"

    before = _answers(settings)
    files_before = {n: len(live_files(iceberg.load(n)).data_files()) for n in INGEST_TABLES}
    result = dg.materialize(
        [compaction],
        resources={"iceberg": iceberg},
        instance=dagster_instance,
        run_config={"ops": {"compaction": {"config": {"max_files_per_partition": 1, "min_avg_file_mb": 0.0}}}},
    )
    assert result.success
    files_after = {n: len(live_files(iceberg.load(n)).data_files()) for n in INGEST_TABLES}
    assert files_after["raw_ticks"] < files_before["raw_ticks"] and files_after["ticks"] < files_before["ticks"]
    after = _answers(settings)
    for name, frame in before.items():
        assert frame.height > 0 and frame.equals(after[name]), name

    run(settings, dagster_instance)  # a re-run after compaction finds everything committed
    assert raw_offsets(settings).height == TICKS
