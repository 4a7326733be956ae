"""Reading validated ticks for bars: a whole trading day, or exactly the ticks a micro-batch appended."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

import polars as pl
from pyiceberg.table import Table

from k2_assets.bars.ohlcv import TICK_INPUT, trading_date
from k2_assets.bars.store import Day, Delta, partition_position, read_files
from k2_resources.arrow_util import to_integer_space
from k2_resources.exchanges import exchange as exchange_info
from k2_resources.filters import all_of, eq, ge, lt

EPOCH = dt.date(1970, 1, 1)


def as_date(value: object) -> dt.date:
    """Day-transform partition values come back as days since the epoch or as dates, depending on the reader."""
    if isinstance(value, dt.date):
        return value
    return EPOCH + dt.timedelta(days=int(value))  # type: ignore[call-overload]


def tz_of(code: str) -> str:
    return exchange_info(code).tz


def trading_dates_of_utc_days(days: Iterable[tuple[str, dt.date]]) -> set[Day]:
    """A UTC day overlaps the local dates of its first and last instant in the exchange's time zone."""
    out: set[Day] = set()
    for code, day in days:
        tz = ZoneInfo(tz_of(code))
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        out.add((code, start.astimezone(tz).date()))
        out.add((code, (start + dt.timedelta(days=1, microseconds=-1)).astimezone(tz).date()))
    return out


def utc_days_of_partitions(ticks: Table, partitions: Iterable[tuple[object, ...]]) -> set[tuple[str, dt.date]]:
    day_pos = partition_position(ticks, "exchange_day")
    exch_pos = partition_position(ticks, "exchange")
    return {(str(p[exch_pos]), as_date(p[day_pos])) for p in partitions}


def all_trading_days(ticks: Table) -> set[Day]:
    """Every (exchange, trading_date) the ticks table may hold a tick of (from partition metadata only)."""
    parts = ticks.inspect.partitions()
    if parts.num_rows == 0:
        return set()
    utc = {(str(p["exchange"]), as_date(p["exchange_day"])) for p in parts.column("partition").to_pylist()}
    return trading_dates_of_utc_days(utc)


def local_day_bounds(code: str, day: dt.date) -> tuple[int, int]:
    """[start, end) of the exchange-local calendar day in UTC µs."""
    tz = ZoneInfo(tz_of(code))
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return int(start.timestamp() * 1_000_000), int(end.timestamp() * 1_000_000)


def ticks_of_day(ticks: Table, day: Day) -> pl.DataFrame:
    """Every validated tick of one exchange trading day (the exchange-local calendar date of exchange_ts)."""
    code, date = day
    start, end = local_day_bounds(code, date)
    iso = dt.datetime.fromtimestamp(start / 1e6, dt.UTC).isoformat(), dt.datetime.fromtimestamp(end / 1e6, dt.UTC)
    row_filter = all_of(eq("exchange", code), ge("exchange_ts", iso[0]), lt("exchange_ts", iso[1].isoformat()))
    arrow = ticks.scan(row_filter=row_filter, selected_fields=tuple(TICK_INPUT)).to_arrow()
    frame = pl.from_arrow(to_integer_space(arrow))
    assert isinstance(frame, pl.DataFrame)
    return frame.select(TICK_INPUT)


def with_trading_date(frame: pl.DataFrame) -> pl.DataFrame:
    """Add trading_date per row by its exchange's time zone (one vectorised pass per exchange)."""
    if frame.is_empty():
        return frame.with_columns(pl.lit(None, pl.Date).alias("trading_date"))
    parts = [
        frame.filter(pl.col("exchange") == code).with_columns(
            trading_date(pl.col("exchange_ts"), tz_of(code)).alias("trading_date")
        )
        for code in frame["exchange"].unique().to_list()
    ]
    return pl.concat(parts)


def appended_ticks(ticks: Table, delta: Delta) -> pl.DataFrame:
    """The ticks of the files appended in `delta`, with the sequence number of the snapshot that added them
    (`_seq`) and their trading_date."""
    frames = []
    for seq, files in delta.appended:
        arrow = read_files(ticks, files, tuple(TICK_INPUT))
        frame = pl.from_arrow(to_integer_space(arrow))
        assert isinstance(frame, pl.DataFrame)
        frames.append(frame.select(TICK_INPUT).with_columns(pl.lit(seq, pl.Int64).alias("_seq")))
    if not frames:
        empty = pl.DataFrame(
            schema={
                "exchange": pl.String,
                "symbol": pl.String,
                "sequence": pl.Int64,
                "exchange_ts": pl.Int64,
                "price": pl.Int64,
                "volume": pl.Int64,
                "_seq": pl.Int64,
            }
        )
        return with_trading_date(empty)
    return with_trading_date(pl.concat(frames))
