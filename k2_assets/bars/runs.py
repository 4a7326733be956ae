"""What the live and the partitioned bar writers share: the tables, run reports, the commit protocol (overwrite
the changed partitions with their corrections staged in an outbox, one atomic commit per table) and re-rolling
5m/1h/1d days from bars_1m."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import polars as pl
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from k2_assets.bars.ohlcv import STATE_COLUMNS, rollup, window_bounds
from k2_assets.bars.restate import ALLOWED_LATENESS_US, Restated, restate
from k2_assets.bars.session import session_of
from k2_assets.bars.sources import tz_of
from k2_assets.bars.store import (
    OUTBOX,
    BarState,
    Day,
    drain_outbox,
    ensure_bar_table,
    new_outbox_id,
    overwrite_days,
    read_days,
    read_state,
    stage_outbox,
)
from k2_resources.errors import BarCommitConflictError
from k2_resources.iceberg import IcebergResource
from k2_resources.tables import BAR_CORRECTIONS, BAR_TABLES, TICKS

ROLLUPS = ("5m", "1h", "1d")
T = TypeVar("T")


@dataclass
class BarTables:
    ticks: Table
    bars: dict[str, Table]
    corrections: Table

    @classmethod
    def open(cls, iceberg: IcebergResource) -> BarTables:
        return cls(
            ticks=iceberg.ensure_table(TICKS),
            bars={i: ensure_bar_table(iceberg, d) for i, d in BAR_TABLES.items()},
            corrections=ensure_bar_table(iceberg, BAR_CORRECTIONS),
        )


@dataclass
class DayReport:
    interval: str
    day: Day
    ticks_read: int
    bars_written: int
    bars_restated: int
    open_bars: int
    bars: int


@dataclass
class BarsRunResult:
    mode: str
    source_snapshot_id: int | None = None
    ticks_read: int = 0
    reports: list[DayReport] = field(default_factory=list)
    corrections: int = 0
    watermark: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def totals(self, interval: str) -> dict[str, int]:
        rows = [r for r in self.reports if r.interval == interval]
        return {
            "bars_written": sum(r.bars_written for r in rows),
            "bars_restated": sum(r.bars_restated for r in rows),
            "open_bars": sum(r.open_bars for r in rows),
            "days": len(rows),
        }


def with_retries(step: Callable[[], T], what: str, attempts: int = 8) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except CommitFailedException:
            time.sleep(min(0.05 * 2**attempt, 2.0))
    raise BarCommitConflictError(f"{what}: lost the commit race {attempts} times; nothing was committed, re-run it")


def max_marks(marks: dict[str, int], ticks: pl.DataFrame) -> dict[str, int]:
    out = dict(marks)
    if ticks.is_empty():
        return out
    for code, ts in ticks.group_by("exchange").agg(pl.col("exchange_ts").max()).iter_rows():
        out[code] = max(out.get(code, ts), ts)
    return out


def closed_days(days: Iterable[Day], now_us: int) -> frozenset[Day]:
    """Days whose session closed at least the allowed lateness ago by the wall clock (or that are no session):
    a rebuild marks all their bars final."""
    out = set()
    for code, day in days:
        session = session_of(code, day)
        if session is None or session[1] + ALLOWED_LATENESS_US <= now_us:
            out.add((code, day))
    return frozenset(out)


def day_report(interval: str, day: Day, result: Restated, ticks_read: int) -> DayReport:
    return DayReport(interval, day, ticks_read, result.written, result.restated, result.open_bars, result.rows.height)


def commit(
    tables: BarTables,
    interval: str,
    changed: dict[Day, Restated],
    state: BarState,
    run_id: str,
    *,
    drain: bool = True,
) -> int:
    """Overwrite the partitions whose rows changed, stage their corrections, commit, then move the corrections
    (unless `drain` is false: the caller moves the corrections of several tables in one commit afterwards; until
    then they are staged and named by this commit, so a crash loses nothing). Returns corrections moved."""
    table = tables.bars[interval]
    written = {d: r for d, r in changed.items() if r.written or r.corrections.height}
    props = state.properties()
    corrections = [r.corrections for r in written.values() if not r.corrections.is_empty()]
    moved = 0
    if corrections:
        outbox_id = new_outbox_id()
        stage_outbox(tables.corrections, pl.concat(corrections).with_columns(pl.lit(run_id).alias("run_id")), outbox_id)
        props[OUTBOX] = outbox_id
    rows = pl.concat([r.rows for r in written.values()]) if written else pl.DataFrame()
    if not written and not props_changed(table, props):
        return 0
    overwrite_days(table, rows, written.keys(), props)
    if corrections and drain:
        moved = drain_outbox(table, tables.corrections)
    return moved


def props_changed(table: Table, props: dict[str, str]) -> bool:
    snap = table.current_snapshot()
    current = dict(snap.summary.additional_properties) if snap is not None and snap.summary is not None else {}
    return any(current.get(k) != v for k, v in props.items())


def rollup_partitions(
    tables: BarTables,
    interval: str,
    days: list[Day],
    closed: frozenset[Day],
    ticks: pl.DataFrame | None,
    now: int,
    late_inserts: bool = True,
) -> dict[Day, Restated]:
    if not days:
        return {}
    states_1m = read_days(tables.bars["1m"], days)
    old_all = read_days(tables.bars[interval], days)
    source = read_state(tables.bars["1m"]).source_snapshot
    changed: dict[Day, Restated] = {}
    for day in days:
        code, date = day
        tz = tz_of(code)
        day_filter = (pl.col("exchange") == code) & (pl.col("trading_date") == date)
        fresh = rollup(states_1m.filter(day_filter).select(STATE_COLUMNS), interval, tz)
        causes = None
        if ticks is not None and not ticks.is_empty():
            day_ticks = ticks.filter((pl.col("exchange") == code) & (pl.col("trading_date") == date))
            if not day_ticks.is_empty():
                start, _ = window_bounds(pl.col("exchange_ts"), interval, tz)
                causes = day_ticks.select("exchange", "symbol", start.alias("window_start"), "sequence")
        changed[day] = restate(
            old_all.filter(day_filter),
            fresh,
            interval=interval,
            closed_days=closed,
            now_us=now,
            source_snapshot_id=source,
            causes=causes,
            late_inserts=late_inserts,
        )
    return changed
