"""validated_ticks: read a committed raw batch from Iceberg, validate it, commit quarantine and ticks exactly once."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from k2_assets.ticks.planning import plan_ranges, slowest_watermark
from k2_assets.ticks.validate import TICK_COLUMNS, ValidationResult, validate
from k2_resources.arrow_util import conform, to_integer_space
from k2_resources.filters import all_of, any_of, eq, ge, lt
from k2_resources.iceberg import CommitOutcome, OffsetRange, commit_offset_ranges, read_watermarks


@dataclass(frozen=True)
class PublishResult:
    ranges: tuple[OffsetRange, ...]
    rows_in: int
    validation: ValidationResult | None
    ticks: CommitOutcome | None
    quarantine: CommitOutcome | None
    seconds: float


def ranges_filter(ranges: Sequence[OffsetRange]) -> BooleanExpression:
    return any_of(
        [
            all_of(
                eq("kafka_topic", r.topic),
                eq("kafka_partition", r.partition),
                ge("kafka_offset", r.start),
                lt("kafka_offset", r.stop),
            )
            for r in ranges
        ]
    )


def read_raw(raw: Table, ranges: Sequence[OffsetRange]) -> pl.DataFrame:
    arrow = raw.scan(row_filter=ranges_filter(ranges)).to_arrow()
    frame = pl.from_arrow(to_integer_space(arrow))
    assert isinstance(frame, pl.DataFrame)
    return frame


def pending_ranges(raw: Table, outputs: Sequence[Table], max_per_partition: int) -> list[OffsetRange]:
    """What raw_ticks has committed that the slowest output table has not, per partition."""
    raw_marks = read_watermarks(raw)
    out_marks = [read_watermarks(t) for t in outputs]
    planned: list[OffsetRange] = []
    for topic, parts in raw_marks.items():
        done = slowest_watermark(topic, *out_marks) if all(topic in m for m in out_marks) else {}
        log = {p: (0, hi) for p, hi in parts.items()}
        planned.extend(plan_ranges(topic, log, done, max_per_partition))
    return planned


def _in_ranges(frame: pl.DataFrame, ranges: Sequence[OffsetRange]) -> pl.DataFrame:
    keep = functools.reduce(
        lambda a, b: a | b,
        [
            (pl.col("kafka_topic") == r.topic)
            & (pl.col("kafka_partition") == r.partition)
            & pl.col("kafka_offset").is_between(r.start, r.stop, closed="left")
            for r in ranges
        ],
    )
    return frame.filter(keep)


def publish_validated(
    raw: Table,
    ticks: Table,
    quarantine: Table,
    *,
    batch_id: str,
    max_per_partition: int,
    derivative_symbols: frozenset[str] = frozenset(),
) -> PublishResult:
    started = time.perf_counter()
    ranges = pending_ranges(raw, [ticks, quarantine], max_per_partition)
    if not ranges:
        return PublishResult((), 0, None, None, None, time.perf_counter() - started)
    raw_rows = read_raw(raw, ranges)
    result = validate(raw_rows, derivative_symbols)
    now_us = int(time.time() * 1_000_000)
    quarantine_schema = quarantine.schema().as_arrow()
    ticks_schema = ticks.schema().as_arrow()

    def quarantine_rows(todo: list[OffsetRange]) -> pa.Table:
        rows = _in_ranges(result.quarantine, todo).with_columns(
            pl.lit(batch_id).alias("batch_id"), pl.lit(now_us, pl.Int64).alias("quarantined_at")
        )
        return conform(rows.to_arrow(), quarantine_schema)

    def tick_rows(todo: list[OffsetRange]) -> pa.Table:
        rows = _in_ranges(result.ticks, todo).select(TICK_COLUMNS)
        return conform(rows.to_arrow(), ticks_schema)

    q_outcome = commit_offset_ranges(quarantine, ranges, quarantine_rows, batch_id=batch_id)
    t_outcome = commit_offset_ranges(ticks, ranges, tick_rows, batch_id=batch_id)
    return PublishResult(tuple(ranges), raw_rows.height, result, t_outcome, q_outcome, time.perf_counter() - started)
