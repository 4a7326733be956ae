"""The 1-minute bar kernel's fast paths give exactly the bars of its general path (and of the DuckDB oracle).

`bars_1m` packs (symbol bytes, length, minute) into one uint64 group key when the frame has one exchange and short
symbols; otherwise it groups on the strings; sequences outside [0, 2^37) take the sort-based general path. Each
path is called directly here, on symbols chosen to hit the packing's edges (empty, NUL bytes, multi-byte UTF-8,
4/5/6/7/12/13 bytes), so a wrong key cannot hide behind a fallback.
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


def ticks_of(seed: int, n: int, symbols: list[str], *, span_min: int = 130, exchanges: tuple[str, ...] = ("ASX",)):
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "exchange": rng.choice(list(exchanges), n),
            "symbol": pl.Series(rng.choice(np.array(symbols, dtype=object), n), dtype=pl.String),
            "sequence": rng.permutation(n).astype(np.int64) + 1,
            "exchange_ts": T0 + rng.integers(0, span_min * 60, n) * 1_000_000 + rng.integers(0, 3, n),
            "price": (rng.integers(1, 1_000, n) * 10_000).astype(np.int64),
            "volume": rng.integers(0, 1_000, n).astype(np.int64),
        }
    )


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
)
def test_packed_key_path_equals_the_string_and_general_paths(seed: int, n: int, symbols: list[str]) -> None:
    ticks = ticks_of(seed, n, symbols)
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
)
def test_every_path_agrees_whatever_the_symbols_exchanges_and_span(
    seed: int, n: int, symbols: list[str], exchanges: tuple[str, ...], span_min: int
) -> None:
    ticks = ticks_of(seed, n, symbols, span_min=span_min, exchanges=exchanges)
    expected = general(ticks)
    assert bars_1m(ticks, TZ).equals(expected)
    assert ohlcv._bars_1m_by_strings(ticks.select(TICK_INPUT), TZ).equals(expected)
    fast = packed(ticks)
    if fast is not None:
        assert fast.equals(expected)
    assert mismatches(expected, oracle(ticks, "1m")).is_empty()


def test_packed_path_declines_what_it_cannot_key_exactly() -> None:
    assert packed(ticks_of(1, 50, ["BHP", "ABCDEFGHIJKLM"])) is None  # a 13-byte symbol is not inline
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
