"""Exchange-local trading dates of UTC microsecond timestamps, fast: a batch rarely straddles a DST change, so the
usual case is one constant offset added to every row (no per-row time zone conversion)."""

from __future__ import annotations

import numpy as np
import polars as pl

from k2_resources.exchanges import EXCHANGES

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


def exchange_tz(code: str | None) -> str:
    """The exchange's time zone; UTC for a code K2 does not know (its rows still get a date)."""
    known = EXCHANGES.get((code or "").upper())
    return known.tz if known is not None else "UTC"


def _utc_offsets_us(hours: pl.Series, tz: str) -> pl.Series:
    """UTC offset (µs) in `tz` at the start of each UTC hour in `hours` (hours since the epoch)."""
    instants = pl.from_epoch(hours * HOUR_US, time_unit="us").dt.replace_time_zone("UTC")
    local = instants.dt.convert_time_zone(tz).dt.replace_time_zone(None).dt.epoch("us")
    return local - hours * HOUR_US


def local_dates(ts_us: pl.Series, tz: str) -> pl.Series:
    """Local calendar date in `tz` of each UTC microsecond timestamp (nulls stay null)."""
    ts = ts_us.cast(pl.Int64)
    lowest, highest = ts.min(), ts.max()  # nulls ignored
    if lowest is None or highest is None:
        return pl.Series(ts_us.name, [None] * len(ts), pl.Date)
    first, last = int(lowest) // HOUR_US, int(highest) // HOUR_US  # type: ignore[arg-type]
    # Offsets change only at DST transitions, months apart: sampling every 24 h (and the last hour) over the batch
    # finds any change. Usually there is none and one constant offset serves every row.
    samples = pl.Series([*range(first, last, 24), last], dtype=pl.Int64)
    offsets = _utc_offsets_us(samples, tz)
    if offsets.n_unique() == 1:
        shift = int(offsets[0])
        first_day, last_day = (int(lowest) + shift) // DAY_US, (int(highest) + shift) // DAY_US  # type: ignore[arg-type]
        if first_day == last_day:  # one date (the usual batch: one session): no arithmetic per row
            day = pl.Series(np.full(len(ts), first_day, dtype=np.int32))
            if ts.has_nulls():
                day = day.scatter(ts.is_null().arg_true(), None)
        elif not ts.has_nulls():  # numpy's floor division by a constant is ~4x cheaper than polars'
            day = pl.Series((ts.to_numpy() + shift) // DAY_US, dtype=pl.Int32)
        else:
            day = ((ts + shift) // DAY_US).cast(pl.Int32)
        return day.cast(pl.Date).alias(ts_us.name)
    hour = ts // HOUR_US
    distinct = hour.drop_nulls().unique()
    offset = hour.replace_strict(distinct, _utc_offsets_us(distinct, tz), default=None)
    return ((ts + offset) // DAY_US).cast(pl.Int32).cast(pl.Date).alias(ts_us.name)


def exchange_codes(exchange: pl.Series) -> list[str]:
    """The distinct non-null exchange codes of a column. A batch has one exchange (a topic per exchange), which one
    comparison proves: no hash of a million strings."""
    present = exchange.is_not_null()
    if not present.any():
        return []
    first = exchange[int(present.arg_max())]  # type: ignore[arg-type]
    if ((exchange == first) | ~present).all():
        return [str(first)]
    return [str(c) for c in exchange.unique().to_list() if c is not None]


def trading_dates(frame: pl.DataFrame, ts_column: str = "exchange_ts", *, codes: list[str] | None = None) -> pl.Series:
    """Trading date of every row: the exchange-local date of `ts_column`, by the row's `exchange` (`codes`: the
    frame's exchange_codes, when the caller has them)."""
    codes = exchange_codes(frame["exchange"]) if codes is None else codes
    if len(codes) <= 1:
        return local_dates(frame[ts_column], exchange_tz(codes[0] if codes else None)).alias("trading_date")
    out = pl.Series("trading_date", [None] * frame.height, pl.Date)
    for code in codes:  # one pass per exchange in the batch, not per tick
        mask = frame["exchange"] == code
        out = pl.select(
            pl.when(pl.lit(mask)).then(pl.lit(local_dates(frame[ts_column], exchange_tz(code)))).otherwise(pl.lit(out))
        ).to_series()
    return out.alias("trading_date")


def outside_session_mask(
    frame: pl.DataFrame, ts_column: str = "exchange_ts", *, codes: list[str] | None = None
) -> pl.Series:
    """True for each row whose `ts_column` is not inside a session of its `exchange` (k2_assets/bars/session.py's
    calendar: non-trading day, before the open, at or after the close, in a break, or an exchange without a
    calendar). Needs `exchange` and `trading_date` (trading_dates) already on the frame. Null timestamp -> False.
    `codes`: the frame's exchange_codes, when the caller has them."""
    codes = exchange_codes(frame["exchange"]) if codes is None else codes
    out = np.zeros(frame.height, dtype=bool)
    ts = frame[ts_column].cast(pl.Int64)
    for code in codes:
        known = EXCHANGES.get(code.upper())
        flags = ts.is_not_null().to_numpy() if known is None else _outside(ts, frame["trading_date"], known.code)
        if len(codes) == 1:
            out |= flags
        else:
            out |= flags & (frame["exchange"] == code).fill_null(False).to_numpy()
    return pl.Series("outside_session", out)


def _outside(ts: pl.Series, dates: pl.Series, code: str) -> np.ndarray:
    """Outside the session of each row's trading date: the sessions of the batch's few dates in a small table
    indexed by day, looked up per row (no join of a million rows)."""
    from k2_assets.bars.session import schedule

    days = dates.cast(pl.Int32)
    known = ts.is_not_null() & days.is_not_null()
    if not known.any():
        return np.zeros(len(ts), dtype=bool)
    first, last = int(days.min()), int(days.max())  # type: ignore[arg-type]
    span = pl.DataFrame({"trading_date": pl.int_range(first, last + 1, eager=True).cast(pl.Int32).cast(pl.Date)})
    sessions = span.join(schedule(code), on="trading_date", how="left", maintain_order="left")
    # No session that day: an empty window (open = close = 0), so every tick of it is outside.
    table = sessions.select(
        pl.col("open_us", "close_us", "break_start_us", "break_end_us").fill_null(0),
        pl.col("break_start_us").is_not_null().alias("has_break"),
    )
    if first == last:  # one trading day (the usual batch): its bounds are scalars, nothing is looked up per row
        opens, closes, break_starts, break_ends, has_break = table.row(0)
    else:
        day = days.fill_null(first).to_numpy() - first
        opens, closes, break_starts, break_ends, has_break = (column.to_numpy()[day] for column in table.iter_columns())
    at = ts.fill_null(0).to_numpy()
    inside = (at >= opens) & (at < closes)
    in_break = has_break & (at >= break_starts) & (at < break_ends)
    return known.to_numpy() & ~(inside & ~in_break)
