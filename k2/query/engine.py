"""DuckDB execution with limits and caches.

- A pool of at most `max_concurrent` DuckDB databases (one per running query, extensions loaded once per database);
  callers beyond that wait in a queue for up to `queue_timeout_s`.
- Each database has `memory_limit` and no spill directory, so a query over the limit fails instead of swapping;
  a watchdog interrupts a query after `timeout_s`.
- Table metadata is cached (LRU, 15 min TTL) by metadata location: the catalog pointer is checked on every query,
  so a new snapshot is seen at once while the metadata JSON is parsed once per version.
- Aggregation results are cached (LRU, 5 min TTL) under the snapshot ids they read: a new snapshot of any table a
  query reads is a different key, and the entries of the old snapshot are dropped.
- Reads that say which symbols and time range they need (`scan=`: the typed reads ticks, latest, bars, as-of join)
  read exactly the data files of the snapshot whose column bounds can match, with `read_parquet`, instead of
  `iceberg_scan` decoding every manifest entry on every query (scanplan.py; the file list is cached per manifest
  and snapshot, both immutable). A snapshot with delete files, non-Parquet files, or a table whose schema changed
  falls back to `iceberg_scan`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import sqlalchemy as sa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from k2.query.cache import TTLCache
from k2.query.scanplan import ScanFilter, ScanPlanner
from k2.query.watchdog import Watchdog
from k2_resources.duckdb import configure_s3, load_extensions
from k2_resources.env import Settings
from k2_resources.errors import (
    QueryError,
    QueryMemoryError,
    QueryQueueTimeoutError,
    QueryTimeoutError,
    SnapshotNotFoundError,
    TableNotFoundError,
)
from k2_resources.iceberg import IcebergResource
from k2_resources.metrics import QueryMetrics, figure_store

METADATA_TTL_S = 15 * 60
RESULT_TTL_S = 5 * 60
MAX_CACHED_RESULT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class QueryLimits:
    max_concurrent: int = 10
    queue_timeout_s: float = 300.0
    timeout_s: float = 300.0
    memory_limit: str = "2GB"
    threads: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryLimits:
        s = settings.serving
        return cls(s.max_concurrent, s.queue_timeout_s, s.timeout_s, s.memory_limit, s.threads)


@dataclass(frozen=True)
class TableMeta:
    name: str
    metadata_location: str
    table: Table

    @property
    def snapshot_id(self) -> int | None:
        snap = self.table.current_snapshot()
        return snap.snapshot_id if snap is not None else None


@dataclass(frozen=True)
class Execution:
    table: pa.Table
    cached: bool
    queued_s: float
    run_s: float
    snapshots: dict[str, int | None]
    sources: dict[str, str] = field(default_factory=dict)  # table -> "files:N" (read_parquet) | "iceberg_scan" | ...


class _Slot:
    def __init__(self, limits: QueryLimits, namespace: str, s3_properties: dict[str, str]) -> None:
        config: dict[str, Any] = {"memory_limit": limits.memory_limit}
        if limits.threads:
            config["threads"] = limits.threads
        self.con = duckdb.connect(config=config)
        load_extensions(self.con)
        configure_s3(self.con, s3_properties)  # an s3:// warehouse (prod): httpfs + the catalog's credentials
        # No spill directory: the memory limit is a hard limit (the review's "prevent OOM"), not a hint.
        self.con.execute("SET temp_directory = ''")
        self.con.execute("SET enable_progress_bar = false")
        self.con.execute("SET TimeZone = 'UTC'")
        # Parquet footers of the (immutable) data files stay cached between queries of the file-list fast path.
        self.con.execute("SET parquet_metadata_cache = true")
        self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {namespace}")
        self.views: dict[str, str] = {}


_watchdog = Watchdog()


class QueryEngine:
    def __init__(
        self, iceberg: IcebergResource, limits: QueryLimits | None = None, metrics: QueryMetrics | None = None
    ) -> None:
        self.metrics = metrics or QueryMetrics(None)
        self.iceberg = iceberg
        self.namespace = iceberg.namespace
        self.limits = limits or QueryLimits()
        self._catalog: Catalog | None = None
        self._catalog_lock = threading.Lock()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrent)
        self._idle: list[_Slot] = []
        self._waiting = 0
        self._running = 0
        self.metadata_cache: TTLCache[TableMeta] = TTLCache(256, METADATA_TTL_S)
        self.result_cache: TTLCache[pa.Table] = TTLCache(256, RESULT_TTL_S)
        self._known_snapshots: dict[str, int | None] = {}
        self.planner = ScanPlanner()

    # ---- metadata -------------------------------------------------------------------------------------------

    def catalog(self) -> Catalog:
        with self._catalog_lock:  # opening a SQL catalog creates its tables: once, not once per thread
            if self._catalog is None:
                self._catalog = self.iceberg.catalog()
            return self._catalog

    def _pointers(self) -> dict[str, str]:
        """table name -> current metadata location, in one catalog round trip where the catalog allows it."""
        catalog = self.catalog()
        if isinstance(catalog, SqlCatalog):
            query = sa.text(
                "SELECT table_name, metadata_location FROM iceberg_tables "
                "WHERE catalog_name = :catalog AND table_namespace = :ns"
            )
            with catalog.engine.connect() as con:
                rows = con.execute(query, {"catalog": catalog.name, "ns": self.namespace}).all()
            return {str(name): str(location) for name, location in rows if location}
        return {ident[-1]: catalog.load_table(ident).metadata_location for ident in catalog.list_tables(self.namespace)}

    def tables(self) -> dict[str, TableMeta]:
        """Every table of the namespace at its current metadata version."""
        out: dict[str, TableMeta] = {}
        for name, location in self._pointers().items():
            meta = self.metadata_cache.get(location)
            self.metrics.cache("metadata", meta is not None)
            if meta is None:
                table = self.catalog().load_table(f"{self.namespace}.{name}")
                meta = TableMeta(name, table.metadata_location, table)
                self.metadata_cache.put(table.metadata_location, meta)
            out[name] = meta
        self._note_snapshots(out)
        return out

    def table(self, name: str, tables: dict[str, TableMeta] | None = None) -> TableMeta:
        meta = (tables if tables is not None else self.tables()).get(name)
        if meta is None:
            raise TableNotFoundError(
                f"table {self.namespace}.{name} does not exist yet: build it first (`k2 run`, or materialise it in "
                "Dagster)"
            )
        return meta

    def _note_snapshots(self, tables: dict[str, TableMeta]) -> None:
        """Drop cached results read from a snapshot that has just been superseded (a new snapshot invalidates)."""
        current = {name: meta.snapshot_id for name, meta in tables.items()}
        with self._lock:
            old = dict(self._known_snapshots)
            self._known_snapshots.update(current)
        stale = {(n, old[n]) for n in current if n in old and old[n] != current[n]}
        if stale:
            self.result_cache.discard_where(
                lambda key: isinstance(key, tuple) and isinstance(key[-1], frozenset) and bool(key[-1] & stale)
            )

    # ---- execution ------------------------------------------------------------------------------------------

    def _acquire(self) -> tuple[_Slot, float]:
        started = time.monotonic()
        with self._lock:
            self._waiting += 1
            self.metrics.queue_depth(self._waiting)
        try:
            ok = self._slots.acquire(timeout=self.limits.queue_timeout_s)
        finally:
            with self._lock:
                self._waiting -= 1
                self.metrics.queue_depth(self._waiting)
        queued = time.monotonic() - started
        self.metrics.queued(queued)
        if not ok:
            self.metrics.rejected("queue_timeout")
            raise QueryQueueTimeoutError(
                f"all {self.limits.max_concurrent} query slots stayed busy for {queued:.1f}s: retry later or raise "
                "K2_QUERY_MAX_CONCURRENT / K2_QUERY_QUEUE_TIMEOUT_S"
            )
        with self._lock:
            slot = self._idle.pop() if self._idle else None
            self._running += 1
            self.metrics.in_flight(self._running)
        if slot is None:
            try:
                slot = _Slot(self.limits, self.namespace, dict(self.iceberg.catalog_properties))
            except BaseException:
                self._release(None)
                raise
        return slot, queued

    def _release(self, slot: _Slot | None) -> None:
        with self._lock:
            if slot is not None:
                self._idle.append(slot)
            self._running -= 1
            self.metrics.in_flight(self._running)
        self._slots.release()

    def _install_views(
        self,
        slot: _Slot,
        tables: dict[str, TableMeta],
        snapshots: dict[str, int | None],
        scan: dict[str, ScanFilter] | None = None,
        qualified: Collection[str] | None = None,
    ) -> dict[str, str]:
        """Point each view at its table's snapshot; returns how each table in `scan` is read. `qualified` names the
        tables the SQL reads as <namespace>.<table> (None: unknown, both views are kept current)."""
        how: dict[str, str] = {}
        for name, meta in tables.items():
            pinned = snapshots.get(name)
            if pinned is not None and meta.table.snapshot_by_id(pinned) is None:
                raise SnapshotNotFoundError(
                    f"{self.namespace}.{name} has no snapshot {pinned} (expired, or from another table)"
                )
            snapshot_id = pinned if pinned is not None else meta.snapshot_id
            files = None
            if scan and name in scan and snapshot_id is not None:
                files = self.planner.plan(meta.table, snapshot_id, scan[name])
            if files is not None:
                how[name] = f"files:{len(files)}"
                source = self._file_source(slot, name, meta, files)
            elif snapshot_id is None:
                source = f"SELECT * FROM _empty_{name}"
                if slot.views.get(name) != source:
                    slot.con.register(f"_empty_{name}", meta.table.schema().as_arrow().empty_table())
            else:
                version = f", snapshot_from_id => {int(pinned)}" if pinned is not None else ""
                source = f"SELECT * FROM iceberg_scan('{meta.metadata_location}'{version})"
            if scan and name in scan and name not in how:
                how[name] = "iceberg_scan" if snapshot_id is not None else "empty"
            qualified_view = f"{self.namespace}.{name}"
            views = [name]
            if files is None or qualified is None or name in qualified:
                views.append(qualified_view)
            elif slot.views.pop(qualified_view, None) is not None:
                # A per-query file list goes only to the view names the SQL uses (one view bind, not two); the
                # other is dropped, never left pointing at another query's files.
                slot.con.execute(f"DROP VIEW IF EXISTS {qualified_view}")
            for view in views:
                if slot.views.get(view) != source:
                    slot.con.execute(f"CREATE OR REPLACE VIEW {view} AS {source}")
                    slot.views[view] = source
        return how

    @staticmethod
    def _file_source(slot: _Slot, name: str, meta: TableMeta, files: list[str]) -> str:
        """SELECT of exactly `files` with the table's columns in schema order (no hive columns from the paths)."""
        columns = ", ".join('"' + f.name.replace('"', '""') + '"' for f in meta.table.schema().fields)
        if not files:
            empty = f"_empty_{name}"
            slot.con.register(empty, meta.table.schema().as_arrow().empty_table())
            return f"SELECT {columns} FROM {empty}"
        listed = ", ".join("'" + _local(p).replace("'", "''") + "'" for p in files)
        return (
            f"SELECT {columns} FROM read_parquet([{listed}], hive_partitioning = false, union_by_name = false, "
            "binary_as_string = false)"
        )

    def effective_snapshots(
        self, tables: dict[str, TableMeta], names: Sequence[str], pinned: dict[str, int | None]
    ) -> dict[str, int | None]:
        return {n: (pinned.get(n) if pinned.get(n) is not None else tables[n].snapshot_id) for n in names}

    def execute(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        reads: Sequence[str],
        pinned: dict[str, int | None] | None = None,
        cache: bool = False,
        tables: dict[str, TableMeta] | None = None,
        extra_tables: dict[str, pa.Table] | None = None,
        scan: dict[str, ScanFilter] | None = None,
        qualified: Collection[str] | None = None,
    ) -> Execution:
        """Run one SELECT. `reads` names the tables it reads (they must exist); `pinned` maps tables to snapshot ids
        (time travel); `cache` allows the result cache; `extra_tables` are registered for this query only.

        `scan` maps a table to the rows the SQL needs of it: every row of it the SQL can use must match that filter
        (symbol and time range), so the view may hold only the data files whose bounds match it. `qualified` names
        the tables the SQL reads as <namespace>.<table> (None: not known)."""
        pinned = pinned or {}
        tables = tables if tables is not None else self.tables()
        for name in reads:
            self.table(name, tables)
        snapshots = self.effective_snapshots(tables, reads, pinned)
        key: Hashable | None = None
        if cache and not extra_tables:
            key = ((sql, tuple(params or ()), tuple(sorted((scan or {}).items()))), frozenset(snapshots.items()))
            hit = self.result_cache.get(key)
            self.metrics.cache("result", hit is not None)
            if hit is not None:
                return Execution(hit, True, 0.0, 0.0, snapshots)
        slot, queued = self._acquire()
        started = time.monotonic()
        interrupted = threading.Event()

        def watchdog() -> None:
            interrupted.set()
            slot.con.interrupt()

        try:
            sources = self._install_views(slot, tables, pinned, scan, qualified)
            for name, extra in (extra_tables or {}).items():
                slot.con.register(name, extra)
            timer = _watchdog.arm(self.limits.timeout_s, watchdog)
            try:
                result = slot.con.execute(sql, list(params or [])).to_arrow_table()
            finally:
                _watchdog.disarm(timer)
                for name in extra_tables or {}:
                    slot.con.unregister(name)
        except duckdb.InterruptException as exc:
            if interrupted.is_set():
                self.metrics.rejected("timeout")
                raise QueryTimeoutError(
                    f"the query ran longer than {self.limits.timeout_s:g}s and was interrupted: narrow it (fewer "
                    "symbols, a shorter range) or raise K2_QUERY_TIMEOUT_S"
                ) from exc
            raise QueryError(f"the query was interrupted: {exc}") from exc
        except duckdb.OutOfMemoryException as exc:
            self.metrics.rejected("memory")
            raise QueryMemoryError(
                f"the query needed more than {self.limits.memory_limit} of memory: narrow it or raise "
                f"K2_QUERY_MEMORY_LIMIT ({exc})"
            ) from exc
        except duckdb.Error as exc:
            raise QueryError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._release(slot)
        run_s = time.monotonic() - started
        if key is not None and result.nbytes <= MAX_CACHED_RESULT_BYTES:
            self.result_cache.put(key, result)
        return Execution(result, False, queued, run_s, snapshots, sources)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for slot in idle:
            slot.con.close()


def _local(location: str) -> str:
    """A path DuckDB opens: file:// URIs as plain paths, object-store URIs unchanged."""
    if location.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        return unquote(urlsplit(location).path)
    return location


_shared: dict[tuple[object, ...], QueryEngine] = {}
_shared_lock = threading.Lock()


def shared_engine(settings: Settings, limits: QueryLimits | None = None) -> QueryEngine:
    """One engine (pool, limits, caches) per catalog and limits in this process."""
    limits = limits or QueryLimits.from_settings(settings)
    key = (settings.catalog_uri, settings.warehouse, settings.namespace, limits)
    with _shared_lock:
        engine = _shared.get(key)
        if engine is None:
            metrics = QueryMetrics(figure_store(settings.serving.metrics_dir)) if settings.serving.metrics_dir else None
            engine = _shared[key] = QueryEngine(IcebergResource.from_settings(settings), limits, metrics)
        return engine
