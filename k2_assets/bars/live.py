"""The live path (`bars_live`, after each micro-batch): merge only the ticks appended since the ticks snapshot
bars_1m reflects into the stored bar states of the windows they touch, restate final bars that changed, re-roll
the affected days of 5m/1h/1d, then move every table's corrections into bar_corrections in one commit."""

from __future__ import annotations

import time

import polars as pl
from pyiceberg.table import Table

from k2_assets.bars.ohlcv import BAR_KEY, STATE_COLUMNS, bars_1m, combine, window_bounds
from k2_assets.bars.restate import Restated, restate
from k2_assets.bars.runs import (
    ROLLUPS,
    BarsRunResult,
    BarTables,
    commit,
    day_report,
    max_marks,
    rollup_partitions,
    with_retries,
)
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
    BarState,
    Day,
    Delta,
    delta_since,
    drain_outboxes,
    parse_day_key,
    partition_position,
    read_days,
    read_state,
    record_tuple,
)


def update_live(tables: BarTables, *, run_id: str = "", now_us: int | None = None) -> BarsRunResult:
    """Bring every bar table up to the current ticks snapshot, touching only what the new ticks touched."""
    started = time.perf_counter()
    now = now_us or int(time.time() * 1_000_000)
    result = BarsRunResult(mode="live")
    drain_outboxes(tables.bars.values(), tables.corrections)  # corrections staged by a run that died after a commit
    causes = with_retries(lambda: _live_1m(tables, result, run_id, now), "bars_1m")
    for interval in ROLLUPS:
        with_retries(lambda i=interval: _live_rollup(tables, i, result, causes, run_id, now), f"bars_{interval}")  # type: ignore[misc]
    # One bar_corrections commit for all four tables (each bar commit named its staged outbox).
    result.corrections = drain_outboxes(tables.bars.values(), tables.corrections)
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
    marks_after = max_marks(state.watermark, new)
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
            marks_after = max_marks(marks_after, day_ticks)
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
        result.reports.append(day_report("1m", day, restated, read))
    keep = {k: s for k, s in state.rebuilt_days.items() if s > (snap.sequence_number or 0)}
    new_state = BarState(source_snapshot=snap.snapshot_id, rebuilt_days=keep, watermark=marks_after)
    commit(tables, "1m", changed, new_state, run_id, drain=False)
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
    changed = rollup_partitions(tables, interval, sorted(days), frozenset(), ticks, now)
    for day, restated in changed.items():
        result.reports.append(day_report(interval, day, restated, 0))
    new_state = BarState(rolled_from=state_1m.snapshot_id, watermark=state_1m.watermark)
    commit(tables, interval, changed, new_state, run_id, drain=False)


def _partitions(table: Table) -> list[dict[str, object]]:
    parts = table.inspect.partitions()
    return [] if parts.num_rows == 0 else parts.column("partition").to_pylist()
