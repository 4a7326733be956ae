"""Bars under late and out-of-order data, against a real local Iceberg catalog (SQLite) and an independent oracle.

The invariant (ARCHITECTURE.md decision 4): after any interleaving of on-time batches, late batches, whole-day
rebuilds and rollups, every bar of every interval equals what the oracle computes from the ticks published so far.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k2_assets.bars.build import rebuild_days, rollup_days, update_live
from k2_assets.bars.restate import ALLOWED_LATENESS_US
from k2_assets.bars.store import OUTBOX, drain_outbox, read_state
from tests.unit.bars_support import (
    KEY,
    MIN,
    T0,
    bar_tables,
    corrections,
    mismatches,
    oracle,
    publish,
    stored,
)

DAY = ("ASX", dt.date(2026, 11, 25))
INTERVALS = ("1m", "5m", "1h", "1d")


def make_ticks(n: int, seed: int, span_min: int = 70, symbols: tuple[str, ...] = ("BHP", "CBA", "XRO")) -> pl.DataFrame:
    """A session's first `span_min` minutes (crossing an hour boundary), ticks on exact-second ties included."""
    rng = np.random.default_rng(seed)
    sym = rng.choice(list(symbols), n)
    ts = T0 + rng.integers(0, span_min * 60, n) * 1_000_000 + rng.choice([0, 1, 999_999], n)
    frame = pl.DataFrame({"symbol": sym, "exchange_ts": ts}).with_row_index("i")
    return (
        frame.with_columns(
            pl.lit("ASX").alias("exchange"),
            # Per-symbol sequence in a random order relative to time: ties on exchange_ts are broken by sequence.
            pl.Series("sequence", rng.permutation(n).astype(np.int64) + 1),
            pl.Series("price", (rng.integers(400, 500, n) * 100_000).astype(np.int64)),
            pl.Series("volume", rng.integers(0, 400, n).astype(np.int64)),
        )
        .select("exchange", "symbol", "sequence", "exchange_ts", "price", "volume")
        .sort("exchange_ts")
    )


def assert_matches_oracle(tables, published: pl.DataFrame) -> None:  # type: ignore[no-untyped-def]
    for interval in INTERVALS:
        diff = mismatches(stored(tables, interval), oracle(published, interval))
        assert diff.is_empty(), (interval, diff.head(3).to_dicts())


def assert_revisions_are_explained(tables) -> None:  # type: ignore[no-untyped-def]
    """Every revision step of every bar has exactly one correction row, and only final bars were restated."""
    fixes = corrections(tables)
    for interval in INTERVALS:
        bars = stored(tables, interval)
        restated = bars.filter(pl.col("revision") > 0)
        if fixes.is_empty():
            assert restated.is_empty(), interval
            continue
        counted = (
            fixes.filter((pl.col("interval") == interval) & pl.col("old_revision").is_not_null()).group_by(KEY).len()
        )
        joined = restated.select([*KEY, "revision"]).join(counted, on=KEY, how="left")
        assert (joined["revision"] == joined["len"].fill_null(0)).all(), (interval, joined.head(3).to_dicts())


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(5, 150),
    cuts=st.lists(st.floats(0.05, 0.95), min_size=0, max_size=3),
    late_fraction=st.floats(0.0, 0.5),
    rebuild_after=st.integers(-1, 3),
)
def test_bars_equal_the_oracle_after_any_arrival_order_of_on_time_and_late_batches(
    tmp_path: Path, seed: int, n: int, cuts: list[float], late_fraction: float, rebuild_after: int
) -> None:
    tables = bar_tables(tmp_path)
    ticks = make_ticks(n, seed)
    rng = np.random.default_rng(seed + 1)
    # Arrival order: mostly exchange-time order, a random subset held back and delivered at random later points.
    late = rng.random(n) < late_fraction
    arrival = np.where(late, rng.uniform(0, 1.5, n), np.linspace(0, 1, n))
    order = ticks.with_columns(pl.Series("_arrival", arrival)).sort("_arrival")
    bounds = [0, *sorted(int(c * n) for c in cuts), n]
    published = order.head(0).drop("_arrival")
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        batch = order.slice(lo, hi - lo).drop("_arrival")
        if batch.is_empty():
            continue
        publish(tables, batch)
        published = pl.concat([published, batch])
        update_live(tables, run_id=f"batch-{i}")
        if i == rebuild_after:  # a user re-materialises the day's partitions between batches
            rebuild_days(tables, [DAY], run_id="ui")
            for interval in ("5m", "1h", "1d"):
                rollup_days(tables, interval, [DAY], run_id="ui")
        assert_matches_oracle(tables, published)
    assert_revisions_are_explained(tables)


