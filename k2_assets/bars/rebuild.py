"""The partitioned path (`bars_1m` .. `bars_1d` assets): recompute whole trading days from the ticks (1m) or from
bars_1m (5m/1h/1d), for backfills and re-materialisation; bars_1m records the ticks snapshot each rebuilt day
reflects so the live path never merges those ticks twice."""

from __future__ import annotations

import time
from collections.abc import Iterable

import polars as pl

from k2_assets.bars.ohlcv import bars_1m, empty_states
from k2_assets.bars.restate import restate
from k2_assets.bars.runs import (
    BarsRunResult,
    BarTables,
    DayReport,
    closed_days,
    commit,
    day_report,
    rollup_partitions,
    with_retries,
)
from k2_assets.bars.sources import ticks_of_day, tz_of
from k2_assets.bars.store import BarState, Day, day_key, read_days, read_state


def rebuild_days(
    tables: BarTables, days: Iterable[Day], *, run_id: str = "", now_us: int | None = None
) -> BarsRunResult:
    """Recompute the 1-minute bars of whole trading days from the ticks and restate what changed; one commit per
    day, so memory holds one day of ticks at a time."""
    started = time.perf_counter()
    now = now_us or int(time.time() * 1_000_000)
    result = BarsRunResult(mode="rebuild")
    for day in sorted(set(days)):
        report, corrections, source = with_retries(lambda d=day: _rebuild_day(tables, d, run_id, now), "bars_1m")  # type: ignore[misc]
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
    corrections = commit(tables, "1m", {day: restated}, new_state, run_id)
    return day_report("1m", day, restated, frame.height), corrections, snap.snapshot_id if snap else None


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
        changed = rollup_partitions(tables, interval, wanted, closed_days(wanted, now), None, now, False)
        result.reports = [day_report(interval, d, r, 0) for d, r in changed.items()]
        result.corrections = commit(tables, interval, changed, state, run_id)

    with_retries(step, f"bars_{interval} rebuild")
    result.seconds = time.perf_counter() - started
    return result
