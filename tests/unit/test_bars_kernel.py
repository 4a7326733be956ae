"""The bar kernel against the DuckDB oracle: 1-minute bars, exact merging of partial bars, exact rollups."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2_assets.bars.ohlcv import bars_1m, combine, rollup, window_bounds
from k2_resources.errors import BarInputError
from tests.unit.bars_support import MIN, T0, mismatches, oracle

TZ = "Australia/Sydney"


def random_ticks(
    seed: int, n: int, *, seq_base: int = 1, price_scale: int = 100_000, span_min: int = 130
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "exchange": ["ASX"] * n,
            "symbol": rng.choice(["BHP", "CBA"], n),
            "sequence": rng.permutation(n).astype(np.int64) + seq_base,
            # Whole seconds: many ties on exchange_ts, broken by sequence.
            "exchange_ts": T0 + rng.integers(0, span_min * 60, n) * 1_000_000,
            "price": (rng.integers(1, 1_000, n) * price_scale).astype(np.int64),
            "volume": rng.integers(0, 1_000, n).astype(np.int64),
        }
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000), n=st.integers(1, 400))
def test_one_minute_bars_equal_the_oracle_including_ties_on_exchange_time(seed: int, n: int) -> None:
    ticks = random_ticks(seed, n)
    assert mismatches(bars_1m(ticks, TZ), oracle(ticks, "1m")).is_empty()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 100_000), n=st.integers(1, 200), base=st.sampled_from([-(2**40), 2**40, 2**62]))
def test_sequences_outside_the_packed_key_range_take_the_general_path_and_agree(seed: int, n: int, base: int) -> None:
    ticks = random_ticks(seed, n, seq_base=base)
    assert mismatches(bars_1m(ticks, TZ), oracle(ticks, "1m")).is_empty()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), n=st.integers(2, 300), parts=st.integers(2, 5))
def test_bars_of_disjoint_tick_sets_combine_into_the_bars_of_their_union(seed: int, n: int, parts: int) -> None:
    ticks = random_ticks(seed, n)
    labels = np.random.default_rng(seed).integers(0, parts, n)
    pieces = [bars_1m(ticks.filter(pl.Series(labels == k)), TZ) for k in range(parts)]
    merged = combine(pl.concat([p for p in pieces if not p.is_empty()]))
    assert mismatches(merged, oracle(ticks, "1m")).is_empty()
    assert merged.drop("notional").equals(bars_1m(ticks, TZ).drop("notional"))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 100_000), n=st.integers(1, 400), interval=st.sampled_from(["5m", "1h", "1d"]))
def test_rollups_from_one_minute_bars_are_exact(seed: int, n: int, interval: str) -> None:
    ticks = random_ticks(seed, n)
    assert mismatches(rollup(bars_1m(ticks, TZ), interval, TZ), oracle(ticks, interval)).is_empty()


def test_a_minute_whose_notional_overflows_int64_is_still_exact() -> None:
    # 9 million AUD x 1 million shares, twice: 1.8e19 millionths, past int64.
    ticks = pl.DataFrame(
        {
            "exchange": ["ASX"] * 3,
            "symbol": ["BIG"] * 3,
            "sequence": [1, 2, 3],
            "exchange_ts": [T0, T0 + 1, T0 + 2],
            "price": [9_000_000_000_000, 9_000_000_000_001, 1_000_000],
            "volume": [1_000_000, 1_000_000, 3],
        }
    )
    bar = bars_1m(ticks, TZ).row(0, named=True)
    assert bar["notional"] == 9_000_000_000_000 * 1_000_000 + 9_000_000_000_001 * 1_000_000 + 3_000_000
    assert mismatches(bars_1m(ticks, TZ), oracle(ticks, "1m")).is_empty()


def _window(ts: int, interval: str) -> tuple[int, int]:
    start, end = window_bounds(pl.col("ts"), interval, TZ)
    return pl.DataFrame({"ts": [ts]}).select(start.alias("s"), end.alias("e")).row(0)


def test_daily_and_hourly_windows_follow_the_exchange_day_not_utc() -> None:
    # 2026-11-24 13:00 UTC is midnight in Sydney (AEDT): the daily window of the 10:00 open starts there.
    assert _window(T0, "1d") == (T0 - 10 * 60 * MIN, T0 + 14 * 60 * MIN)
    # The day daylight saving starts in Sydney (2026-10-04) is 23 hours long.
    dst = int(dt.datetime(2026, 10, 4, 12, tzinfo=dt.UTC).timestamp() * 1_000_000)
    start, end = _window(dst, "1d")
    assert end - start == 23 * 60 * MIN
    assert _window(T0 + 90 * MIN + 5, "1h") == (T0 + 60 * MIN, T0 + 120 * MIN)


def test_unvalidated_input_is_refused_with_a_typed_error() -> None:
    ticks = random_ticks(1, 3).with_columns(pl.Series("volume", [1, -5, 2]))
    with pytest.raises(BarInputError, match="validated ticks"):
        bars_1m(ticks, TZ)