def test_a_late_tick_restates_its_bar_and_every_final_bar_containing_it(tmp_path: Path) -> None:
    tables = bar_tables(tmp_path)
    first = pl.DataFrame(
        {
            "exchange": ["ASX"] * 3,
            "symbol": ["BHP"] * 3,
            "sequence": [1, 2, 4],
            "exchange_ts": [T0 + 1_000_000, T0 + 30_000_000, T0 + 70 * MIN],  # the last one moves the watermark on
            "price": [45_000_000, 45_500_000, 46_000_000],
            "volume": [100, 100, 100],
        }
    )
    publish(tables, first)
    update_live(tables, run_id="on-time")
    before = stored(tables, "1m").row(0, named=True)
    assert (before["revision"], before["is_final"], before["close"]) == (0, True, 45_500_000)

    late = pl.DataFrame(
        {
            "exchange": ["ASX"],
            "symbol": ["BHP"],
            "sequence": [3],
            "exchange_ts": [T0 + 50_000_000],  # 70 minutes after its window closed
            "price": [44_000_000],
            "volume": [200],
        }
    )
    publish(tables, late)
    tables.corrections.refresh()
    history = len(tables.corrections.history())
    result = update_live(tables, run_id="late")
    tables.corrections.refresh()
    assert len(tables.corrections.history()) == history + 1  # one bar_corrections commit for the 3 restated tables
    assert result.corrections == 3
    after = stored(tables, "1m").row(0, named=True)
    assert (after["revision"], after["close"], after["low"], after["volume"], after["last_sequence"]) == (
        1,
        44_000_000,
        44_000_000,
        400,
        3,
    )
    # VWAP from the exact notional: (45.0*100 + 45.5*100 + 44.0*200) / 400 = 44.625
    assert after["vwap"] == 44_625_000
    fixes = corrections(tables).sort("interval")
    by_interval = {row["interval"]: row for row in fixes.iter_rows(named=True)}
    # The 1m and 5m bars were final (watermark 70 min on); the 1h bar [10:00, 11:00) too; the day is still open.
    assert set(by_interval) == {"1m", "5m", "1h"}
    one = by_interval["1m"]
    assert (one["old_revision"], one["new_revision"], one["old_close"], one["new_close"]) == (
        0,
        1,
        45_500_000,
        44_000_000,
    )
    assert one["caused_by_sequences"] == [3] and one["late_ticks"] == 1 and one["reason"] == "late_ticks"
    assert one["run_id"] == "late"
    assert stored(tables, "5m").row(0, named=True)["revision"] == 1
    assert stored(tables, "1d").row(0, named=True)["revision"] == 0  # open: updated, not restated
    assert result.totals("1m")["bars_restated"] == 1


def test_ticks_inside_the_allowed_lateness_update_an_open_bar_without_a_revision(tmp_path: Path) -> None:
    tables = bar_tables(tmp_path)
    base = {"exchange": ["ASX"], "symbol": ["BHP"], "price": [45_000_000], "volume": [10]}
    publish(tables, pl.DataFrame({**base, "sequence": [1], "exchange_ts": [T0 + 10_000_000]}))
    update_live(tables)
    bar = stored(tables, "1m").row(0, named=True)
    assert bar["is_final"] is False  # the watermark (T0 + 10 s) is before the window end + 10 s
    # Arrives out of order but while the window [T0, T0+60s) is still open: watermark T0+65s < end + 10 s.
    publish(tables, pl.DataFrame({**base, "sequence": [3], "exchange_ts": [T0 + 65_000_000]}))
    publish(tables, pl.DataFrame({**base, "sequence": [2], "exchange_ts": [T0 + 20_000_000]}))
    update_live(tables)
    bar = stored(tables, "1m").row(0, named=True)
    assert (bar["revision"], bar["trade_count"], bar["is_final"]) == (0, 2, False)
    assert corrections(tables).is_empty()
    # Once the watermark passes end + lateness, the bar turns final without being rewritten as a restatement.
    publish(tables, pl.DataFrame({**base, "sequence": [4], "exchange_ts": [T0 + MIN + ALLOWED_LATENESS_US]}))
    update_live(tables)
    bar = stored(tables, "1m").row(0, named=True)
    assert (bar["revision"], bar["is_final"]) == (0, True)


