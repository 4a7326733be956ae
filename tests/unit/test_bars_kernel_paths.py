"""The 1-minute bar kernel's fast paths give exactly the bars of its general path (and of the DuckDB oracle).

`bars_1m` packs (symbol bytes, length, minute) into one uint64 group key when the frame has one exchange and short
symbols; otherwise it groups on the strings; sequences outside [0, 2^37) take the sort-based general path. Ticks
already in (exchange_ts, sequence) order take their open/close from each window's first/last row, others by an
order key. Each path is called directly here, on symbols chosen to hit the packing's edges (empty, NUL bytes,
multi-byte UTF-8, 4/5/6/7/12/13 bytes), in time order and shuffled, so a wrong key cannot hide behind a fallback.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k2_assets.bars import ohlcv
from k2_assets.bars.ohlcv import TICK_INPUT, bars_1m
from tests.unit.bars_support import T0, mismatches, oracle

TZ = "Australia/Sydney"
SHORT = [
    "",
    "A",
    "ABCDé",
    "\x00",
    "A\x00",
    "BHP",
    "CBA",
    "ABCD",
    "ABCD\x00",
    "S0001",
    "S0002",
    "é",
    "éé",
    "XJOAI",
    "ABCDEF",
]
LONG = ["ABCDEFG", "ABCDEFGHIJKL", "ABCDEFGHIJKLM", "a much longer symbol name"]


def ticks_of(
    seed: int,
    n: int,
    symbols: list[str],
    *,
    span_min: int = 130,
    exchanges: tuple[str, ...] = ("ASX",),
    in_order: bool = False,
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame(
        {
            "exchange": rng.choice(list(exchanges), n),
            "symbol": pl.Series(rng.choice(np.array(symbols, dtype=object), n), dtype=pl.String),
            "sequence": rng.permutation(n).astype(np.int64) + 1,
            "exchange_ts": T0 + rng.integers(0, span_min * 60, n) * 1_000_000 + rng.integers(0, 3, n),
            "price": (rng.integers(1, 1_000, n) * 10_000).astype(np.int64),
            "volume": rng.integers(0, 1_000, n).astype(np.int64),
        }
    )
    return frame.sort("exchange_ts", "sequence") if in_order else frame


def general(ticks: pl.DataFrame) -> pl.DataFrame:
    return ohlcv._bars_1m_general(ticks.lazy().with_columns(ohlcv._minute_start()), TZ)


def packed(ticks: pl.DataFrame) -> pl.DataFrame | None:
    frame = ticks.select(TICK_INPUT)
    return ohlcv._bars_1m_packed(frame, ohlcv._check_input(frame), TZ)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    n=st.integers(1, 300),
    symbols=st.lists(st.sampled_from(SHORT), min_size=1, max_size=6, unique=True),
    in_order=st.booleans(),
)
def test_packed_key_path_equals_the_string_and_general_paths(
    seed: int, n: int, symbols: list[str], in_order: bool
) -> None:
    ticks = ticks_of(seed, n, symbols, in_order=in_order)
    assert ohlcv.in_time_order(ticks) or not in_order
    fast = packed(ticks)
    assert fast is not None, "short symbols on one exchange must take the packed path"
    assert fast.equals(ohlcv._bars_1m_by_strings(ticks.select(TICK_INPUT), TZ))
    assert fast.equals(general(ticks))
    assert fast.equals(bars_1m(ticks, TZ))
    assert mismatches(fast, oracle(ticks, "1m")).is_empty()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    n=st.integers(1, 300),
    symbols=st.lists(st.sampled_from(SHORT + LONG), min_size=1, max_size=6, unique=True),
    exchanges=st.sampled_from([("ASX",), ("ASX", "CHIA")]),
    span_min=st.sampled_from([1, 130, 1_440, 5_000]),
    in_order=st.booleans(),
)
def test_every_path_agrees_whatever_the_symbols_exchanges_and_span(
    seed: int, n: int, symbols: list[str], exchanges: tuple[str, ...], span_min: int, in_order: bool
) -> None:
    ticks = ticks_of(seed, n, symbols, span_min=span_min, exchanges=exchanges, in_order=in_order)
    expected = general(ticks)
    assert bars_1m(ticks, TZ).equals(expected)
    assert ohlcv._bars_1m_by_strings(ticks.select(TICK_INPUT), TZ).equals(expected)
    fast = packed(ticks)
    if fast is not None:
        assert fast.equals(expected)
    assert mismatches(expected, oracle(ticks, "1m")).is_empty()


def test_packed_path_declines_what_it_cannot_key_exactly() -> None:
    mixed = ticks_of(1, 50, ["BHP", "ABCDEFGHIJKLM"])
    assert packed(mixed) is None  # a 13-byte symbol is not inline
    short = mixed.filter(pl.col("symbol") == "BHP")  # its views may still carry the long one's data buffer
    assert packed(short) is not None and packed(short).equals(general(short))  # type: ignore[union-attr]
    assert packed(ticks_of(1, 50, ["BHP", "CBA"], exchanges=("ASX", "CHIA"))) is None  # two exchanges
    # Bytes 4.. of the symbol and the minute share 28 bits: "é" (0xC3 0xA9) in bytes 4-5 needs 16, a 5,000-minute
    # span 13; plain ASCII bytes 4-5 need 15, so they still fit.
    assert packed(ticks_of(1, 50, ["ABCDé"], span_min=5_000)) is None
    assert packed(ticks_of(1, 50, ["ABCDEF"], span_min=5_000)) is not None
    assert packed(ticks_of(1, 50, ["BHP"], span_min=5_000)) is not None  # 3 bytes leave room for the minutes


@pytest.mark.parametrize("layout", ["chunked", "sliced", "lazy"])
def test_packed_path_reads_chunked_sliced_and_lazy_frames(layout: str) -> None:
    ticks = ticks_of(7, 2_000, ["S0001", "BHP", "A\x00", ""])
    expected = general(ticks)
    if layout == "chunked":
        frame: pl.DataFrame | pl.LazyFrame = pl.concat([ticks[:700], ticks[700:1500], ticks[1500:]], rechunk=False)
        assert isinstance(frame, pl.DataFrame) and frame["symbol"].n_chunks() == 3
    elif layout == "sliced":
        frame = pl.concat([ticks.head(5), ticks], rechunk=True).slice(5)
    else:
        frame = ticks.lazy()
    assert bars_1m(frame, TZ).equals(expected)
    assert packed(frame.collect() if isinstance(frame, pl.LazyFrame) else frame) is not None


def test_time_order_is_exchange_ts_then_sequence() -> None:
    frame = pl.DataFrame({"exchange_ts": [1, 1, 2, 2, 3], "sequence": [5, 7, 1, 9, 2]})
    for block in (1, 2, 3, 1 << 20):  # a step that straddles two blocks is checked too
        assert ohlcv.in_time_order(frame, block)
        assert not ohlcv.in_time_order(frame.with_columns(pl.Series("sequence", [7, 5, 1, 9, 2])), block)  # tie
        assert not ohlcv.in_time_order(frame.with_columns(pl.Series("sequence", [5, 7, 9, 1, 2])), block)  # tie
        assert not ohlcv.in_time_order(frame.with_columns(pl.Series("exchange_ts", [1, 1, 3, 2, 3])), block)
    chunked = pl.concat([frame.head(3), frame.tail(2)], rechunk=False)
    assert chunked["exchange_ts"].n_chunks() == 2 and ohlcv.in_time_order(chunked, 2)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), n=st.integers(2, 400))
def test_the_same_ticks_in_time_order_or_shuffled_give_the_same_bars(seed: int, n: int) -> None:
    ordered = ticks_of(seed, n, ["BHP", "CBA", "S0001", "a much longer symbol name"], in_order=True)
    shuffled = ordered.sample(fraction=1.0, shuffle=True, seed=seed)
    for ticks in (ordered, ordered.filter(pl.col("symbol").str.len_bytes() < 8)):
        expected = general(ticks)
        assert bars_1m(ticks, TZ).equals(expected)
        assert bars_1m(ticks.sample(fraction=1.0, shuffle=True, seed=seed), TZ).equals(expected)
    assert bars_1m(shuffled, TZ).equals(bars_1m(ordered, TZ))
