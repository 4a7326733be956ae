"""The frame the GE gate sees: sequence_step per (exchange, symbol, trading_date) in exchange-time order, computed
on integer codes; checked against a plain string sort."""

import numpy as np
import polars as pl
import pytest

from k2_assets.ticks.gate import ticks_frame
from k2_assets.ticks.ordering import grouped_time_order

OPEN_US = 1_795_561_200_000_000  # 2026-11-25 10:00 Sydney
DAY_US = 86_400_000_000


def _rows(n: int, seed: int, exchanges: tuple[str, ...] = ("ASX",)) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "exchange": rng.choice(exchanges, n),
            "symbol": rng.choice(["BHP", "CBA", "CSL", "WBC", "ANZ"], n),
            "sequence": rng.integers(1, 50, n),
            # two trading days, and ties on exchange_ts broken by sequence
            "exchange_ts": OPEN_US + rng.integers(0, 20, n) * 1_000_000 + rng.integers(0, 2, n) * DAY_US,
            "price": rng.integers(1, 100, n) * 1_000_000,
            "volume": rng.integers(0, 10, n),
            "side": rng.choice(["BUY", "SELL"], n),
        }
    )


def _expected_steps(rows: pl.DataFrame) -> pl.DataFrame:
    dated = rows.with_columns(
        pl.from_epoch("exchange_ts", time_unit="us")
        .dt.replace_time_zone("UTC")
        .dt.convert_time_zone("Australia/Sydney")
        .dt.date()
        .alias("trading_date")
    )
    ordered = dated.sort("exchange", "symbol", "trading_date", "exchange_ts", "sequence")
    return ordered.with_columns(
        (pl.col("sequence") - pl.col("sequence").shift(1)).over("exchange", "symbol", "trading_date").alias("step")
    )


@pytest.mark.parametrize("exchanges", [("ASX",), ("ASX", "CXA")])
def test_sequence_step_matches_a_string_sort(exchanges: tuple[str, ...]) -> None:
    rows = _rows(3_000, seed=len(exchanges), exchanges=exchanges)
    got = pl.from_pandas(ticks_frame(rows, frozenset()))
    expected = _expected_steps(rows)
    key = ["exchange", "symbol", "exchange_ts_us", "sequence"]
    got_steps = got.select(pl.col("exchange", "symbol").cast(pl.String), "exchange_ts_us", "sequence", "sequence_step")
    want = expected.select("exchange", "symbol", pl.col("exchange_ts").alias("exchange_ts_us"), "sequence", "step")
    # Ties on (exchange, symbol, ts, sequence) have equal steps either way; compare as sorted multisets.
    assert (
        got_steps.sort([*key, "sequence_step"], nulls_last=True)["sequence_step"].to_list()
        == want.sort([*key, "step"], nulls_last=True)["step"].to_list()
    )
    assert got.height == rows.height


def test_grouped_time_order_packs_and_falls_back_alike() -> None:
    rng = np.random.default_rng(3)
    frame = pl.DataFrame(
        {"g": rng.integers(0, 7, 5_000), "ts": rng.integers(0, 1_000, 5_000), "seq": rng.integers(0, 9, 5_000)}
    )
    packed = frame[grouped_time_order(frame, pl.col("g"), "ts", "seq")]
    assert packed.equals(frame.sort("g", "ts", "seq", maintain_order=True))
    huge = frame.with_columns(pl.col("ts") * 2**55)  # the span no longer fits next to the group code
    assert huge[grouped_time_order(huge, pl.col("g"), "ts", "seq")].equals(
        huge.sort("g", "ts", "seq", maintain_order=True)
    )
    with_null = frame.with_columns(pl.when(pl.col("ts") == 5).then(None).otherwise(pl.col("ts")).alias("ts"))
    ordered = with_null[grouped_time_order(with_null, pl.col("g"), "ts", "seq")]
    assert ordered.equals(with_null.sort("g", "ts", "seq", maintain_order=True, nulls_last=False))
