"""What validation needs to know from earlier batches, read from the Iceberg tables as of the start of the batch.

Every read is pinned to the snapshot whose Kafka watermark is at or below the batch's first offsets: the state
exactly as it was before this batch. A re-run after a crash between two table commits therefore sees the same
state as the first attempt (not state that already includes half of the batch), so it computes the same result
and each table's watermark check keeps the half that was committed from being applied twice.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import polars as pl
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_assets.ticks.sequences import GAP, GAP_SCHEMA, STATE_SCHEMA, empty_gaps, empty_state
from k2_assets.ticks.sessions import trading_dates
from k2_assets.ticks.validate import DEDUP_KEY, empty_keys
from k2_resources.arrow_util import to_integer_space
from k2_resources.errors import StateSnapshotExpiredError
from k2_resources.filters import all_of, eq, ge, is_in, is_null, lt
from k2_resources.iceberg import WATERMARK_PROPERTY, OffsetRange, read_files_matching

Starts = Mapping[tuple[str, int], int]  # (topic, partition) -> first offset of the batch


@dataclass(frozen=True)
class BatchState:
    seen_keys: pl.DataFrame  # DEDUP_KEY of ticks already published for the batch's symbols and trading dates
    symbol_state: pl.DataFrame  # STATE_SCHEMA rows of the batch's symbols
    open_gaps: pl.DataFrame  # GAP_SCHEMA rows: open gaps of the batch's symbols
    pins: dict[str, int | None]  # table -> snapshot id read (None: the table had nothing yet)


def batch_starts(ranges: Iterable[OffsetRange]) -> dict[tuple[str, int], int]:
    return {(r.topic, r.partition): r.start for r in ranges}


def snapshot_watermarks(snapshot: Snapshot) -> dict[str, dict[int, int]]:
    raw = snapshot.summary.additional_properties.get(WATERMARK_PROPERTY) if snapshot.summary else None
    if not raw:
        return {}
    parsed: dict[str, dict[str, int]] = json.loads(raw)
    return {topic: {int(p): int(o) for p, o in parts.items()} for topic, parts in parsed.items()}


def pinned_snapshot(table: Table, starts: Starts) -> Snapshot | None:
    """The newest snapshot on main whose watermark is at or below `starts` for every partition of the batch.

    None if the table had no such snapshot because it was empty then; StateSnapshotExpiredError if the history
    that far back has been expired (the state of that moment is gone).
    """
    snap = table.current_snapshot()
    while snap is not None:
        marks = snapshot_watermarks(snap)
        if all(marks.get(topic, {}).get(partition, 0) <= start for (topic, partition), start in starts.items()):
            return snap
        if snap.parent_snapshot_id is None:
            return None
        parent = table.snapshot_by_id(snap.parent_snapshot_id)
        if parent is None:
            raise StateSnapshotExpiredError(
                f"{'.'.join(table.name())}: the snapshot before offsets {dict(starts)} has been expired, so the state "
                "those offsets were validated against is gone; re-validating them would not be exact. Restore the "
                "table's history from backup, or accept re-validation against the current state by truncating the "
                "later tables' watermarks (see README: data quality)."
            )
        snap = parent
    return None


def _scan(
    table: Table, snapshot: Snapshot | None, row_filter: BooleanExpression, fields: tuple[str, ...]
) -> pl.DataFrame:
    if snapshot is None:
        return pl.DataFrame()
    arrow = table.scan(row_filter=row_filter, selected_fields=fields, snapshot_id=snapshot.snapshot_id).to_arrow()
    frame = pl.from_arrow(to_integer_space(arrow))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _day_bounds_utc(dates: Iterable[dt.date]) -> tuple[dt.datetime, dt.datetime]:
    """A UTC interval surely holding every instant of these exchange-local dates (local offsets are within ±14 h)."""
    ordered = sorted(dates)
    start = dt.datetime.combine(ordered[0], dt.time(), tzinfo=dt.UTC) - dt.timedelta(hours=15)
    end = dt.datetime.combine(ordered[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC) + dt.timedelta(hours=15)
    return start, end


def read_seen_keys(ticks: Table, snapshot: Snapshot | None, batch: pl.DataFrame) -> pl.DataFrame:
    """Keys already in ticks for the (exchange, symbol, trading date)s of `batch`, pruned to their partitions:
    day(exchange_ts) by the time bounds, exchange by identity, truncate(symbol, 4) by the symbol set."""
    wanted = batch.select("exchange", "symbol", "trading_date").drop_nulls().unique()
    if wanted.is_empty() or snapshot is None:
        return empty_keys()
    start, end = _day_bounds_utc(wanted["trading_date"].unique().to_list())
    row_filter = all_of(
        is_in("exchange", wanted["exchange"].unique().to_list()),
        is_in("symbol", wanted["symbol"].unique().sort().to_list()),
        ge("exchange_ts", start.isoformat()),
        lt("exchange_ts", end.isoformat()),
    )
    # Files pruned by the filter; the rows are cut exactly by the semi join below.
    fields = ("exchange", "symbol", "sequence", "exchange_ts")
    arrow = read_files_matching(ticks, row_filter, snapshot_id=snapshot.snapshot_id, selected_fields=fields)
    keys = pl.from_arrow(to_integer_space(arrow))
    assert isinstance(keys, pl.DataFrame)
    if keys.is_empty():
        return empty_keys()
    keys = keys.with_columns(trading_dates(keys))
    return keys.join(wanted, on=["exchange", "symbol", "trading_date"], how="semi").select(DEDUP_KEY)


def read_symbol_state(table: Table, snapshot: Snapshot | None, symbols: list[str]) -> pl.DataFrame:
    frame = _scan(table, snapshot, is_in("symbol", symbols), tuple(STATE_SCHEMA))
    if frame.is_empty():
        return empty_state()
    return frame.with_columns(pl.col("trading_date").cast(pl.Date)).select(list(STATE_SCHEMA))


def read_open_gaps(table: Table, snapshot: Snapshot | None, symbols: list[str]) -> pl.DataFrame:
    row_filter = all_of(is_null("filled_at"), eq("kind", GAP), is_in("symbol", symbols))
    frame = _scan(table, snapshot, row_filter, tuple(GAP_SCHEMA))
    if frame.is_empty():
        return empty_gaps()
    return frame.with_columns(pl.col("trading_date").cast(pl.Date)).select(list(GAP_SCHEMA))


def load_state(ticks: Table, state: Table, gaps: Table, batch: pl.DataFrame, starts: Starts) -> BatchState:
    """State of the batch's symbols as of the batch's first offsets. `batch` needs exchange, symbol, exchange_ts."""
    decoded = batch.filter(pl.col("symbol").is_not_null() & pl.col("exchange").is_not_null())
    if decoded.is_empty():
        return BatchState(empty_keys(), empty_state(), empty_gaps(), {})
    decoded = decoded.filter(pl.col("exchange_ts").is_not_null())
    with_dates = decoded.select("exchange", "symbol", "exchange_ts").with_columns(trading_dates(decoded))
    symbols = decoded["symbol"].unique().sort().to_list()
    ticks_at, state_at, gaps_at = (pinned_snapshot(t, starts) for t in (ticks, state, gaps))
    pins = {
        ".".join(t.name()): s.snapshot_id if s is not None else None
        for t, s in zip((ticks, state, gaps), (ticks_at, state_at, gaps_at), strict=True)
    }
    return BatchState(
        seen_keys=read_seen_keys(ticks, ticks_at, with_dates),
        symbol_state=read_symbol_state(state, state_at, symbols),
        open_gaps=read_open_gaps(gaps, gaps_at, symbols),
        pins=pins,
    )
