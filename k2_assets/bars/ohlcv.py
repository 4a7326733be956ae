"""OHLCV bars as a pure function of validated ticks (ARCHITECTURE.md decision 4). Integer space throughout:
prices are int64 millionths, timestamps int64 microseconds UTC, notional (Σ price·volume) Int128 millionths.

A bar is kept as a mergeable *state*: besides OHLCV it carries the exchange time and sequence of its opening and
closing tick and its exact notional, so bars of the same window computed from disjoint sets of ticks combine into
exactly the bar of the union (`combine`), and 1-minute bars roll up exactly into 5-minute, 1-hour and daily bars
(`rollup`). VWAP is always derived from notional and volume, never from rounded VWAPs.
"""

from __future__ import annotations

import polars as pl

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


def _check_input(ticks: pl.LazyFrame) -> tuple[int, int, int]:
    stats = ticks.select(
        pl.len().alias("n"),
        pl.col("sequence").min().alias("lo"),
        pl.col("sequence").max().alias("hi"),
        pl.any_horizontal(pl.col(c).is_null() for c in TICK_INPUT).sum().alias("nulls"),
        (pl.col("volume") < 0).sum().alias("negative"),
    ).collect()
    n, lo, hi, nulls, negative = stats.row(0)
    if nulls or negative:
        raise BarInputError(
            f"{nulls} tick(s) with a null key field and {negative} with negative volume reached the bar kernel; "
            "bars are built from validated ticks only (market_data.ticks), where validation quarantines such rows"
        )
    return int(n), int(lo if lo is not None else 0), int(hi if hi is not None else 0)


def _finish_1m(agg: pl.LazyFrame, tz: str) -> pl.LazyFrame:
    return _with_vwap(
        agg.with_columns(
            (pl.col("window_start") + MINUTE_US).alias("window_end"),
            trading_date(pl.col("window_start"), tz).alias("trading_date"),
        )
    )


def bars_1m(ticks: pl.DataFrame | pl.LazyFrame, tz: str) -> pl.DataFrame:
    """1-minute bar states: open = first tick by (exchange_ts, sequence), close = last, high, low, volume, trade
    count, notional and VWAP = Σ price·volume / Σ volume rounded half-up (null when no volume)."""
    lazy = ticks.lazy().select(TICK_INPUT)
    n, lo, hi = _check_input(lazy)
    if n == 0:
        return empty_states()
    window = (pl.col("exchange_ts") // MINUTE_US * MINUTE_US).alias("window_start")
    if lo < 0 or hi >= _SEQ_LIMIT:
        return _bars_1m_general(lazy.with_columns(window), tz)
    order = ((pl.col("exchange_ts") - pl.col("window_start")) * _SEQ_LIMIT + pl.col("sequence")).alias("_k")
    agg = (
        lazy.with_columns(window)
        .with_columns(order)
        .group_by(BAR_KEY)
        .agg(
            pl.col("_k").min().alias("_kmin"),
            pl.col("_k").max().alias("_kmax"),
            pl.col("price").min_by("_k").alias("open"),
            pl.col("price").max_by("_k").alias("close"),
            pl.col("price").max().alias("high"),
            pl.col("price").min().alias("low"),
            pl.col("volume").sum().alias("volume"),
            pl.len().cast(pl.Int64).alias("trade_count"),
            # int64 is exact here: each minute is checked below not to be able to overflow, else recomputed.
            (pl.col("price") * pl.col("volume")).sum().alias("_notional64"),
        )
        .collect(engine="streaming")
    )
    bound = pl.max_horizontal(pl.col("high").abs(), pl.col("low").abs()).cast(pl.Float64) * pl.col("volume")
    if agg.select((bound >= float(_INT64_MAX) / 2).any()).item():
        # A minute whose notional may not fit int64 millionths (> ~4.6 trillion): redo the notional in 128 bits.
        exact = (
            lazy.with_columns(window)
            .group_by(BAR_KEY)
            .agg((pl.col("price").cast(pl.Int128) * pl.col("volume")).sum().alias("notional"))
        )
        agg = agg.lazy().join(exact, on=BAR_KEY).collect()
    else:
        agg = agg.with_columns(pl.col("_notional64").cast(pl.Int128).alias("notional"))
    states = agg.lazy().with_columns(
        (pl.col("window_start") + pl.col("_kmin") // _SEQ_LIMIT).alias("first_ts"),
        (pl.col("_kmin") % _SEQ_LIMIT).alias("first_sequence"),
        (pl.col("window_start") + pl.col("_kmax") // _SEQ_LIMIT).alias("last_ts"),
        (pl.col("_kmax") % _SEQ_LIMIT).alias("last_sequence"),
    )
    return _finish_1m(states, tz).select(STATE_COLUMNS).sort(BAR_KEY).collect()


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
    schema = {
        "exchange": pl.String,
        "symbol": pl.String,
        "window_start": pl.Int64,
        "trading_date": pl.Date,
        "window_end": pl.Int64,
        "open": pl.Int64,
        "high": pl.Int64,
        "low": pl.Int64,
        "close": pl.Int64,
        "volume": pl.Int64,
        "trade_count": pl.Int64,
        "notional": pl.Int128,
        "vwap": pl.Int64,
        "first_sequence": pl.Int64,
        "last_sequence": pl.Int64,
        "first_ts": pl.Int64,
        "last_ts": pl.Int64,
    }
    return pl.DataFrame(schema=schema).select(STATE_COLUMNS)


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
