"""validated_ticks, one batch: read what raw_ticks committed and the outputs have not, validate it against the state
as of the batch's start, stage the ticks on the audit branch, gate them with Great Expectations, and only if the
gate passes commit sequence_gaps, symbol_state, the dead letters and quarantine, then publish ticks to main.

Order matters for recovery. Ticks are published last, so a batch is done exactly when ticks has it; a crash after
some of the side tables committed re-plans exactly that batch (see `pending_ranges`), re-reads the same pinned
state, and each table's watermark skips what it already has. A failed gate commits nothing to any main branch;
only dq_results records the failed check, and the audit branch keeps the rejected batch for inspection.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from k2_assets.serving.dq_results import record_results, results_frame
from k2_assets.ticks import handover
from k2_assets.ticks.commits import commit_replacing
from k2_assets.ticks.dlq import COLUMNS as DLQ_COLUMNS
from k2_assets.ticks.dlq import DeadLetterSink
from k2_assets.ticks.gate import BatchCounts, GateConfig, GateResult, check_batch, submit_batch_suite
from k2_assets.ticks.planning import batch_key, plan_ranges, slowest_watermark
from k2_assets.ticks.sequences import SequenceResult, track_sequences
from k2_assets.ticks.state import BatchState, batch_starts, load_state
from k2_assets.ticks.validate import TICK_COLUMNS, UNDECODABLE, Rules, ValidationResult, validate
from k2_assets.ticks.wap import StagedBatch, publish, read_staged, stage
from k2_resources.arrow_util import conform, to_integer_space
from k2_resources.errors import CommitConflictError
from k2_resources.filters import is_in
from k2_resources.iceberg import (
    CommitOutcome,
    OffsetRange,
    commit_offset_ranges,
    read_files_matching,
    read_watermarks,
    trim_to_watermarks,
)
from k2_resources.offset_reads import in_ranges, ranges_filter


@dataclass(frozen=True)
class ValidationTables:
    raw: Table
    ticks: Table
    quarantine: Table
    gaps: Table
    state: Table
    dq_results: Table

    @property
    def outputs(self) -> tuple[Table, ...]:
        return (self.ticks, self.quarantine, self.gaps, self.state)


@dataclass(frozen=True)
class QualityConfig:
    rules: Rules = field(default_factory=Rules)
    gate: GateConfig = field(default_factory=GateConfig)
    reset_drop: float = 0.5
    gate_enabled: bool = True


@dataclass(frozen=True)
class PublishResult:
    ranges: tuple[OffsetRange, ...]
    rows_in: int
    validation: ValidationResult | None
    sequences: SequenceResult | None = None
    staged: StagedBatch | None = None
    gate: GateResult | None = None
    published: bool = False
    ticks: CommitOutcome | None = None
    quarantine: CommitOutcome | None = None
    gaps: CommitOutcome | None = None
    state: CommitOutcome | None = None
    dead_letters: int = 0
    batch: str = ""
    pins: dict[str, int | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def blocked(self) -> bool:
        return self.gate is not None and not self.gate.success


def read_raw(raw: Table, ranges: Sequence[OffsetRange]) -> pl.DataFrame:
    """The raw_ticks rows of exactly these offset ranges, in arrival order: the rows raw_ticks handed over in this
    process when they are exactly that (k2_assets.ticks.handover), else files pruned by the ranges, rows cut in
    polars."""
    frame = handover.take(raw, ranges)
    if frame is None:
        read = pl.from_arrow(to_integer_space(read_files_matching(raw, ranges_filter(ranges))))
        assert isinstance(read, pl.DataFrame)
        frame = read
    return arrival_order(in_ranges(frame, ranges))


ARRIVAL = ("kafka_topic", "kafka_partition", "kafka_offset")


def arrival_order(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows by (topic, partition, offset): Kafka's order, whatever order the data files came back in (a batch
    spanning two days is two files). Usually already so, and then not sorted again."""
    if frame.height < 2:
        return frame
    t, p, o = (pl.col(c) for c in ARRIVAL)
    ahead = (t < t.shift(-1)) | ((t == t.shift(-1)) & ((p < p.shift(-1)) | ((p == p.shift(-1)) & (o < o.shift(-1)))))
    if frame.select(ahead.head(frame.height - 1).all()).item():
        return frame
    return frame.sort(list(ARRIVAL))


