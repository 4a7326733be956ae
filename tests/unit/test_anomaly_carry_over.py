"""Price anomalies: |price / last valid price - 1| > 10%, where "last valid" carries across batches and skips
anomalous ticks."""

from __future__ import annotations

import numpy as np
import polars as pl

from k2_assets.ticks.anomaly import flag_anomalies
from k2_assets.ticks.validate import ANOMALY, validate
from tests.unit.test_validate import raw

BPS = 1_000  # 10%


def ticks(prices: list[int], symbols: list[str] | None = None) -> pl.DataFrame:
    n = len(prices)
    return pl.DataFrame({"exchange": ["ASX"] * n, "symbol": symbols or ["BHP"] * n, "price": prices})


def last(symbol: str, price: int) -> pl.DataFrame:
    return pl.DataFrame({"exchange": ["ASX"], "symbol": [symbol], "last_price": [price]})


def sequential(prices: list[int], seed: int | None) -> list[bool]:
    """The definition, one tick at a time (a test oracle in Python; production runs the compiled kernel). With nothing
    carried over, the reference starts at the median of the first 11 prices."""
    first = pl.Series(prices[:11]).quantile(0.5, interpolation="nearest")
    ref, out = seed if seed is not None else int(first), []  # type: ignore[arg-type]
    for p in prices:
        bad = ref is not None and ref > 0 and abs(p - ref) * 10_000 > ref * BPS
        out.append(bad)
        if not bad:
            ref = p
    return out


def test_a_jump_against_the_previous_batchs_last_price_is_flagged() -> None:
    flags = flag_anomalies(ticks([50_000_000, 50_100_000]), last("BHP", 45_000_000), BPS)
    assert flags["anomaly"].to_list() == [True, True]
    assert flags["reference"].to_list() == [45_000_000, 45_000_000]


def test_without_a_carried_price_normal_ticks_pass() -> None:
    assert flag_anomalies(ticks([50_000_000, 50_100_000]), None, BPS)["anomaly"].to_list() == [False, False]


def test_a_spike_in_the_very_first_tick_of_a_new_symbol_is_caught() -> None:
    flags = flag_anomalies(ticks([56_250_000, 74_960_000, 74_980_000, 74_935_000]), None, BPS)
    assert flags["anomaly"].to_list() == [True, False, False, False]


def test_the_tick_after_a_spike_is_compared_with_the_price_before_the_spike() -> None:
    flags = flag_anomalies(ticks([100_000_000, 125_000_000, 100_500_000, 101_000_000]), None, BPS)
    assert flags["anomaly"].to_list() == [False, True, False, False]
    assert flags["reference"].to_list()[2] == 100_000_000


def test_exactly_ten_percent_is_not_an_anomaly() -> None:
    flags = flag_anomalies(ticks([110_000_000, 121_000_001]), last("BHP", 100_000_000), BPS)
    assert flags["anomaly"].to_list() == [False, True]


def test_a_level_shift_stays_flagged_until_reviewed() -> None:
    prices = [101_000_000] + [130_000_000] * 40
    flags = flag_anomalies(ticks(prices), last("BHP", 100_000_000), BPS)["anomaly"].to_list()
    assert flags == sequential(prices, 100_000_000) == [False] + [True] * 40


def test_symbols_have_their_own_reference() -> None:
    flags = flag_anomalies(ticks([10_000_000, 200_000_000], ["TLS", "CBA"]), last("CBA", 150_000_000), BPS)
    assert flags["anomaly"].to_list() == [False, True]


def test_flags_equal_the_tick_by_tick_definition() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        steps = rng.choice([1.0, 1.0, 1.0, 1.15, 0.85, 1.3], size=60) * rng.normal(1, 0.02, size=60)
        prices = (100_000_000 * np.cumprod(steps)).astype(np.int64).tolist()
        seed = int(rng.choice([0, 90_000_000, 100_000_000]))
        flags = flag_anomalies(ticks(prices), last("BHP", seed) if seed else None, BPS)
        assert flags["anomaly"].to_list() == sequential(prices, seed or None)


def test_validate_quarantines_anomalies_with_the_reference_in_the_detail() -> None:
    result = validate(
        raw(price=[45_000_000, 56_250_000, 45_100_000, 45_200_000]),
        last_prices=pl.DataFrame({"exchange": ["ASX"], "symbol": ["BHP"], "last_price": [45_000_000]}),
    )
    assert result.quarantine["reasons"].to_list() == [[ANOMALY]]
    assert result.quarantine["kafka_offset"].to_list() == [1]
    assert result.quarantine["detail"][0] == "price 56.25 vs last valid 45.0 (25.0%)"
    assert result.ticks["kafka_offset"].to_list() == [0, 2, 3]
    assert result.received.frame().filter(~pl.col("valid"))["sequence"].to_list() == [2]


def test_interleaved_symbols_with_runs_of_spikes_equal_the_definition_per_symbol() -> None:
    rng = np.random.default_rng(9)
    for _ in range(30):
        n = int(rng.integers(2, 300))
        symbols = rng.choice(["BHP", "CBA", "CSL"], size=n).tolist()
        spikes = rng.random(n) < rng.uniform(0.0, 0.4)  # up to long runs of anomalies back to back
        prices = (rng.uniform(95, 105, n) * np.where(spikes, rng.choice([0.5, 1.5, 3.0], n), 1.0) * 1e6).astype(
            np.int64
        )
        flags = flag_anomalies(ticks(prices.tolist(), symbols), last("CBA", 100_000_000), BPS)
        for symbol in ("BHP", "CBA", "CSL"):
            mine = [i for i, s in enumerate(symbols) if s == symbol]
            if not mine:
                continue
            expected = sequential([int(prices[i]) for i in mine], 100_000_000 if symbol == "CBA" else None)
            assert [flags["anomaly"][i] for i in mine] == expected, symbol
