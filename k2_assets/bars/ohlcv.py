"""OHLCV bars as a pure function of validated ticks (ARCHITECTURE.md decision 4). Integer space throughout:
prices are int64 millionths, timestamps int64 microseconds UTC, notional (Σ price·volume) Int128 millionths.

A bar is kept as a mergeable *state*: besides OHLCV it carries the exchange time and sequence of its opening and
closing tick and its exact notional, so bars of the same window computed from disjoint sets of ticks combine into
exactly the bar of the union (`combine`), and 1-minute bars roll up exactly into 5-minute, 1-hour and daily bars
(`rollup`). VWAP is always derived from notional and volume, never from rounded VWAPs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

from k2_resources.errors import BarInputError

MINUTE_US = 60_000_000
BAR_KEY = ["exchange", "symbol", "window_start"]
INTERVALS = ("1m", "5m", "1h", "1d")
# What a quant sees of a bar; a change in any of them is a restatement.
VALUE_COLUMNS = ["open", "high", "low", "close", "volume", "trade_count", "vwap", "first_sequence", "last_sequence"]
STATE_COLUMNS = [
    *BAR_KEY,
    "trading_date",
    "window_end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trade_count",
    "notional",
    "vwap",
    "first_sequence",
    "last_sequence",
    "first_ts",
    "last_ts",
]
TICK_INPUT = ["exchange", "symbol", "sequence", "exchange_ts", "price", "volume"]

# The fast 1-minute kernel orders ticks inside a minute by one int64: (µs into the minute) << 37 | sequence.
# 60e6 << 37 < 2^63, so sequences in [0, 2^37) fit; anything else takes the general (slower) path.
_SEQ_BITS = 37
_SEQ_LIMIT = 1 << _SEQ_BITS
_INT64_MAX = (1 << 63) - 1
# Rows per block where the kernel checks ticks with numpy: cache-sized temporaries, never a fresh full-size array
# (on this VM a fresh 50M-row array costs more in page faults than the arithmetic on it).
_BLOCK = 1 << 20


def trading_date(ts_us: pl.Expr, tz: str) -> pl.Expr:
    """The exchange-local calendar date of a UTC microsecond timestamp."""
    return pl.from_epoch(ts_us, time_unit="us").dt.replace_time_zone("UTC").dt.convert_time_zone(tz).dt.date()


def _local_midnight_us(date: pl.Expr, tz: str) -> pl.Expr:
    return date.cast(pl.Datetime("us")).dt.replace_time_zone(tz).dt.convert_time_zone("UTC").dt.epoch("us")


def window_bounds(ts_us: pl.Expr, interval: str, tz: str) -> tuple[pl.Expr, pl.Expr]:
    """(window_start, window_end) in UTC µs of the `interval` window holding `ts_us`. Minutes are aligned in UTC
    (every real UTC offset is a multiple of 5 minutes); hours and days in the exchange's time zone, so a daily bar
    is the exchange's trading day (local midnight to local midnight), not a UTC day."""
    if interval in ("1m", "5m"):
        size = MINUTE_US * (1 if interval == "1m" else 5)
        start = ts_us // size * size
        return start, start + size
    if interval == "1h":
        local = pl.from_epoch(ts_us, time_unit="us").dt.replace_time_zone("UTC").dt.convert_time_zone(tz)
        start = local.dt.truncate("1h").dt.convert_time_zone("UTC").dt.epoch("us")
        return start, start + 60 * MINUTE_US
    if interval == "1d":
        day = trading_date(ts_us, tz)
        return _local_midnight_us(day, tz), _local_midnight_us(day.dt.offset_by("1d"), tz)
    raise BarInputError(f"unknown bar interval {interval!r}; use one of {', '.join(INTERVALS)}")


