"""The audit log: one row per read (allowed, denied or failed) in the append-only Iceberg table audit_log.

A read is served only once its event is durable: `append` inserts it into a spool table in the catalog database
(one small transaction, shared by every process). `flush` moves spooled events into audit_log exactly once:

1. claim the pending rows with a fresh flush id (UPDATE ... WHERE flush_id IS NULL: concurrent flushers claim
   disjoint rows);
2. append them to audit_log in one snapshot whose summary records that flush id;
3. delete the claimed rows from the spool.

A flusher that died between 1 and 3 leaves claimed rows; the next flush deletes them if their flush id is in the
table's snapshot history (committed) and releases them otherwise (after CLAIM_STALE_S). One Iceberg snapshot per
flush, not per read, keeps the table's metadata small. Flushes run every `flush_interval_s` in a background
thread of a long-lived process, at the end of each CLI command, and before any read of audit_log, so the log a
compliance user reads matches the calls. (Not at interpreter exit: pyiceberg's thread pool is gone by then; the
spool keeps such events for the next flush.)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from k2_resources.auth import AuthStore
from k2_resources.errors import AuditWriteError
from k2_resources.iceberg import IcebergResource
from k2_resources.tables import AUDIT_LOG

FLUSH_PROPERTY = "k2.audit.flush-id"
CLAIM_STALE_S = 600.0
MAX_ATTEMPTS = 8
SPOOL_ATTEMPTS = 3
log = logging.getLogger(__name__)

_metadata = sa.MetaData()
SPOOL = sa.Table(
    "k2_audit_spool",
    _metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("flush_id", sa.String(32), nullable=True, index=True),
    sa.Column("claimed_at", sa.Float, nullable=True),
)


@dataclass
class AuditEvent:
    user_id: str
    role: str
    auth_method: str
    action: str
    resource: str
    outcome: str  # allowed | denied | error
    symbols: Sequence[str] = ()
    range_start: dt.datetime | None = None
    range_end: dt.datetime | None = None
    as_of: str | None = None
    row_count: int = 0
    detail: str | None = None
    client_address: str | None = None
    duration_ms: float = 0.0
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    event_ts: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["symbols"] = list(self.symbols)
        for key in ("range_start", "range_end", "event_ts"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        data["detail"] = (self.detail or "")[:4000] or None
        return json.dumps(data)


def events_to_arrow(raw: Sequence[str], schema: pa.Schema) -> pa.Table:
    rows = [json.loads(r) for r in raw]
    ts = pa.timestamp("us", tz="UTC")
    columns: dict[str, pa.Array] = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if pa.types.is_timestamp(f.type):
            parsed = [dt.datetime.fromisoformat(v) if v else None for v in values]
            columns[f.name] = pa.array(parsed, ts).cast(f.type)
        else:
            columns[f.name] = pa.array(values, f.type)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def committed_flush_ids(table: Table) -> set[str]:
    return {
        s.summary.additional_properties[FLUSH_PROPERTY]
        for s in table.snapshots()
        if s.summary is not None and FLUSH_PROPERTY in s.summary.additional_properties
    }


class AuditLog:
    def __init__(self, iceberg: IcebergResource, catalog_uri: str, flush_interval_s: float = 5.0) -> None:
        self.iceberg = iceberg
        self.engine = AuthStore(catalog_uri).engine
        self.flush_interval_s = flush_interval_s
        self._table: Table | None = None
        self._ready = False
        self._flush_lock = threading.Lock()
        self._setup_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.commits = 0

    def _ensure(self) -> None:
        with self._setup_lock:
            if not self._ready:
                _metadata.create_all(self.engine)
                self._ready = True

    def table(self) -> Table:
        with self._setup_lock:
            if self._table is None:
                self._table = self.iceberg.ensure_table(AUDIT_LOG)
            return self._table

    def append(self, event: AuditEvent) -> None:
        """Make `event` durable (raises AuditWriteError if it could not be: the caller must not serve the read)."""
        for attempt in range(1, SPOOL_ATTEMPTS + 1):
            try:
                self._ensure()
                with self.engine.begin() as con:
                    con.execute(SPOOL.insert().values(event=event.to_json()))
                break
            except sa.exc.OperationalError as exc:  # e.g. SQLite busy past its timeout: try again, then refuse
                if attempt == SPOOL_ATTEMPTS:
                    raise AuditWriteError(
                        f"the audit event could not be written, so the read was not served: {exc}"
                    ) from exc
                time.sleep(0.1 * attempt)
            except sa.exc.SQLAlchemyError as exc:
                raise AuditWriteError(
                    f"the audit event could not be written, so the read was not served: {exc}"
                ) from exc
        self._start_flusher()

    def _start_flusher(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="k2-audit-flush", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not sys.is_finalizing():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if not self.flush_quietly():
                return

    def flush_quietly(self) -> bool:
        """Flush, logging instead of raising; False once the interpreter is shutting down (stop trying)."""
        try:
            self.flush()
        except (AuditWriteError, CommitFailedException, sa.exc.SQLAlchemyError, OSError) as exc:
            log.warning("audit flush failed; events stay in the spool and move with the next flush: %s", exc)
        except RuntimeError as exc:  # pyiceberg's thread pool is gone: the process is exiting, the spool keeps them
            log.debug("audit flush skipped at shutdown: %s", exc)
            return False
        return True

    def pending(self) -> int:
        self._ensure()
        with self.engine.connect() as con:
            return int(con.execute(sa.select(sa.func.count()).select_from(SPOOL)).scalar_one())

    def flush(self) -> int:
        """Move every spooled event into audit_log; returns how many this call committed."""
        self._ensure()
        with self._flush_lock:
            table = self.table()
            table.refresh()
            self._recover(table)
            flush_id = uuid.uuid4().hex
            with self.engine.begin() as con:
                con.execute(
                    SPOOL.update().where(SPOOL.c.flush_id.is_(None)).values(flush_id=flush_id, claimed_at=time.time())
                )
                raw = [r.event for r in con.execute(sa.select(SPOOL.c.event).where(SPOOL.c.flush_id == flush_id))]
            if not raw:
                return 0
            rows = events_to_arrow(raw, table.schema().as_arrow())
            self._commit(table, rows, flush_id)
            with self.engine.begin() as con:
                con.execute(SPOOL.delete().where(SPOOL.c.flush_id == flush_id))
            return rows.num_rows

    def _recover(self, table: Table) -> None:
        """Finish flushes that died after claiming: delete what was committed, release what was not."""
        with self.engine.begin() as con:
            claims = con.execute(
                sa.select(SPOOL.c.flush_id, sa.func.min(SPOOL.c.claimed_at))
                .where(SPOOL.c.flush_id.is_not(None))
                .group_by(SPOOL.c.flush_id)
            ).all()
            if not claims:
                return
            committed = committed_flush_ids(table)
            for flush_id, claimed_at in claims:
                if flush_id in committed:
                    con.execute(SPOOL.delete().where(SPOOL.c.flush_id == flush_id))
                elif claimed_at is not None and time.time() - claimed_at > CLAIM_STALE_S:
                    con.execute(
                        SPOOL.update().where(SPOOL.c.flush_id == flush_id).values(flush_id=None, claimed_at=None)
                    )

    def _commit(self, table: Table, rows: pa.Table, flush_id: str) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                table.append(rows, snapshot_properties={FLUSH_PROPERTY: flush_id})
                self.commits += 1
                return
            except CommitFailedException:
                if attempt == MAX_ATTEMPTS:
                    raise
                time.sleep(min(0.02 * 2**attempt, 1.0))
                table.refresh()
