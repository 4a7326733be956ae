"""Re-admitting reviewed quarantine rows (`k2 quarantine release --reason anomaly --symbol X`).

A release moves rows whose only reason is a releasable one (anomaly: a real price move a reviewer confirmed) from
quarantine into ticks, and writes one audit row per tick to market_data.quarantine_releases. Order: ticks first
(with its Kafka watermark unchanged in the snapshot summary), then the audit rows, then the delete from quarantine
(also keeping its watermark). A crash anywhere is repaired by running the release again: rows already in ticks are
recognised by their key and only audited and removed from quarantine. Bars pick the new ticks up on their next
build, like any ticks a batch appends.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass

import polars as pl
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from k2_assets.ticks.sessions import trading_dates
from k2_assets.ticks.state import read_seen_keys
from k2_assets.ticks.validate import DEDUP_KEY, RELEASABLE, SOURCE_COLUMNS, TICK_COLUMNS
from k2_resources.arrow_util import conform, to_integer_space
from k2_resources.errors import CommitConflictError, ReleaseError
from k2_resources.filters import all_of, any_of, eq, is_in
from k2_resources.iceberg import BATCH_PROPERTY, WATERMARK_PROPERTY, encode_watermarks, read_watermarks

RELEASE_PROPERTY = "k2.release-id"


@dataclass(frozen=True)
class ReleaseResult:
    release_id: str
    published: int  # rows appended to ticks
    already_in_ticks: int  # rows whose key ticks had (an earlier, interrupted release; or a later valid copy)
    ticks_snapshot_id: int | None
    rows: pl.DataFrame  # the audit rows written


def _releasable(quarantine: Table, reason: str, symbol: str, exchange: str | None) -> pl.DataFrame:
    row_filter = eq("symbol", symbol) if exchange is None else all_of(eq("symbol", symbol), eq("exchange", exchange))
    frame = pl.from_arrow(to_integer_space(quarantine.scan(row_filter=row_filter).to_arrow()))
    assert isinstance(frame, pl.DataFrame)
    if frame.is_empty():
        return frame
    only_reason = (pl.col("reasons").list.len() == 1) & (pl.col("reasons").list.first() == reason)
    return frame.filter(only_reason).sort(SOURCE_COLUMNS)


def _offsets_filter(rows: pl.DataFrame) -> BooleanExpression:
    groups = rows.group_by("kafka_topic", "kafka_partition").agg(pl.col("kafka_offset").sort())
    return any_of(
        [
            all_of(eq("kafka_topic", topic), eq("kafka_partition", int(partition)), is_in("kafka_offset", offsets))
            for topic, partition, offsets in groups.sort("kafka_topic", "kafka_partition").iter_rows()
        ]
    )


def _append_ticks(ticks: Table, rows: pl.DataFrame, release_id: str, attempts: int = 8) -> int | None:
    for attempt in range(1, attempts + 1):
        ticks.refresh()
        properties = {
            WATERMARK_PROPERTY: encode_watermarks(read_watermarks(ticks)),  # a release moves no Kafka offsets
            BATCH_PROPERTY: release_id,
            RELEASE_PROPERTY: release_id,
        }
        try:
            ticks.append(conform(rows.select(TICK_COLUMNS).to_arrow(), ticks.schema().as_arrow()), properties)
        except CommitFailedException:
            time.sleep(min(0.05 * 2**attempt, 2.0))
            continue
        snapshot = ticks.current_snapshot()
        return snapshot.snapshot_id if snapshot else None
    raise CommitConflictError(f"ticks kept moving during release {release_id}; nothing was released, run it again")


def _delete_from_quarantine(quarantine: Table, rows: pl.DataFrame, release_id: str, attempts: int = 8) -> None:
    for attempt in range(1, attempts + 1):
        quarantine.refresh()
        properties = {WATERMARK_PROPERTY: encode_watermarks(read_watermarks(quarantine)), BATCH_PROPERTY: release_id}
        try:
            quarantine.delete(_offsets_filter(rows), snapshot_properties=properties)
        except CommitFailedException:
            time.sleep(min(0.05 * 2**attempt, 2.0))
            continue
        return
    raise CommitConflictError(
        f"quarantine kept moving during release {release_id}; the ticks were published and audited, run the release "
        "again to remove them from quarantine"
    )


def release(
    ticks: Table,
    quarantine: Table,
    releases: Table,
    *,
    reason: str,
    symbol: str,
    exchange: str | None = None,
    released_by: str,
    note: str = "",
    dry_run: bool = False,
) -> ReleaseResult:
    if reason not in RELEASABLE:
        raise ReleaseError(
            f"reason {reason!r} cannot be released: only {', '.join(RELEASABLE)} rows are valid ticks a reviewer may "
            "confirm; the others (bad prices, negative volumes, undecodable values) are broken data"
        )
    release_id = f"release-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    candidates = _releasable(quarantine, reason, symbol, exchange)
    if candidates.is_empty():
        raise ReleaseError(f"quarantine has no {symbol} rows whose only reason is {reason!r}: nothing to release")
    candidates = candidates.with_columns(trading_dates(candidates))
    ticks.refresh()
    seen = read_seen_keys(ticks, ticks.current_snapshot(), candidates)
    first = candidates.select(pl.struct(DEDUP_KEY).is_first_distinct()).to_series()
    marked = candidates.join(
        seen.unique().with_columns(pl.lit(True).alias("_in_ticks")), on=DEDUP_KEY, how="left", maintain_order="left"
    ).with_columns((pl.col("_in_ticks").is_null() & first).alias("_publish"))
    to_publish = marked.filter(pl.col("_publish"))
    if dry_run:
        return ReleaseResult(release_id, to_publish.height, marked.height - to_publish.height, None, marked)
    snapshot_id = _append_ticks(ticks, to_publish, release_id) if not to_publish.is_empty() else None
    now_us = int(time.time() * 1_000_000)
    audit = marked.select(
        pl.lit(release_id).alias("release_id"),
        pl.lit(now_us, pl.Int64).alias("released_at"),
        pl.lit(released_by).alias("released_by"),
        pl.lit(reason).alias("reason"),
        pl.lit(note).alias("note"),
        *SOURCE_COLUMNS,
        "exchange",
        "symbol",
        "sequence",
        "exchange_ts",
        "price",
        pl.when(pl.col("_publish")).then(pl.lit("published")).otherwise(pl.lit("duplicate")).alias("outcome"),
        pl.when(pl.col("_publish")).then(pl.lit(snapshot_id, pl.Int64)).otherwise(None).alias("ticks_snapshot_id"),
    )
    releases.append(conform(audit.to_arrow(), releases.schema().as_arrow()))
    _delete_from_quarantine(quarantine, marked, release_id)
    return ReleaseResult(release_id, to_publish.height, marked.height - to_publish.height, snapshot_id, audit)
