"""Keeping bars_1m/5m/1h/1d equal to the bars of the validated ticks (ARCHITECTURE.md decision 4).

Two writers, one rule (every commit re-reads the state it builds on and fails on a concurrent commit, then
re-plans; the library's blind retry is off):

- `update_live` (after each micro-batch, unpartitioned): reads only the tick files appended since the ticks
  snapshot bars_1m last reflected, merges them into the stored bar states of the (symbol, minute) windows they
  touch (no other tick is read), restates final bars that changed, and re-rolls the affected days of
  5m/1h/1d from bars_1m. Days touched by a non-append ticks commit (a delete or rewrite) are rebuilt whole.
- `rebuild_days` / `rollup_days` (the daily-partitioned assets): recompute whole trading days from ticks (1m) or
  from bars_1m (5m/1h/1d), for backfills and re-materialisation; bars_1m records the ticks snapshot each rebuilt
  day reflects so the live path never merges those ticks twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import polars as pl
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from k2_assets.bars.ohlcv import BAR_KEY, STATE_COLUMNS, bars_1m, combine, empty_states, rollup, window_bounds
from k2_assets.bars.restate import ALLOWED_LATENESS_US, Restated, restate
from k2_assets.bars.session import session_of
from k2_assets.bars.sources import (
    all_trading_days,
    appended_ticks,
    as_date,
    ticks_of_day,
    trading_dates_of_utc_days,
    tz_of,
    utc_days_of_partitions,
)
from k2_assets.bars.store import (
    OUTBOX,
    BarState,
    Day,
    Delta,
    day_key,
    delta_since,
    drain_outbox,
    ensure_bar_table,
    new_outbox_id,
    overwrite_days,
    parse_day_key,
    partition_position,
    read_days,
    read_state,
    record_tuple,
    stage_outbox,
)
from k2_resources.errors import BarCommitConflictError
from k2_resources.iceberg import IcebergResource
from k2_resources.tables import BAR_CORRECTIONS, BAR_TABLES, TICKS

ROLLUPS = ("5m", "1h", "1d")
DAY_US = 86_400_000_000
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


def _with_retries(step: Callable[[], T], what: str, attempts: int = 8) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except CommitFailedException:
            time.sleep(min(0.05 * 2**attempt, 2.0))
    raise BarCommitConflictError(f"{what}: lost the commit race {attempts} times; nothing was committed, re-run it")


def _max_marks(marks: dict[str, int], ticks: pl.DataFrame) -> dict[str, int]:
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


def _report(interval: str, day: Day, result: Restated, ticks_read: int) -> DayReport:
    return DayReport(interval, day, ticks_read, result.written, result.restated, result.open_bars, result.rows.height)


def _commit(
    tables: BarTables,
    interval: str,
    changed: dict[Day, Restated],
    state: BarState,
    run_id: str,
) -> int:
    """Overwrite the partitions whose rows changed, stage their corrections, commit, then move the corrections."""
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
    if corrections:
        moved = drain_outbox(table, tables.corrections)
    return moved


def props_changed(table: Table, props: dict[str, str]) -> bool:
    snap = table.current_snapshot()
    current = dict(snap.summary.additional_properties) if snap is not None and snap.summary is not None else {}
    return any(current.get(k) != v for k, v in props.items())


# ---------------------------------------------------------------------------------------------------------------
# Live path


def update_live(tables: BarTables, *, run_id: str = "", now_us: int | None = None) -> BarsRunResult:
    """Bring every bar table up to the current ticks snapshot, touching only what the new ticks touched."""
    started = time.perf_counter()
    now = now_us or int(time.time() * 1_000_000)
    result = BarsRunResult(mode="live")
    for table in tables.bars.values():  # recover corrections staged by a run that died after its commit
        drain_outbox(table, tables.corrections)
    causes = _with_retries(lambda: _live_1m(tables, result, run_id, now), "bars_1m")
    for interval in ROLLUPS:
        _with_retries(lambda i=interval: _live_rollup(tables, i, result, causes, run_id, now), f"bars_{interval}")  # type: ignore[misc]
    result.seconds = time.perf_counter() - started
    return result


def _live_1m(tables: BarTables, result: BarsRunResult, run_id: str, now: int) -> pl.DataFrame:
    """Returns the ticks merged (the causes of any restatement), empty if none."""
    ticks, b1 = tables.ticks, tables.bars["1m"]
    ticks.refresh()
    b1.refresh()
    result.reports = [r for r in result.reports if r.interval != "1m"]
    snap = ticks.current_snapshot()
    state = read_state(b1)
    result.source_snapshot_id = snap.snapshot_id if snap else None
    result.watermark = dict(state.watermark)
    if snap is None or state.source_snapshot == snap.snapshot_id:
        return appended_ticks(ticks, Delta())
    delta = delta_since(ticks, state.source_snapshot)
    if delta.complete:
        full = trading_dates_of_utc_days(utc_days_of_partitions(ticks, delta.rewritten_partitions))
        new = appended_ticks(ticks, delta)
        if state.rebuilt_days:
            rebuilt = pl.DataFrame(
                [(*parse_day_key(k), s) for k, s in state.rebuilt_days.items()],
                schema={"exchange": pl.String, "trading_date": pl.Date, "_rebuilt_seq": pl.Int64},
                orient="row",
            )
            new = new.join(rebuilt, on=["exchange", "trading_date"], how="left")
            new = new.filter(pl.col("_rebuilt_seq").is_null() | (pl.col("_seq") > pl.col("_rebuilt_seq")))
        if full:
            full_frame = pl.DataFrame(list(full), schema={"exchange": pl.String, "trading_date": pl.Date}, orient="row")
            new = new.join(full_frame, on=["exchange", "trading_date"], how="anti")
    else:
        full = all_trading_days(ticks)
        new = appended_ticks(ticks, Delta())
    marks_after = _max_marks(state.watermark, new)
    new_days = {(x, d) for x, d in new.select("exchange", "trading_date").unique().iter_rows()}
    days = sorted(set(full) | new_days)
    old_all = read_days(b1, days)
    changed: dict[Day, Restated] = {}
    for day in days:
        code, date = day
        old = old_all.filter((pl.col("exchange") == code) & (pl.col("trading_date") == date))
        if day in full:  # one day of ticks in memory at a time
            day_ticks = ticks_of_day(ticks, day)
            fresh = bars_1m(day_ticks, tz_of(code)).filter(pl.col("trading_date") == date)
            read = day_ticks.height
            marks_after = _max_marks(marks_after, day_ticks)
            day_causes = None
        else:
            day_ticks = new.filter((pl.col("exchange") == code) & (pl.col("trading_date") == date))
            fresh = merge_into(old, bars_1m(day_ticks, tz_of(code)))
            read = day_ticks.height
            start, _ = window_bounds(pl.col("exchange_ts"), "1m", tz_of(code))
            day_causes = day_ticks.select("exchange", "symbol", start.alias("window_start"), "sequence")
        restated = restate(
            old,
            fresh,
            interval="1m",
            now_us=now,
            source_snapshot_id=snap.snapshot_id,
            causes=day_causes,
        )
        changed[day] = restated
        result.ticks_read += read
        result.reports.append(_report("1m", day, restated, read))
    keep = {k: s for k, s in state.rebuilt_days.items() if s > (snap.sequence_number or 0)}
    new_state = BarState(source_snapshot=snap.snapshot_id, rebuilt_days=keep, watermark=marks_after)
    result.corrections += _commit(tables, "1m", changed, new_state, run_id)
    result.watermark = marks_after
    return new


def merge_into(old: pl.DataFrame, fresh: pl.DataFrame) -> pl.DataFrame:
    """Stored bar states with new states merged into the windows they share (exact: `combine`)."""
    if fresh.is_empty():
        return old.select(STATE_COLUMNS)
    stored = old.select(STATE_COLUMNS)
    touched = stored.join(fresh.select(BAR_KEY), on=BAR_KEY, how="semi")
    untouched = stored.join(fresh.select(BAR_KEY), on=BAR_KEY, how="anti")
    return pl.concat([untouched, combine(pl.concat([touched, fresh.select(STATE_COLUMNS)]))]).sort(BAR_KEY)


def _live_rollup(
    tables: BarTables, interval: str, result: BarsRunResult, ticks: pl.DataFrame, run_id: str, now: int
) -> None:
    b1, bx = tables.bars["1m"], tables.bars[interval]
    b1.refresh()
    bx.refresh()
    result.reports = [r for r in result.reports if r.interval != interval]
    state_1m, state = read_state(b1), read_state(bx)
    if state_1m.snapshot_id is None or state.rolled_from == state_1m.snapshot_id:
        return
    delta = delta_since(b1, state.rolled_from)
    if delta.complete:
        date_pos, exch_pos = partition_position(b1, "trading_date"), partition_position(b1, "exchange")
        parts = set(delta.rewritten_partitions) | {
            record_tuple(f.partition) for _, files in delta.appended for f in files
        }
        days: set[Day] = {(str(p[exch_pos]), as_date(p[date_pos])) for p in parts}
    else:
        days = {(str(p["exchange"]), as_date(p["trading_date"])) for p in _partitions(b1)}
    changed = _rollup(tables, interval, sorted(days), frozenset(), ticks, now)
    for day, restated in changed.items():
        result.reports.append(_report(interval, day, restated, 0))
    new_state = BarState(rolled_from=state_1m.snapshot_id, watermark=state_1m.watermark)
    result.corrections += _commit(tables, interval, changed, new_state, run_id)


def _partitions(table: Table) -> list[dict[str, object]]:
    parts = table.inspect.partitions()
    return [] if parts.num_rows == 0 else parts.column("partition").to_pylist()


def _rollup(
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


# ---------------------------------------------------------------------------------------------------------------
# Partitioned path: whole days


def rebuild_days(
    tables: BarTables, days: Iterable[Day], *, run_id: str = "", now_us: int | None = None
) -> BarsRunResult:
    """Recompute the 1-minute bars of whole trading days from the ticks and restate what changed; one commit per
    day, so memory holds one day of ticks at a time."""
    started = time.perf_counter()
    now = now_us or int(time.time() * 1_000_000)
    result = BarsRunResult(mode="rebuild")
    for day in sorted(set(days)):
        report, corrections, source = _with_retries(lambda d=day: _rebuild_day(tables, d, run_id, now), "bars_1m")  # type: ignore[misc]
        result.reports.append(report)
        result.ticks_read += report.ticks_read
        result.corrections += corrections
        result.source_snapshot_id = source
    result.seconds = time.perf_counter() - started
    return result


def _rebuild_day(tables: BarTables, day: Day, run_id: str, now: int) -> tuple[DayReport, int, int | None]:
    ticks, b1 = tables.ticks, tables.bars["1m"]
    ticks.refresh()
    b1.refresh()
    code, date = day
    snap = ticks.current_snapshot()
    state = read_state(b1)
    old = read_days(b1, [day])
    frame = ticks_of_day(ticks, day) if snap is not None else pl.DataFrame()
    fresh = bars_1m(frame, tz_of(code)).filter(pl.col("trading_date") == date) if frame.height else empty_states()
    restated = restate(
        old,
        fresh,
        interval="1m",
        closed_days=closed_days([day], now),
        now_us=now,
        source_snapshot_id=snap.snapshot_id if snap else None,
        late_inserts=False,
    )
    rebuilt = dict(state.rebuilt_days)
    if snap is not None and state.source_snapshot != snap.snapshot_id:
        rebuilt[day_key(day)] = snap.sequence_number or 0
    new_state = BarState(source_snapshot=state.source_snapshot, rebuilt_days=rebuilt, watermark=state.watermark)
    corrections = _commit(tables, "1m", {day: restated}, new_state, run_id)
    return _report("1m", day, restated, frame.height), corrections, snap.snapshot_id if snap else None


def rollup_days(
    tables: BarTables, interval: str, days: Iterable[Day], *, run_id: str = "", now_us: int | None = None
) -> BarsRunResult:
    """Re-roll whole trading days of 5m/1h/1d bars from bars_1m and restate what changed."""
    started = time.perf_counter()
    now = now_us or int(time.time() * 1_000_000)
    wanted = sorted(set(days))
    result = BarsRunResult(mode="rebuild")

    def step() -> None:
        b1, bx = tables.bars["1m"], tables.bars[interval]
        b1.refresh()
        bx.refresh()
        state = read_state(bx)
        changed = _rollup(tables, interval, wanted, closed_days(wanted, now), None, now, False)
        result.reports = [_report(interval, d, r, 0) for d, r in changed.items()]
        result.corrections = _commit(tables, interval, changed, state, run_id)

    _with_retries(step, f"bars_{interval} rebuild")
    result.seconds = time.perf_counter() - started
    return result