def pending_ranges(raw: Table, outputs: Sequence[Table], max_per_partition: int) -> list[OffsetRange]:
    """What raw_ticks has committed that the slowest output table has not, per partition.

    If the outputs disagree (a crash between their commits), exactly the interrupted batch is planned again:
    [slowest, fastest) of the partitions where they differ (capped like any batch, which reproduces the original
    one), so every table sees the same batch it was part of. A table added later catches up the same way.
    """
    raw_marks = read_watermarks(raw)
    out_marks = [read_watermarks(t) for t in outputs]
    planned: list[OffsetRange] = []
    for topic, parts in raw_marks.items():
        slowest = slowest_watermark(topic, *out_marks) if all(topic in m for m in out_marks) else {}
        fastest = {p: max(m.get(topic, {}).get(p, 0) for m in out_marks) for p in parts}
        interrupted = [
            OffsetRange(topic, p, slowest.get(p, 0), min(fastest[p], slowest.get(p, 0) + max_per_partition))
            for p in sorted(parts)
            if fastest[p] > slowest.get(p, 0)
        ]
        if interrupted:
            planned.extend(interrupted)
            continue
        log = {p: (0, hi) for p, hi in parts.items()}
        planned.extend(plan_ranges(topic, log, slowest, max_per_partition))
    return planned


def _counts(rows_in: int, validation: ValidationResult, staged: StagedBatch | None) -> BatchCounts:
    return BatchCounts(
        rows_in=rows_in,
        published=validation.ticks.height,
        quarantined=validation.quarantine.height,
        duplicates=validation.duplicates.height,
        staged=staged.rows if staged is not None else validation.ticks.height,
    )


def publish_validated(
    tables: ValidationTables,
    *,
    batch_id: str,
    max_per_partition: int,
    config: QualityConfig | None = None,
    dead_letters: DeadLetterSink | None = None,
    max_attempts: int = 5,
) -> PublishResult:
    """Validate and publish the next pending batch (see the module docstring)."""
    config = config or QualityConfig()
    started = time.perf_counter()
    for _attempt in range(max_attempts):
        timings: dict[str, float] = {}
        mark = time.perf_counter()
        for table in (tables.raw, *tables.outputs):
            table.refresh()
        ranges = pending_ranges(tables.raw, tables.outputs, max_per_partition)
        if not ranges:
            return PublishResult((), 0, None, seconds=time.perf_counter() - started)
        raw_rows = read_raw(tables.raw, ranges)
        raw_snapshot = tables.raw.current_snapshot()
        state = load_state(tables.ticks, tables.state, tables.gaps, raw_rows, batch_starts(ranges))
        timings["read"] = time.perf_counter() - mark

        mark = time.perf_counter()
        now_us = int(time.time() * 1_000_000)
        last_prices = state.symbol_state.select("exchange", "symbol", "last_price").drop_nulls()
        validation = validate(
            raw_rows, rules=config.rules, seen_keys=state.seen_keys, last_prices=last_prices, now_us=now_us
        )
        sequences = track_sequences(
            validation.received,
            state.symbol_state,
            state.open_gaps,
            now_us=now_us,
            batch_id=batch_id,
            raw_snapshot_id=raw_snapshot.snapshot_id if raw_snapshot else None,
            reset_drop=config.reset_drop,
        )
        timings["validate"] = time.perf_counter() - mark

        result = _publish_batch(
            tables, ranges, raw_rows.height, validation, sequences, state, config, batch_id, dead_letters, timings
        )
        if result is not None:
            return dataclasses.replace(result, timings=timings, seconds=time.perf_counter() - started)
        # Main moved between staging and publishing (another writer, a release, compaction): start over.
    raise CommitConflictError(
        f"ticks: main kept moving while batch {batch_id} was being audited ({max_attempts} attempts); nothing was "
        "published, re-run the batch"
    )


