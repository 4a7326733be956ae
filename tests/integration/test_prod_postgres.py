"""K2_ENV=prod on a real PostgreSQL server: concurrent commits to the Iceberg SQL catalog. (Dagster's PostgreSQL
storage and the full pipeline on it are tested in test_prod_s3.py.)"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.postgres import LocalPostgres
from k2_resources.tables import RAW_TICKS
from tests.integration.prod_helpers import prod_settings
from tests.integration.race_writer import COMMITS_PER_WRITER, RANGE, TOPIC, writer

pytestmark = pytest.mark.integration


def test_two_processes_committing_disjoint_partitions_lose_no_commit(tmp_path: Path, postgres: LocalPostgres) -> None:
    settings = prod_settings(tmp_path, postgres)
    iceberg = IcebergResource.from_settings(settings)
    iceberg.ensure_table(RAW_TICKS)

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=writer, args=(settings.catalog_uri, settings.warehouse, p, barrier, results)) for p in (0, 1)
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