def _with_vwap(frame: pl.LazyFrame) -> pl.LazyFrame:
    """VWAP = notional / volume, rounded half-up to the price scale, exactly (the same integer formula as the
    oracle); null when the window traded no volume."""
    return frame.with_columns(
        pl.when(pl.col("volume") > 0)
        .then(((pl.col("notional") * 2 + pl.col("volume")) // (pl.col("volume") * 2)).cast(pl.Int64))
        .otherwise(None)
        .alias("vwap")
    )


class _InputStats(NamedTuple):
    n: int
    seq_lo: int
    seq_hi: int
    ts_lo: int
    ts_hi: int


def _check_input(frame: pl.DataFrame) -> _InputStats:
    """Refuse unvalidated ticks and measure what the fast paths need, with O(1) null counts and plain reductions
    (no per-row expression: this runs over every tick of a day)."""
    null_cells = sum(frame[c].null_count() for c in TICK_INPUT)
    seq_lo, seq_hi, ts_lo, ts_hi, vol_lo = frame.select(
        pl.col("sequence").min().alias("seq_lo"),
        pl.col("sequence").max().alias("seq_hi"),
        pl.col("exchange_ts").min().alias("ts_lo"),
        pl.col("exchange_ts").max().alias("ts_hi"),
        pl.col("volume").min().alias("vol_lo"),
    ).row(0)
    if null_cells or (vol_lo is not None and vol_lo < 0):
        nulls, negative = frame.select(
            pl.any_horizontal(pl.col(c).is_null() for c in TICK_INPUT).sum().alias("nulls"),
            (pl.col("volume") < 0).sum().alias("negative"),
        ).row(0)
        raise BarInputError(
            f"{nulls} tick(s) with a null key field and {negative} with negative volume reached the bar kernel; "
            "bars are built from validated ticks only (market_data.ticks), where validation quarantines such rows"
        )
    if frame.height == 0:
        return _InputStats(0, 0, 0, 0, 0)
    return _InputStats(frame.height, int(seq_lo), int(seq_hi), int(ts_lo), int(ts_hi))


def _finish_1m(agg: pl.LazyFrame, tz: str) -> pl.LazyFrame:
    """Per bar (not per tick): window_end, the exchange trading date of the window, VWAP."""
    return _with_vwap(
        agg.with_columns(
            (pl.col("window_start") + MINUTE_US).alias("window_end"),
            trading_date(pl.col("window_start"), tz).alias("trading_date"),
        )
    )


def bars_1m(ticks: pl.DataFrame | pl.LazyFrame, tz: str) -> pl.DataFrame:
    """1-minute bar states: open = first tick by (exchange_ts, sequence), close = last, high, low, volume, trade
    count, notional and VWAP = Σ price·volume / Σ volume rounded half-up (null when no volume).

    Three exact paths, fastest first: one uint64 group key packed from the symbol's bytes and the minute, for a
    frame of one exchange with short symbols (`_bars_1m_packed`); a string-keyed group on (exchange, symbol,
    minute); and, for sequences outside [0, 2^37), a sort-based general path. The first two take open/close from
    each window's first/last row when the ticks are already in (exchange_ts, sequence) order (`in_time_order`), else
    from one int64 order key per tick. All give identical bars (tests/unit/test_bars_kernel_paths.py)."""
    frame = (ticks.collect() if isinstance(ticks, pl.LazyFrame) else ticks).select(TICK_INPUT)
    stats = _check_input(frame)
    if stats.n == 0:
        return empty_states()
    if stats.seq_lo < 0 or stats.seq_hi >= _SEQ_LIMIT:
        return _bars_1m_general(frame.lazy().with_columns(_minute_start()), tz)
    packed = _bars_1m_packed(frame, stats, tz)
    if packed is not None:
        return packed
    return _bars_1m_by_strings(frame, tz)


def _minute_start() -> pl.Expr:
    return (pl.col("exchange_ts") // MINUTE_US * MINUTE_US).alias("window_start")


def _order_key(minute_start: pl.Expr) -> pl.Expr:
    """(µs into the minute) << 37 | sequence: the (exchange_ts, sequence) order inside one minute as one int64."""
    return ((pl.col("exchange_ts") - minute_start) * _SEQ_LIMIT + pl.col("sequence")).alias("_k")


_VALUE_AGGS = [
    pl.col("price").max().alias("high"),
    pl.col("price").min().alias("low"),
    pl.col("volume").sum().alias("volume"),
    pl.len().cast(pl.Int64).alias("trade_count"),
    # int64 is exact here: each minute is checked not to be able to overflow (`_notional`), else recomputed.
    (pl.col("price") * pl.col("volume")).sum().alias("_notional64"),
]
_ORDER_AGGS = [
    pl.col("_k").min().alias("_kmin"),
    pl.col("_k").max().alias("_kmax"),
    pl.col("price").min_by("_k").alias("open"),
    pl.col("price").max_by("_k").alias("close"),
]
_ROW_AGGS = [pl.col("_row").min().alias("_first"), pl.col("_row").max().alias("_last")]


def in_time_order(frame: pl.DataFrame, block: int = _BLOCK) -> bool:
    """Whether the rows are sorted by (exchange_ts, sequence): then a window's first row is its opening tick and its
    last row its closing tick (sequences are unique per symbol, so there are no ties inside a window). Checked a
    block at a time on views of the columns (no full-size copy; unsorted input is usually refused in the first
    block)."""
    ts_col, seq_col = frame["exchange_ts"], frame["sequence"]
    for start in range(0, frame.height - 1, block):
        ts = ts_col.slice(start, block + 1).to_numpy()
        before, after = ts[:-1], ts[1:]
        if not (after >= before).all():
            return False
        tie = after == before
        if tie.any():
            seq = seq_col.slice(start, block + 1).to_numpy()
            if not (seq[1:][tie] >= seq[:-1][tie]).all():
                return False
    return True


def _aggregate(lazy: pl.LazyFrame, keys: list[str], minute_start: pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
    """One streaming group-by over every tick. Ticks in time order: the open/close ticks are the first/last row of
    each group (two cheap aggregations, then a gather per bar); otherwise by one int64 order key per tick."""
    if not in_time_order(frame):
        grouped = lazy.with_columns(_order_key(minute_start)).group_by(keys).agg(_ORDER_AGGS + _VALUE_AGGS)
        return grouped.collect(engine="streaming")
    agg = lazy.with_row_index("_row").group_by(keys).agg(_ROW_AGGS + _VALUE_AGGS).collect(engine="streaming")
    first, last = agg["_first"], agg["_last"]
    return agg.with_columns(
        frame["price"].gather(first).alias("open"),
        frame["price"].gather(last).alias("close"),
        frame["exchange_ts"].gather(first).alias("first_ts"),
        frame["sequence"].gather(first).alias("first_sequence"),
        frame["exchange_ts"].gather(last).alias("last_ts"),
        frame["sequence"].gather(last).alias("last_sequence"),
    ).drop("_first", "_last")


def _states_from_agg(agg: pl.DataFrame, frame: pl.DataFrame, tz: str) -> pl.DataFrame:
    """Aggregates keyed by (exchange, symbol, window_start) -> sorted bar states."""
    agg = _notional(agg, frame)
    states = agg.lazy()
    if "_kmin" in agg.columns:
        states = states.with_columns(
            (pl.col("window_start") + pl.col("_kmin") // _SEQ_LIMIT).alias("first_ts"),
            (pl.col("_kmin") % _SEQ_LIMIT).alias("first_sequence"),
            (pl.col("window_start") + pl.col("_kmax") // _SEQ_LIMIT).alias("last_ts"),
            (pl.col("_kmax") % _SEQ_LIMIT).alias("last_sequence"),
        )
    return _finish_1m(states, tz).select(STATE_COLUMNS).sort(BAR_KEY).collect()


def _notional(agg: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
    bound = pl.max_horizontal(pl.col("high").abs(), pl.col("low").abs()).cast(pl.Float64) * pl.col("volume")
    if not agg.select((bound >= float(_INT64_MAX) / 2).any()).item():
        return agg.with_columns(pl.col("_notional64").cast(pl.Int128).alias("notional"))
    # A minute whose notional may not fit int64 millionths (> ~4.6 trillion): redo the notional in 128 bits.
    exact = (
        frame.lazy()
        .with_columns(_minute_start())
        .group_by(BAR_KEY)
        .agg((pl.col("price").cast(pl.Int128) * pl.col("volume")).sum().alias("notional"))
    )
    return agg.lazy().join(exact, on=BAR_KEY).collect()


def _bars_1m_by_strings(frame: pl.DataFrame, tz: str) -> pl.DataFrame:
    """Group on (exchange, symbol, minute) as given: any strings."""
    agg = _aggregate(frame.lazy().with_columns(_minute_start()), BAR_KEY, pl.col("window_start"), frame)
    return _states_from_agg(agg, frame, tz)


# A polars string is an Arrow string view: 16 bytes, the first 4 its length; a string of <= 12 bytes is stored
# inline in the other 12, zero-padded. Read as two little-endian words: lo = length | bytes 0-3 << 32, hi = bytes
# 4-11. With length < 16, bits 4..31 of lo are zero: they take the minute (relative to the frame's first) and hi,
# when hi is short enough (symbols of up to ~6 bytes), which gives one exact uint64 key per tick for (symbol,
# minute) without hashing a string. Grouping on it is a single-integer hash group (the cheapest polars has).
_LEN_BITS = 4
_FREE_BITS = 28  # bits 4..31 of lo


def _symbol_words(symbol: pl.Series) -> np.ndarray | None:
    """The views of the symbols as 2n uint64 words (lo, hi, lo, hi, ...), a view of polars' own buffer (no copy: a
    fresh 50M-row array costs more in page faults than the arithmetic), or None when some symbol is longer than
    12 bytes (its view holds a prefix and a buffer reference, not the whole string)."""
    arr = symbol.to_arrow(compat_level=pl.CompatLevel.newest())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_string_view(arr.type):
        return None
    buffers = arr.buffers()
    words = np.frombuffer(buffers[1], dtype="<u8", count=2 * (arr.offset + len(arr)))[2 * arr.offset :]
    if len(buffers) > 2:  # some view may point into a data buffer: look at every length, a block at a time
        lengths = words[0::2]
        for start in range(0, len(lengths), _BLOCK):
            if int((lengths[start : start + _BLOCK] & np.uint64(0xFFFFFFFF)).max()) > 12:
                return None
    return words


def _bars_1m_packed(frame: pl.DataFrame, stats: _InputStats, tz: str) -> pl.DataFrame | None:
    """The one-integer-key path; None when it does not apply (several exchanges, long symbols, a span of more than
    2^12 minutes for 6-byte symbols ...). Exact: the key is a bijection of (symbol bytes, length, minute)."""
    if not frame.select((pl.col("exchange") == pl.col("exchange").first()).all()).item():
        return None
    minute_lo = stats.ts_lo // MINUTE_US
    minute_bits = max(1, (stats.ts_hi // MINUTE_US - minute_lo).bit_length())
    hi_bits = _FREE_BITS - minute_bits
    words = _symbol_words(frame["symbol"])
    if words is None or hi_bits < 0 or int(words[1::2].max()) >> hi_bits:
        return None
    views = pl.Series("_view", words).reshape((frame.height, 2))  # zero-copy: Array(UInt64, 2) per tick
    minute = pl.col("exchange_ts") // MINUTE_US
    # lo + hi << (4 + minute_bits), as one dot product per view (cheaper than taking the two words apart).
    weights = pl.Series([[1, 1 << (_LEN_BITS + minute_bits)]], dtype=pl.Array(pl.UInt64, 2))
    key = (pl.col("_view") * pl.lit(weights).first()).arr.sum() + (minute - minute_lo).cast(pl.UInt64) * (
        1 << _LEN_BITS
    )
    lazy = frame.select("sequence", "exchange_ts", "price", "volume").with_columns(views).lazy()
    agg = _aggregate(lazy.with_columns(key.alias("_key")).drop("_view"), ["_key"], minute * MINUTE_US, frame)
    labels = _unpack_keys(agg["_key"].to_numpy(), minute_lo, minute_bits, hi_bits)
    agg = agg.with_columns(
        pl.lit(frame["exchange"][0], pl.String).alias("exchange"),
        labels["symbol"],
        labels["window_start"],
    ).drop("_key")
    if agg.select(pl.struct("symbol", "window_start").is_duplicated().any()).item():
        return None  # equal symbols with different view padding (not Arrow-conformant): use the string path
    return _states_from_agg(agg, frame, tz)


def _unpack_keys(keys: np.ndarray, minute_lo: int, minute_bits: int, hi_bits: int) -> pl.DataFrame:
    """Inverse of the packed key, per bar: the symbol (rebuilt as string views) and the window start."""
    keys = keys.astype(np.uint64)
    length = keys & np.uint64((1 << _LEN_BITS) - 1)
    minute = (keys >> np.uint64(_LEN_BITS)) & np.uint64((1 << minute_bits) - 1)
    hi = (keys >> np.uint64(_LEN_BITS + minute_bits)) & np.uint64((1 << hi_bits) - 1)
    views = np.empty(2 * len(keys), dtype="<u8")
    views[0::2] = (keys & np.uint64(0xFFFFFFFF00000000)) | length
    views[1::2] = hi
    symbols = pa.Array.from_buffers(pa.string_view(), len(keys), [None, pa.py_buffer(views)])
    symbol = pl.Series("symbol", symbols, dtype=pl.String)
    start = (minute.astype(np.int64) + minute_lo) * MINUTE_US
    return pl.DataFrame([symbol, pl.Series("window_start", start, dtype=pl.Int64)])


def _bars_1m_general(ticks: pl.LazyFrame, tz: str) -> pl.DataFrame:
    """Any int64 sequence (negative or huge): order by the pair, slower."""
    order = ["exchange_ts", "sequence"]
    agg = ticks.group_by(BAR_KEY).agg(
        pl.col("price").sort_by(order).first().alias("open"),
        pl.col("price").max().alias("high"),
        pl.col("price").min().alias("low"),
        pl.col("price").sort_by(order).last().alias("close"),
        pl.col("volume").sum().alias("volume"),
        pl.len().cast(pl.Int64).alias("trade_count"),
        (pl.col("price").cast(pl.Int128) * pl.col("volume")).sum().alias("notional"),
        pl.col("sequence").sort_by(order).first().alias("first_sequence"),
        pl.col("sequence").sort_by(order).last().alias("last_sequence"),
        pl.col("exchange_ts").min().alias("first_ts"),
        pl.col("exchange_ts").max().alias("last_ts"),
    )
    return _finish_1m(agg, tz).select(STATE_COLUMNS).sort(BAR_KEY).collect()


def empty_states() -> pl.DataFrame:
    types = {"exchange": pl.String, "symbol": pl.String, "trading_date": pl.Date, "notional": pl.Int128}
    return pl.DataFrame(schema={c: types.get(c, pl.Int64) for c in STATE_COLUMNS})


def combine(states: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Merge bar states that share (exchange, symbol, window_start) into one state each, exactly: the open is the
    open of the state whose opening tick comes first by (exchange_ts, sequence), the close likewise last; high,
    low, volume, trade count and notional combine; VWAP is recomputed from the merged notional."""
    # Rank every state once by its opening tick and once by its closing tick; per window the open/close is then a
    # plain min_by/max_by (a fast aggregation) instead of a sort inside each group.
    ranked = (
        states.lazy()
        .sort("first_ts", "first_sequence")
        .with_row_index("_by_first")
        .sort("last_ts", "last_sequence")
        .with_row_index("_by_last")
    )
    merged = ranked.group_by(BAR_KEY).agg(
        pl.col("trading_date").first(),
        pl.col("window_end").first(),
        pl.col("open").min_by("_by_first"),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").max_by("_by_last"),
        pl.col("volume").sum(),
        pl.col("trade_count").sum(),
        pl.col("notional").cast(pl.Int128).sum(),
        pl.col("first_sequence").min_by("_by_first"),
        pl.col("last_sequence").max_by("_by_last"),
        pl.col("first_ts").min(),
        pl.col("last_ts").max(),
    )
    return _with_vwap(merged).select(STATE_COLUMNS).sort(BAR_KEY).collect()


def rollup(states_1m: pl.DataFrame | pl.LazyFrame, interval: str, tz: str) -> pl.DataFrame:
    """Bars of `interval` from 1-minute bar states, exact (no tick is read again)."""
    if interval == "1m":
        return combine(states_1m)
    start, end = window_bounds(pl.col("window_start"), interval, tz)
    relabelled = states_1m.lazy().with_columns(start.alias("window_start"), end.alias("window_end"))
    return combine(relabelled)