def _publish_batch(
    tables: ValidationTables,
    ranges: list[OffsetRange],
    rows_in: int,
    validation: ValidationResult,
    sequences: SequenceResult,
    state: BatchState,
    config: QualityConfig,
    batch_id: str,
    dead_letters: DeadLetterSink | None,
    timings: dict[str, float],
) -> PublishResult | None:
    key = batch_key(ranges)
    ticks_schema = tables.ticks.schema().as_arrow()

    def tick_rows(todo: list[OffsetRange]) -> pa.Table:
        return conform(in_ranges(validation.ticks, todo).select(TICK_COLUMNS).to_arrow(), ticks_schema)

    mark = time.perf_counter()
    staged = stage(tables.ticks, ranges, tick_rows, batch_id=batch_id, extra_properties={"k2.batch-key": key})
    timings["stage"] = time.perf_counter() - mark
    gate: GateResult | None = None
    if staged is not None and config.gate_enabled:
        mark = time.perf_counter()
        counts = _counts(rows_in, validation, staged)
        batch_suite = submit_batch_suite(counts, config.gate, run_name=batch_id)  # runs while the rows are read
        staged_rows = pl.from_arrow(to_integer_space(read_staged(tables.ticks, staged)))
        assert isinstance(staged_rows, pl.DataFrame)
        gate = check_batch(staged_rows, counts, config.gate, run_name=batch_id, batch_suite=batch_suite)
        record_results(
            tables.dq_results,
            results_frame(
                gate.suites,
                run_id=batch_id,
                asset="validated_ticks",
                batch=key,
                snapshot_id=staged.snapshot_id,
                published=gate.success,
            ),
        )
        timings["gate"] = time.perf_counter() - mark
        if not gate.success:
            return PublishResult(
                tuple(ranges), rows_in, validation, sequences, staged, gate, False, batch=key, pins=state.pins
            )

    mark = time.perf_counter()
    gaps_outcome = commit_replacing(tables.gaps, ranges, lambda: _gap_rows(tables.gaps, sequences), batch_id=batch_id)
    state_outcome = commit_replacing(
        tables.state, ranges, lambda: _state_rows(tables.state, sequences), batch_id=batch_id
    )
    sent = _send_dead_letters(tables.quarantine, ranges, validation, dead_letters, batch_id)
    quarantine_outcome = commit_offset_ranges(
        tables.quarantine, ranges, _quarantine_rows(tables.quarantine, validation, batch_id), batch_id=batch_id
    )
    published = staged is None or publish(tables.ticks, staged)
    timings["commit"] = time.perf_counter() - mark
    if not published:
        return None
    ticks_outcome = CommitOutcome(
        staged.rows if staged else 0,
        staged.ranges if staged else (),
        staged.skipped if staged else tuple(ranges),
        staged.snapshot_id if staged else None,
        1,
    )
    return PublishResult(
        tuple(ranges),
        rows_in,
        validation,
        sequences,
        staged,
        gate,
        staged is not None,
        ticks_outcome,
        quarantine_outcome,
        gaps_outcome,
        state_outcome,
        sent,
        batch=key,
        pins=state.pins,
    )


def _gap_rows(table: Table, sequences: SequenceResult) -> tuple[pa.Table, BooleanExpression | None]:
    rows = pl.concat([sequences.opened, sequences.filled])
    replaced = sequences.filled["gap_id"].to_list()
    return conform(rows.to_arrow(), table.schema().as_arrow()), is_in("gap_id", replaced) if replaced else None


def _state_rows(table: Table, sequences: SequenceResult) -> tuple[pa.Table, BooleanExpression | None]:
    """Replace the rows of the symbols this batch read (sequences.state holds all of them, touched or not)."""
    symbols = sequences.state["symbol"].unique().sort().to_list()
    return conform(sequences.state.to_arrow(), table.schema().as_arrow()), is_in("symbol", symbols) if symbols else None


def _quarantine_rows(quarantine: Table, validation: ValidationResult, batch_id: str):  # type: ignore[no-untyped-def]
    schema = quarantine.schema().as_arrow()
    now_us = int(time.time() * 1_000_000)

    def build(todo: list[OffsetRange]) -> pa.Table:
        rows = in_ranges(validation.quarantine, todo).with_columns(
            pl.lit(batch_id).alias("batch_id"), pl.lit(now_us, pl.Int64).alias("quarantined_at")
        )
        return conform(rows.to_arrow(), schema)

    return build


def _send_dead_letters(
    quarantine: Table,
    ranges: list[OffsetRange],
    validation: ValidationResult,
    sink: DeadLetterSink | None,
    batch_id: str,
) -> int:
    """Undecodable rows of the ranges quarantine has not committed yet (so a re-run does not send them again)."""
    if sink is None or validation.quarantine.is_empty():
        return 0
    todo, _ = trim_to_watermarks(ranges, read_watermarks(quarantine))
    todo = [r for r in todo if r.size > 0]
    if not todo:
        return 0
    letters = in_ranges(validation.quarantine, todo).filter(pl.col("reasons").list.contains(UNDECODABLE))
    if "kafka_key" not in letters.columns:
        letters = letters.with_columns(pl.lit(None, pl.String).alias("kafka_key"))
    return sink.send(letters.select(DLQ_COLUMNS), batch_id)
