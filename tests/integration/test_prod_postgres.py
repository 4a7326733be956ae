"""K2_ENV=prod on a real PostgreSQL server: the Iceberg SQL catalog and Dagster's storage."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from k2_resources.broker import LocalKafkaBroker
from k2_resources.iceberg import IcebergResource, OffsetRange, commit_offset_ranges, read_watermarks
from k2_resources.postgres import LocalPostgres, dagster_instance
from k2_resources.tables import RAW_TICKS
from tests.integration.helpers import produce, query, run
from tests.integration.prod_helpers import prod_settings

pytestmark = pytest.mark.integration

TOPIC = "market.ticks.race"
COMMITS_PER_WRITER = 4
RANGE = 250


def _rows(schema: pa.Schema, ranges: list[OffsetRange]) -> pa.Table:
    """raw_ticks rows carrying only their Kafka position (the rest null): enough to prove what was committed."""
    n = sum(r.size for r in ranges)
    columns: dict[str, pa.Array] = {f.name: pa.nulls(n, f.type) for f in schema}
    columns["kafka_topic"] = pa.array([r.topic for r in ranges for _ in range(r.size)], pa.string())
    columns["kafka_partition"] = pa.array([r.partition for r in ranges for _ in range(r.size)], pa.int32())
    columns["kafka_offset"] = pa.array([o for r in ranges for o in range(r.start, r.stop)], pa.int64())
    columns["kafka_ts"] = pa.array([1_764_000_000_000_000] * n, pa.timestamp("us", tz="UTC"))
    return pa.table(columns, schema=schema)


def _writer(catalog_uri: str, warehouse: str, partition: int, barrier: Any, results: Any) -> None:
    """Commit COMMITS_PER_WRITER consecutive ranges of one partition; the first commit waits for the other writer so
    both build on the same snapshot and one of them must lose the race."""
    iceberg = IcebergResource(catalog_uri=catalog_uri, warehouse=warehouse)
    table = iceberg.load(RAW_TICKS.name)
    schema = table.schema().as_arrow()
    attempts = []
    for i in range(COMMITS_PER_WRITER):
        waits = [barrier] if i == 0 else []

        def before_commit(waits: list[Any] = waits) -> None:
            while waits:
                waits.pop().wait(timeout=60)

        outcome = commit_offset_ranges(
            table,
            [OffsetRange(TOPIC, partition, i * RANGE, (i + 1) * RANGE)],
            lambda todo: _rows(schema, todo),
            batch_id=f"writer-{partition}-{i}",
            before_commit=before_commit,
        )
        attempts.append(outcome.attempts)
    results.put((partition, attempts))


def test_two_processes_committing_disjoint_partitions_lose_no_commit(tmp_path: Path, postgres: LocalPostgres) -> None:
    settings = prod_settings(tmp_path, postgres)
    iceberg = IcebergResource.from_settings(settings)
    iceberg.ensure_table(RAW_TICKS)

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(settings.catalog_uri, settings.warehouse, p, barrier, results))
        for p in (0, 1)
    ]
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0

    # The race really happened: the loser of the first commit had to reload and try again.
    assert max(outcomes[0][0], outcomes[1][0]) >= 2, outcomes
    table = iceberg.load(RAW_TICKS.name)
    assert read_watermarks(table) == {TOPIC: {0: COMMITS_PER_WRITER * RANGE, 1: COMMITS_PER_WRITER * RANGE}}
    landed = table.scan(selected_fields=("kafka_partition", "kafka_offset")).to_arrow()
    positions = list(zip(landed["kafka_partition"].to_pylist(), landed["kafka_offset"].to_pylist(), strict=True))
    expected = {(p, o) for p in (0, 1) for o in range(COMMITS_PER_WRITER * RANGE)}
    assert len(positions) == len(expected) and set(positions) == expected
    # Every commit is its own snapshot in the catalog's history: none was overwritten by the other writer.
    assert len(table.snapshots()) == 2 * COMMITS_PER_WRITER


def test_pipeline_runs_on_postgres_catalog_and_dagster_storage(
    tmp_path: Path, postgres: LocalPostgres, kafka_broker: LocalKafkaBroker
) -> None:
    settings = prod_settings(tmp_path, postgres, kafka_broker.bootstrap)
    assert settings.catalog_uri.startswith("postgresql") and settings.dagster_pg_url
    produced = produce(settings, 20_000)
    instance = dagster_instance(tmp_path / "dagster", settings.dagster_pg_url)
    summary = run(settings, instance)

    assert query(settings, "SELECT count(*) AS n FROM raw_ticks")["n"][0] == produced.records
    assert query(settings, "SELECT count(*) AS n FROM ticks")["n"][0] == produced.records
    # The catalog rows are in PostgreSQL...
    engine = sa.create_engine(settings.catalog_uri, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(sa.text("SELECT table_name FROM iceberg_tables"))}
    assert {"raw_ticks", "ticks", "quarantine", "bars_1m"} <= tables
    # ...and so are Dagster's runs, event logs and schedule storage: a fresh instance on the same database sees them.
    fresh = dagster_instance(tmp_path / "dagster-reader", settings.dagster_pg_url)
    runs = fresh.get_runs()
    assert {r.run_id for r in runs} == set(summary.run_ids)
    assert all(r.is_success for r in runs)
    materialized = fresh.get_latest_materialization_event(dg.AssetKey("raw_ticks"))
    assert materialized is not None
    for storage in (fresh.run_storage, fresh.event_log_storage, fresh.schedule_storage):
        assert type(storage).__module__.startswith("dagster_postgres"), type(storage)
    engine = sa.create_engine(settings.dagster_pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        dagster_tables = {r[0] for r in conn.execute(sa.text("SELECT tablename FROM pg_tables"))}
    assert {"runs", "event_logs", "jobs", "job_ticks"} <= dagster_tables
