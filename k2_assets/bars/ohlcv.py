"""OHLCV bars as a pure function of validated ticks (ARCHITECTURE.md decision 4). Integer space throughout:
prices are int64 millionths, timestamps int64 microseconds UTC."""

from __future__ import annotations

import polars as pl

MINUTE_US = 60_000_000
BAR_KEY = ["exchange", "symbol", "window_start"]


def trading_date(ts_us: pl.Expr, tz: str) -> pl.Expr:
    """The exchange-local calendar date of a UTC microsecond timestamp."""
    return pl.from_epoch(ts_us, time_unit="us").dt.replace_time_zone("UTC").dt.convert_time_zone(tz).dt.date()


def bars_1m(ticks: pl.DataFrame | pl.LazyFrame, tz: str) -> pl.DataFrame:
    """1-minute bars: open = first tick by (exchange_ts, sequence), close = last, high, low, volume, trade count,
    VWAP = Σ price·volume / Σ volume (rounded half-up to the price scale, computed exactly; null when the minute
    traded no volume)."""
    order = ["exchange_ts", "sequence"]
    return (
        ticks.lazy()
        .with_columns((pl.col("exchange_ts") // MINUTE_US * MINUTE_US).alias("window_start"))
        .group_by(BAR_KEY)
        .agg(
            pl.col("price").sort_by(order).first().alias("open"),
            pl.col("price").max().alias("high"),
            pl.col("price").min().alias("low"),
            pl.col("price").sort_by(order).last().alias("close"),
            pl.col("volume").sum().alias("volume"),
            pl.len().cast(pl.Int64).alias("trade_count"),
            # Exact notional in 128-bit integers: a day of a liquid symbol overflows int64 millionths.
            (pl.col("price").cast(pl.Int128) * pl.col("volume")).sum().alias("_notional"),
            pl.col("sequence").sort_by(order).first().alias("first_sequence"),
            pl.col("sequence").sort_by(order).last().alias("last_sequence"),
        )
        .with_columns(
            pl.when(pl.col("volume") > 0)
            # Round half away from zero, exactly (prices are positive after validation).
            .then(((pl.col("_notional") * 2 + pl.col("volume")) // (pl.col("volume") * 2)).cast(pl.Int64))
            .otherwise(None)
            .alias("vwap"),
            trading_date(pl.col("window_start"), tz).alias("trading_date"),
        )
        .drop("_notional")
        .sort(BAR_KEY)
        .collect()
    )
