"""The exchange session calendar (exchange_calendars, e.g. XASX) as vectorised polars: which ticks fall outside a
trading session. A bar only ever holds ticks of a session; validation quarantines the others with reason
`outside_session` (k2_assets/ticks/validate.py calls `outside_session`)."""

from __future__ import annotations

import datetime as dt
from functools import cache
from typing import Any

import polars as pl

from k2_assets.bars.ohlcv import trading_date
from k2_resources.exchanges import EXCHANGES, calendar

OUTSIDE_SESSION = "outside_session"


def _us(series: Any) -> pl.Series:
    """pandas UTC timestamps (NaT allowed) -> polars int64 µs."""
    return pl.Series(series).dt.convert_time_zone("UTC").dt.epoch("us")


@cache
def schedule(code: str) -> pl.DataFrame:
    """Every session the calendar knows: trading_date, open/close (and break) in UTC µs. Cached per exchange."""
    sched = calendar(code).schedule
    return pl.DataFrame(
        {
            "trading_date": pl.Series([d.date() for d in sched.index], dtype=pl.Date),
            "open_us": _us(sched["open"]),
            "close_us": _us(sched["close"]),
            "break_start_us": _us(sched["break_start"]),
            "break_end_us": _us(sched["break_end"]),
        }
    )


def session_of(code: str, day: dt.date) -> tuple[int, int] | None:
    """(open, close) in UTC µs of the session on `day`, or None when the exchange does not trade that day."""
    rows = schedule(code.upper()).filter(pl.col("trading_date") == day)
    return None if rows.is_empty() else (int(rows["open_us"][0]), int(rows["close_us"][0]))


def outside_placed_session(ts: str) -> pl.Expr:
    """Over rows joined to `schedule()` on their trading date: the timestamp column `ts` is set and not inside that
    session (before the open, at or after the close, in the break, or no session that day)."""
    at = pl.col(ts)
    in_break = pl.col("break_start_us").is_not_null() & (at >= pl.col("break_start_us")) & (at < pl.col("break_end_us"))
    inside = (at >= pl.col("open_us")) & (at < pl.col("close_us")) & ~in_break.fill_null(False)
    return at.is_not_null() & ~inside.fill_null(False)


def outside_session(frame: pl.DataFrame, ts_column: str = "exchange_ts") -> pl.Series:
    """True for each row whose `ts_column` (UTC µs) is not inside a session of its `exchange`: a non-trading day
    (weekend, holiday), before the open, at or after the close, in a session break, beyond the calendar's range, or
    an exchange K2 has no calendar for. Null timestamp -> False (that row fails `missing_field` instead)."""
    out = pl.Series("outside_session", [False] * frame.height, pl.Boolean)
    if frame.is_empty():
        return out
    codes = [c for c in frame["exchange"].unique().to_list() if c is not None]
    base = frame.select(pl.col("exchange"), pl.col(ts_column).cast(pl.Int64).alias("_ts")).with_row_index("_row")
    parts = []
    for code in codes:  # one vectorised pass per exchange in the batch, never per tick
        rows = base.filter(pl.col("exchange") == code)
        known = EXCHANGES.get(str(code).upper())
        if known is None:
            parts.append(rows.select("_row", pl.col("_ts").is_not_null().alias("_out")))
            continue
        sessions = schedule(known.code)
        placed = rows.with_columns(trading_date(pl.col("_ts"), known.tz).alias("trading_date")).join(
            sessions, on="trading_date", how="left"
        )
        parts.append(placed.select("_row", outside_placed_session("_ts").alias("_out")))
    if not parts:
        return out
    flags = pl.concat(parts)
    merged = base.select("_row").join(flags, on="_row", how="left").sort("_row")
    return merged["_out"].fill_null(False).alias("outside_session")