def test_only_the_windows_a_batch_touches_are_rewritten_and_the_rest_keep_their_revision_time(tmp_path: Path) -> None:
    tables = bar_tables(tmp_path)
    ticks = make_ticks(300, seed=5)
    publish(tables, ticks)
    update_live(tables, run_id="one")
    first = stored(tables, "1m")
    late = ticks.filter(pl.col("symbol") == "BHP").head(1).with_columns(pl.col("sequence") + 10_000)
    publish(tables, late)
    result = update_live(tables, run_id="two")
    assert result.ticks_read == 1  # only the new tick was read, not the day
    second = stored(tables, "1m")
    moved = second.join(first, on=KEY, suffix="_before").filter(pl.col("computed_at") != pl.col("computed_at_before"))
    assert (
        moved.select(KEY).to_dicts()
        == late.select("exchange", "symbol", (pl.col("exchange_ts") // MIN * MIN).alias("window_start")).to_dicts()
    )


def test_a_crash_between_the_bar_commit_and_the_corrections_loses_and_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import k2_assets.bars.live as live

    tables = bar_tables(tmp_path)
    ticks = make_ticks(60, seed=9)
    publish(tables, ticks)
    update_live(tables)
    publish(tables, ticks.head(3).with_columns(pl.col("sequence") + 1_000))  # late: restates final bars

    real_drain = live.drain_outboxes

    def crash(bars, corrections_table):  # type: ignore[no-untyped-def]
        bars = list(bars)
        snaps = [t.current_snapshot() for t in bars]
        if any(s is not None and s.summary.additional_properties.get(OUTBOX) for s in snaps):  # after the commits
            raise RuntimeError("killed after the bars commits")
        return real_drain(bars, corrections_table)

    monkeypatch.setattr(live, "drain_outboxes", crash)
    with pytest.raises(RuntimeError):
        update_live(tables, run_id="dies")
    assert corrections(tables).is_empty()
    assert read_state(tables.bars["1m"]).snapshot_id is not None
    assert tables.bars["1m"].current_snapshot().summary.additional_properties.get(OUTBOX)  # staged, named
    monkeypatch.undo()

    update_live(tables, run_id="next")
    moved = corrections(tables)
    one_minute = moved.filter(pl.col("interval") == "1m")
    # The corrections staged by the run that died (1m and the rollups) arrive with the next run, once.
    assert not one_minute.is_empty() and set(one_minute["run_id"]) == {"dies"}
    assert moved.select("interval", *KEY, "new_revision").is_duplicated().sum() == 0
    assert_revisions_are_explained(tables)
    assert drain_outbox(tables.bars["1m"], tables.corrections) == 0  # applied exactly once
    assert corrections(tables).height == moved.height


def test_rebuilding_a_day_twice_changes_nothing_and_finalises_a_closed_session(tmp_path: Path) -> None:
    tables = bar_tables(tmp_path)
    ticks = make_ticks(200, seed=3)
    publish(tables, ticks)
    update_live(tables)
    first = rebuild_days(tables, [DAY], run_id="ui")
    assert first.totals("1m")["bars_restated"] == 0
    assert stored(tables, "1m")["is_final"].all()  # the 2026-11-25 session closed long ago by the wall clock
    snapshot = tables.bars["1m"].current_snapshot().snapshot_id
    again = rebuild_days(tables, [DAY], run_id="ui-again")
    assert again.totals("1m")["bars_written"] == 0
    assert tables.bars["1m"].current_snapshot().snapshot_id == snapshot
    assert_matches_oracle(tables, ticks)
