"""The Python query API: authenticated, authorised, audited, limited reads over K2's tables.

from k2.query import Client
client = Client(token=jwt)                      # or api_key=..., or nothing in the local profile
client.ticks(["BHP", "CBA"], "2026-11-24T00:00Z", "2026-11-24T01:00Z").pl()
client.bars("1m", ["BHP"], start, end, as_of="backtest-2026-11").pandas()
client.latest(["BHP"]).freshness                # route, watermark, source of each part
client.asof_join(trades, "bars_1m")
client.sql("SELECT symbol, count(*) FROM ticks GROUP BY 1")
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
from pyiceberg.types import TimestampType, TimestamptzType

from k2.query import reads
from k2.query.audit import AuditEvent, AuditLog
from k2.query.engine import Execution, QueryEngine, QueryLimits, TableMeta, shared_engine
from k2.query.router import Freshness, KafkaOffsetProbe, Part, Tail, TailReader
from k2.query.scanplan import ScanFilter
from k2.query.sqlcheck import TableBounds, analyse, where_bounds
from k2.query.timetravel import AsOf, Pin, resolve
from k2_resources.auth import Authorizer, AuthStore, authenticate, resource_for_table
from k2_resources.env import Settings, load_settings
from k2_resources.errors import AuthenticationError, K2Error, PermissionDeniedError, TailTooLargeError
from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.kafka import KafkaResource, TickLog
from k2_resources.schemas import FileSchemaStore

TABLE_FUNCTIONS_RESOURCE = "system.table_functions"
ROUTES = ("auto", "iceberg", "kafka")
Symbols = str | Iterable[str] | None
Moment = dt.datetime | dt.date | str | None


@dataclass(frozen=True)
class QueryResult:
    arrow: pa.Table
    freshness: Freshness
    elapsed_s: float

    @property
    def num_rows(self) -> int:
        return self.arrow.num_rows

    def __len__(self) -> int:
        return self.arrow.num_rows

    def pl(self) -> pl.DataFrame:
        frame = pl.from_arrow(self.arrow)
        assert isinstance(frame, pl.DataFrame)
        return frame

    def pandas(self) -> pd.DataFrame:
        return self.arrow.to_pandas()


def _scan_filter(meta: TableMeta, bounds: TableBounds) -> ScanFilter | None:
    """The file-list filter of a raw SQL read: its symbols, and the time range on one timestamp column (the table's
    usual time column first). None when the WHERE clause constrains neither."""
    types = {f.name: f.field_type for f in meta.table.schema().fields}
    timed = [c for c in bounds.times if isinstance(types.get(c), (TimestampType, TimestamptzType))]
    column = min(timed, key=lambda c: (c not in ("exchange_ts", "window_start"), c), default=None)
    if column is None and bounds.symbols is None:
        return None
    start, end = bounds.times[column] if column is not None else (None, None)
    return ScanFilter(tuple(sorted(bounds.symbols or ())), column, _utc_micros(start), _utc_micros(end))


def _utc_micros(value: int | None) -> dt.datetime | None:
    return None if value is None else dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=value)


_audit_logs: dict[tuple[str, str, str], AuditLog] = {}
_tails: dict[tuple[str, str], TailReader] = {}
_shared_lock = threading.Lock()


def shared_audit_log(settings: Settings) -> AuditLog:
    key = (settings.catalog_uri, settings.warehouse, settings.namespace)
    with _shared_lock:
        log = _audit_logs.get(key)
        if log is None:
            log = _audit_logs[key] = AuditLog(IcebergResource.from_settings(settings), settings.catalog_uri)
        return log


class Client:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        token: str | None = None,
        api_key: str | None = None,
        client_address: str | None = None,
        limits: QueryLimits | None = None,
        log: TickLog | None = None,
        engine: QueryEngine | None = None,
        audit_log: AuditLog | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.client_address = client_address or f"local:{socket.gethostname()}"
        self.engine = engine or shared_engine(self.settings, limits)
        self.audit_log = audit_log or shared_audit_log(self.settings)
        self.store = AuthStore.from_settings(self.settings)
        self.authorizer = Authorizer(self.store, self.settings.namespace)
        self._log = log
        try:
            self.principal = authenticate(self.settings, token=token, api_key=api_key, store=self.store)
        except AuthenticationError as exc:
            self._record(
                AuditEvent(
                    "<unauthenticated>",
                    "",
                    "jwt" if token else "api_key" if api_key else "none",
                    "authenticate",
                    "*",
                    "denied",
                    detail=f"{type(exc).__name__}: {exc}",
                    client_address=self.client_address,
                )
            )
            raise

    # ---- governance ----------------------------------------------------------------------------------------

    def _record(self, event: AuditEvent) -> None:
        self.audit_log.append(event)
        self.engine.metrics.audit(event.outcome)

    def _governed(
        self,
        action: str,
        needs: Callable[[], tuple[Sequence[str], Sequence[tuple[str, str]]]] | Sequence[str],
        run: Callable[[], QueryResult],
        *,
        symbols: Sequence[str] = (),
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        as_of: AsOf = None,
        detail: str | None = None,
    ) -> QueryResult:
        """Authorise (every table read, plus any extra (resource, action)), run, audit; denied and failed calls are
        audited too, and nothing is returned unless its audit row is committed."""
        started = time.perf_counter()
        p = self.principal

        def event(outcome: str, rows: int = 0, note: str | None = None, resource: str = "") -> AuditEvent:
            return AuditEvent(
                p.user, p.role, p.method, action, resource, outcome, symbols, start, end,
                None if as_of is None else str(as_of), rows, note, self.client_address,
                (time.perf_counter() - started) * 1000,
            )  # fmt: skip

        resource = action
        try:
            names, extra = needs() if callable(needs) else (needs, ())
            wanted = [(resource_for_table(self.settings.namespace, t), "read") for t in names] + list(extra)
            resource = ",".join(sorted({r for r, _ in wanted})) or action
            refused = [(r, a) for r, a in wanted if not self.authorizer.allowed(p, r, a)]
            if refused:
                raise PermissionDeniedError(
                    f"{p.user} (role {p.role}) may not "
                    + ", ".join(f"{a} {r}" for r, a in refused)
                    + "; ask an admin to grant it (`k2 auth grant`)"
                )
        except PermissionDeniedError as exc:
            self._record(event("denied", note=str(exc), resource=resource))
            self.engine.metrics.request(action, "denied", time.perf_counter() - started, 0)
            raise
        except K2Error as exc:
            self._record(event("error", note=f"{type(exc).__name__}: {exc}", resource=resource))
            self.engine.metrics.request(action, "error", time.perf_counter() - started, 0)
            raise
        try:
            result = run()
        except K2Error as exc:
            self._record(event("error", note=f"{type(exc).__name__}: {exc}", resource=resource))
            self.engine.metrics.request(action, "error", time.perf_counter() - started, 0)
            raise
        self._record(event("allowed", rows=result.num_rows, note=detail, resource=resource))
        self.engine.metrics.request(action, "allowed", time.perf_counter() - started, result.num_rows)
        for part in result.freshness.parts:
            self.engine.metrics.source_rows(part.source, part.rows)
        return result

    # ---- plumbing ------------------------------------------------------------------------------------------

    def _pin(self, as_of: AsOf, tables: dict[str, TableMeta], reads_: Sequence[str]) -> Pin | None:
        if as_of is None:
            return None
        from k2.tags import manifest_snapshots

        for name in reads_:
            self.engine.table(name, tables)
        return resolve(
            as_of, {n: m.table for n, m in tables.items()}, reads_, lambda tag: manifest_snapshots(self.settings, tag)
        )

    def _tail_reader(self, ticks: TableMeta) -> TailReader:
        topic = self.settings.tick_topic
        key = (self.settings.kafka_bootstrap, topic) if self._log is None else (str(id(self._log)), topic)
        with _shared_lock:
            return self._tail_reader_locked(key, ticks)

    def _tail_reader_locked(self, key: tuple[str, str], ticks: TableMeta) -> TailReader:
        topic = self.settings.tick_topic
        reader = _tails.get(key)
        if reader is None:
            log = self._log or KafkaResource(bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_s=5.0)
            probe = KafkaOffsetProbe(self.settings.kafka_bootstrap) if self._log is None else None
            reader = _tails[key] = TailReader(
                log,
                topic,
                FileSchemaStore(),
                ticks.table.schema().as_arrow(),
                self.settings.serving.tail_max_records,
                probe,
            )
        return reader

    def _ticks_read(
        self, symbols: Sequence[str], start: dt.datetime | None, end: dt.datetime | None, as_of: AsOf, route: str,
        latest: bool,
    ) -> QueryResult:  # fmt: skip
        if route not in ROUTES:
            raise K2Error(f"route {route!r}: use one of {', '.join(ROUTES)}")
        t0 = time.perf_counter()
        tables = self.engine.tables()
        meta = self.engine.table("ticks", tables)
        pin = self._pin(as_of, tables, ["ticks"])
        fresh = Freshness(route="iceberg", as_of=pin.label if pin else None)
        tail: Tail | None = None
        if pin is None and route != "iceberg":
            fresh.watermark = read_watermarks(meta.table).get(self.settings.tick_topic, {})
            try:
                tail = self._tail_reader(meta).read(fresh.watermark)
            except TailTooLargeError:
                raise
            except K2Error as exc:  # the broker is down or the topic is gone: serve history, say so
                if route == "kafka":
                    raise
                fresh.kafka_error = f"{type(exc).__name__}: {exc}"
            if tail is not None:
                fresh.kafka_end = tail.end
                fresh.lag_records = sum(hi - lo for lo, hi in tail.ranges.values())
                fresh.lost_offsets = tail.lost
        predicate, params = reads.where(symbols, "exchange_ts", start, end)
        with_tail = tail is not None and tail.ticks.num_rows > 0
        extra = {reads.TAIL_VIEW: tail.ticks} if tail is not None and with_tail else None
        if route == "kafka":
            assert tail is not None
            extra = {reads.TAIL_VIEW: tail.ticks}
            sql, repeats = reads.tail_only_sql(predicate, latest), 1
            fresh.route = "kafka"
        else:
            sql, repeats = reads.ticks_sql(predicate, with_tail, latest)
            fresh.route = "hybrid" if with_tail else "iceberg"
        # Read Iceberg at the very snapshot whose watermark bounded the tail: the boundary is exact.
        pinned: dict[str, int | None] = dict(pin.snapshots) if pin else {"ticks": meta.snapshot_id}
        scan = {"ticks": ScanFilter(tuple(symbols), "exchange_ts", start, end)}
        done = self.engine.execute(
            sql, params * repeats, reads=["ticks"], pinned=pinned, extra_tables=extra, tables=tables, scan=scan,
            qualified=(),
        )  # fmt: skip
        data, counts = reads.split_source(done.table)
        if not counts and route != "kafka":  # an Iceberg-only read has no _k2_source column
            counts = {"iceberg": data.num_rows}
        if route != "kafka":
            fresh.parts.append(Part("iceberg", "ticks", counts.get("iceberg", 0), done.snapshots.get("ticks")))
        if tail is not None and (with_tail or route == "kafka"):
            fresh.parts.append(Part("kafka", self.settings.tick_topic, counts.get("kafka", 0), offsets=tail.ranges))
        return QueryResult(data, fresh, time.perf_counter() - t0)

    def _simple(
        self, sql: str, params: list[Any], reads_: Sequence[str], as_of: AsOf, cache: bool,
        extra: dict[str, pa.Table] | None = None,
        scan: dict[str, ScanFilter] | Callable[[dict[str, TableMeta]], dict[str, ScanFilter]] | None = None,
        qualified: Sequence[str] = (),
    ) -> QueryResult:  # fmt: skip
        t0 = time.perf_counter()
        tables = self.engine.tables()
        if callable(scan):
            scan = scan(tables)
        pin = self._pin(as_of, tables, reads_)
        done: Execution = self.engine.execute(
            sql, params, reads=reads_, pinned=dict(pin.snapshots) if pin else {}, cache=cache, tables=tables,
            extra_tables=extra, scan=scan, qualified=qualified,
        )  # fmt: skip
        fresh = Freshness(route="iceberg", as_of=pin.label if pin else None, cached=done.cached)
        fresh.parts = [Part("iceberg", n, done.table.num_rows, s) for n, s in done.snapshots.items()]
        return QueryResult(done.table, fresh, time.perf_counter() - t0)

    # ---- reads ---------------------------------------------------------------------------------------------

    def ticks(
        self, symbols: Symbols = None, start: Moment = None, end: Moment = None, *, as_of: AsOf = None,
        route: str = "auto", audit_action: str = "ticks",
    ) -> QueryResult:  # fmt: skip
        """Validated ticks in [start, end) (default: the last K2_QUERY_WINDOW_S seconds), newest from Kafka.
        `audit_action` names the purpose in the audit log (e.g. replay)."""
        syms = reads.symbols_list(symbols)
        begin, stop = reads.time_range(start, end, self.settings.serving.window_s)
        return self._governed(
            audit_action, ["ticks"], lambda: self._ticks_read(syms, begin, stop, as_of, route, latest=False),
            symbols=syms, start=begin, end=stop, as_of=as_of,
        )  # fmt: skip

    def latest(self, symbols: Symbols = None, *, as_of: AsOf = None, route: str = "auto") -> QueryResult:
        """The newest tick of each symbol (all symbols when none are given)."""
        syms = reads.symbols_list(symbols)
        return self._governed(
            "latest", ["ticks"], lambda: self._ticks_read(syms, None, None, as_of, route, latest=True),
            symbols=syms, as_of=as_of,
        )  # fmt: skip

    def bars(
        self, interval: str = "1m", symbols: Symbols = None, start: Moment = None, end: Moment = None, *,
        as_of: AsOf = None,
    ) -> QueryResult:  # fmt: skip
        """OHLCV bars of bars_<interval> whose window starts in [start, end) (open-ended when not given)."""
        table, _ = reads.bars_table(interval)
        syms = reads.symbols_list(symbols)
        begin, stop = reads.timestamp(start), reads.timestamp(end)

        def run() -> QueryResult:
            columns = [f.name for f in self.engine.table(table).table.schema().fields]
            time_col = "window_start" if "window_start" in columns else "trading_date"
            predicate, params = reads.where(syms, time_col, begin, stop)
            sql = f"SELECT * FROM {table} WHERE {predicate} ORDER BY symbol, {time_col}"
            scan = {table: ScanFilter(tuple(syms), time_col, begin, stop)}
            return self._simple(sql, params, [table], as_of, cache=True, scan=scan)

        return self._governed("bars", [table], run, symbols=syms, start=begin, end=stop, as_of=as_of)

    def asof_join(
        self, trades: Any, right: str = "bars_1m", *, by: str = "symbol", on: str = "ts", as_of: AsOf = None,
        lookback: dt.timedelta = dt.timedelta(days=1), prefix: str | None = None,
    ) -> QueryResult:  # fmt: skip
        """Each row of `trades` (columns `by` and `on`) with the last row of `right` (ticks or bars_<interval>) known
        at its time: for bars the last bar closed by then, so a backtest never sees the future."""
        left = reads.as_arrow(trades)
        if by not in left.column_names or on not in left.column_names:
            raise K2Error(f"trades need columns {by!r} and {on!r}; they have {left.column_names}")
        syms = reads.symbols_list(left[by].to_pylist())
        moments = [m for m in (reads.timestamp(t) for t in left[on].to_pylist()) if m is not None]
        begin = min(moments) - lookback if moments else None
        stop = max(moments) + dt.timedelta(microseconds=1) if moments else None

        def run() -> QueryResult:
            if right == "ticks":
                right_time, time_col, pre = "exchange_ts", "exchange_ts", prefix or "tick_"
            else:
                _, width = reads.bars_table(right.removeprefix("bars_"))
                right_time, time_col, pre = f"window_start + {width}", "window_start", prefix or "bar_"
            columns = [f.name for f in self.engine.table(right).table.schema().fields if f.name != "symbol"]
            predicate, params = reads.where(syms, time_col, begin, stop)
            sql = reads.asof_sql(left.column_names, columns, right, right_time, by, on, predicate, pre)
            scan = {right: ScanFilter(tuple(syms), time_col, begin, stop)}
            return self._simple(sql, params, [right], as_of, cache=False, extra={reads.TRADES_VIEW: left}, scan=scan)

        return self._governed("asof_join", [right], run, symbols=syms, start=begin, end=stop, as_of=as_of)

    def sql(self, sql: str, *, as_of: AsOf = None) -> QueryResult:
        """One SELECT over the table views (`ticks`, `bars_1m`, ... or `market_data.<name>`)."""
        shapes: list[Any] = []

        def needs() -> tuple[Sequence[str], Sequence[tuple[str, str]]]:
            shapes.append(analyse(sql, self.settings.namespace))
            extra = [(TABLE_FUNCTIONS_RESOURCE, "execute")] if shapes[0].table_functions else []
            return sorted(shapes[0].tables), extra

        def run() -> QueryResult:
            if "audit_log" in shapes[0].tables:
                self.audit_log.flush()  # what compliance reads matches every call made so far
            bounds = {} if shapes[0].table_functions else where_bounds(sql, self.settings.namespace)

            def scan(tables: dict[str, TableMeta]) -> dict[str, ScanFilter]:
                return {n: f for n, b in bounds.items() if n in tables and (f := _scan_filter(tables[n], b))}

            return self._simple(
                sql, [], sorted(shapes[0].tables), as_of, cache=shapes[0].aggregate, scan=scan,
                qualified=sorted(shapes[0].qualified),
            )  # fmt: skip

        return self._governed("sql", needs, run, as_of=as_of, detail=sql)
