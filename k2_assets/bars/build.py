"""Keeping bars_1m equal to the bars of the validated ticks: find the trading days new ticks touched, recompute
those days from Iceberg, restate bars whose values changed (revision + 1)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import polars as pl
from pyiceberg.expressions import BooleanExpression
from pyiceberg.manifest import ManifestEntryStatus
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_assets.bars.ohlcv import BAR_KEY, bars_1m
from k2_resources.arrow_util import conform, to_integer_space
from k2_resources.exchanges import exchange as exchange_info
from k2_resources.filters import all_of, any_of, eq, ge, lt
from k2_resources.iceberg import append_with_properties

SOURCE_SNAPSHOT_PROPERTY = "k2.source-snapshot"
VALUE_COLUMNS = ["open", "high", "low", "close", "volume", "trade_count", "vwap", "first_sequence", "last_sequence"]
EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class BarsResult:
    trading_dates: tuple[tuple[str, dt.date], ...]
    ticks_read: int
    bars_written: int
    bars_restated: int
    source_snapshot_id: int | None
    seconds: float


def _as_date(value: object) -> dt.date:
    """Day-transform partition values come back as days since the epoch or as dates, depending on the reader."""
    if isinstance(value, dt.date):
        return value
    return EPOCH + dt.timedelta(days=int(value))  # type: ignore[call-overload]


def _source_snapshot(bars: Table) -> int | None:
    snap = bars.current_snapshot()
    if snap is None or snap.summary is None:
        return None
    raw = snap.summary.additional_properties.get(SOURCE_SNAPSHOT_PROPERTY)
    return int(raw) if raw else None


def touched_days(ticks: Table, since_snapshot_id: int | None) -> set[tuple[str, dt.date]] | None:
    """(exchange, UTC day) partitions whose files changed after `since_snapshot_id`; None means 'all of them'
    (no previous build, or its snapshot is no longer in the table's history)."""
    current = ticks.current_snapshot()
    if since_snapshot_id is None:
        return None
    if current is None or current.snapshot_id == since_snapshot_id:
        return set()
    io = ticks.io
    spec = ticks.spec()
    day_pos = next(i for i, f in enumerate(spec.fields) if f.name == "exchange_day")
    exch_pos = next(i for i, f in enumerate(spec.fields) if f.name == "exchange")
    touched: set[tuple[str, dt.date]] = set()
    snap: Snapshot | None = current
    while snap is not None and snap.snapshot_id != since_snapshot_id:
        for manifest in snap.manifests(io):
            if manifest.added_snapshot_id != snap.snapshot_id:
                continue
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                if entry.snapshot_id != snap.snapshot_id or entry.status == ManifestEntryStatus.EXISTING:
                    continue
                partition = entry.data_file.partition
                touched.add((str(partition[exch_pos]), _as_date(partition[day_pos])))
        snap = ticks.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return None if snap is None else touched


def all_days(ticks: Table) -> set[tuple[str, dt.date]]:
    parts = ticks.inspect.partitions()
    if parts.num_rows == 0:
        return set()
    return {(str(p["exchange"]), _as_date(p["exchange_day"])) for p in parts.column("partition").to_pylist()}


def trading_dates(days: Iterable[tuple[str, dt.date]]) -> set[tuple[str, dt.date]]:
    """A UTC day overlaps the local dates of its first and last instant in the exchange's time zone."""
    out: set[tuple[str, dt.date]] = set()
    for code, day in days:
        tz = ZoneInfo(exchange_info(code).tz)
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        out.add((code, start.astimezone(tz).date()))
        out.add((code, (start + dt.timedelta(days=1, microseconds=-1)).astimezone(tz).date()))
    return out


def _local_day_bounds(code: str, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    tz = ZoneInfo(exchange_info(code).tz)
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz).astimezone(dt.UTC)
    return start, end


def _ticks_of(ticks: Table, code: str, day: dt.date) -> pl.DataFrame:
    start, end = _local_day_bounds(code, day)
    row_filter = all_of(eq("exchange", code), ge("exchange_ts", start.isoformat()), lt("exchange_ts", end.isoformat()))
    arrow = ticks.scan(
        row_filter=row_filter, selected_fields=("exchange", "symbol", "sequence", "exchange_ts", "price", "volume")
    ).to_arrow()
    frame = pl.from_arrow(to_integer_space(arrow))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _date_filter(dates: Iterable[tuple[str, dt.date]]) -> BooleanExpression:
    return any_of([all_of(eq("exchange", code), eq("trading_date", day.isoformat())) for code, day in sorted(dates)])


def with_revisions(new: pl.DataFrame, old: pl.DataFrame, computed_at_us: int) -> tuple[pl.DataFrame, int]:
    """Carry revision and computed_at of unchanged bars; bump the revision of bars whose values changed."""
    if old.is_empty():
        return new.with_columns(pl.lit(0, pl.Int32).alias("revision"), pl.lit(computed_at_us).alias("computed_at")), 0
    prior = old.select(BAR_KEY + VALUE_COLUMNS + ["revision", "computed_at"]).rename(
        {c: f"{c}_old" for c in [*VALUE_COLUMNS, "revision", "computed_at"]}
    )
    joined = new.join(prior, on=BAR_KEY, how="left")
    changed = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_old")) for c in VALUE_COLUMNS])
    is_new = pl.col("revision_old").is_null()
    out = joined.with_columns(
        pl.when(is_new)
        .then(0)
        .when(changed)
        .then(pl.col("revision_old") + 1)
        .otherwise(pl.col("revision_old"))
        .cast(pl.Int32)
        .alias("revision"),
        pl.when(is_new | changed)
        .then(pl.lit(computed_at_us))
        .otherwise(pl.col("computed_at_old"))
        .alias("computed_at"),
    )
    restated = out.filter(~is_new & changed).height
    return out.drop([c for c in out.columns if c.endswith("_old")]), restated


def build_bars(ticks: Table, bars: Table, *, dates: set[tuple[str, dt.date]] | None = None) -> BarsResult:
    """Recompute the bars of `dates` (default: the trading days touched since the last build) and restate them."""
    started = time.perf_counter()
    ticks.refresh()
    bars.refresh()
    current = ticks.current_snapshot()
    source_id = current.snapshot_id if current is not None else None
    if dates is None:
        days = touched_days(ticks, _source_snapshot(bars))
        dates = trading_dates(all_days(ticks) if days is None else days)
    properties = {SOURCE_SNAPSHOT_PROPERTY: str(source_id)} if source_id is not None else {}
    if not dates:
        if source_id is not None and source_id != _source_snapshot(bars):
            append_with_properties(bars, conform(pl.DataFrame().to_arrow(), bars.schema().as_arrow()), properties)
        return BarsResult((), 0, 0, 0, source_id, time.perf_counter() - started)
    computed_at = int(time.time() * 1_000_000)
    frames, ticks_read = [], 0
    for code, day in sorted(dates):
        day_ticks = _ticks_of(ticks, code, day)
        ticks_read += day_ticks.height
        day_bars = bars_1m(day_ticks, exchange_info(code).tz).filter(pl.col("trading_date") == day)
        frames.append(day_bars)
    new = pl.concat(frames) if frames else pl.DataFrame()
    old_arrow = bars.scan(row_filter=_date_filter(dates)).to_arrow()
    old = pl.from_arrow(to_integer_space(old_arrow))
    assert isinstance(old, pl.DataFrame)
    final, restated = with_revisions(new, old, computed_at)
    final = final.with_columns(pl.lit(source_id).alias("source_snapshot_id"))
    bars.overwrite(
        conform(final.to_arrow(), bars.schema().as_arrow()),
        overwrite_filter=_date_filter(dates),
        snapshot_properties=properties,
    )
    return BarsResult(
        tuple(sorted(dates)), ticks_read, final.height, restated, source_id, time.perf_counter() - started
    )
