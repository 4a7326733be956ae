"""A catalog lock held past its timeout: the commit fails with a typed error, nothing lands, the next run does."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from k2_resources.broker import LocalKafkaBroker
from k2_resources.errors import CatalogUnavailableError
from tests.chaos.harness import BATCH, ChaosMatrix, make_lake

pytestmark = pytest.mark.chaos

BUSY_TIMEOUT_S = 1  # SQLite's busy timeout for the catalog's connections (K2_CATALOG_URI ...?timeout=)


def test_a_commit_blocked_by_a_held_catalog_lock_fails_cleanly_and_the_next_run_completes(
    tmp_path: Path, kafka_broker: LocalKafkaBroker, rep: int, chaos_matrix: ChaosMatrix
) -> None:
    db = tmp_path / "catalog.db"
    lake = make_lake(tmp_path, kafka_broker.bootstrap, K2_CATALOG_URI=f"sqlite:///{db}?timeout={BUSY_TIMEOUT_S}")
    lake.produce()
    lake.ingest()
    snapshot = lake.snapshot_id()
    lake.produce()
    holder = sqlite3.connect(db, isolation_level=None)

    def lock_catalog() -> None:  # another process takes the catalog between our write and our commit
        holder.execute("BEGIN EXCLUSIVE")

    started = time.monotonic()
    with pytest.raises(CatalogUnavailableError, match="locked"):
        lake.ingest(before_commit=lock_catalog)
    assert time.monotonic() - started < 60, "the commit must give up at the lock timeout, not hang"
    assert holder.in_transaction, "the lock was meant to be held until the commit gave up"
    holder.execute("ROLLBACK")
    holder.close()
    assert lake.snapshot_id() == snapshot

    assert lake.ingest().outcome.rows_appended == BATCH
    verdict = lake.verdict()
    chaos_matrix.record("catalog lock held past its timeout", rep, verdict)
    assert verdict.exactly_once, verdict
