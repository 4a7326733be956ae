"""The audit spool: events are durable at once and reach the audit_log table exactly once, even across a flusher
that died half-way."""

from __future__ import annotations

import time

import sqlalchemy as sa

from k2.query.audit import SPOOL, AuditEvent, AuditLog
from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource


def audit_log(settings: Settings, interval: float = 60.0) -> AuditLog:
    return AuditLog(IcebergResource.from_settings(settings), settings.catalog_uri, flush_interval_s=interval)


def event(user: str) -> AuditEvent:
    return AuditEvent(user, "trader", "jwt", "ticks", "market_data.ticks", "allowed", symbols=("BHP",))


def rows(log: AuditLog) -> list[str]:
    table = log.table()
    table.refresh()
    return sorted(table.scan(selected_fields=("user_id",)).to_arrow()["user_id"].to_pylist())


def test_a_long_lived_process_moves_spooled_events_in_the_background(offline_lakehouse: Settings) -> None:
    log = audit_log(offline_lakehouse, interval=0.2)
    for user in ("a", "b", "c"):
        log.append(event(user))
    deadline = time.monotonic() + 20
    while log.pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.pending() == 0
    assert rows(log) == ["a", "b", "c"]
    assert log.commits <= 3


def test_a_flush_that_died_after_committing_is_finished_not_repeated(offline_lakehouse: Settings) -> None:
    log = audit_log(offline_lakehouse)
    log.append(event("a"))
    log.append(event("b"))
    # Simulate a flusher that claimed and committed the rows, then died before deleting them from the spool.
    real_delete = SPOOL.delete
    SPOOL.delete = lambda: SPOOL.select().where(sa.false())  # type: ignore[method-assign, assignment, return-value]
    try:
        assert log.flush() == 2
    finally:
        SPOOL.delete = real_delete  # type: ignore[method-assign]
    assert log.pending() == 2  # still claimed in the spool
    log.append(event("c"))
    assert log.flush() == 1  # recovery deletes the committed claim; only c is new
    assert log.pending() == 0
    assert rows(log) == ["a", "b", "c"]


def test_a_claim_that_never_committed_is_released_and_moved_later(offline_lakehouse: Settings) -> None:
    log = audit_log(offline_lakehouse)
    log.append(event("a"))
    with log.engine.begin() as con:  # a flusher claimed it long ago and died before committing
        con.execute(SPOOL.update().values(flush_id="dead-flusher", claimed_at=time.time() - 3600))
    assert log.flush() == 1
    assert rows(log) == ["a"]
