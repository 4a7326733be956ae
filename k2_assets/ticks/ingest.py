"""Landing Kafka records in raw_ticks exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
from pyiceberg.table import Table

from k2_assets.ticks import handover
from k2_resources import faults
from k2_resources.arrow_util import conform
from k2_resources.errors import OffsetRangeError
from k2_resources.iceberg import CommitOutcome, OffsetRange, commit_offset_ranges, read_watermarks
from k2_resources.kafka import KafkaResource, TickLog
from k2_resources.kafka_parallel import PARALLEL_MIN_RECORDS, decode_records, read_decoded
from k2_resources.schemas import SchemaStore


@dataclass(frozen=True)
class RawIngestResult:
    outcome: CommitOutcome
    records: int
    undecodable: int
    seconds: float
    # Why the informational consumer-group offset commit failed (None: committed, or nothing to commit).
    group_commit_error: str | None = None


def check_coverage(records: pa.Table, ranges: Sequence[OffsetRange]) -> None:
    """Every offset of every range must be present exactly once; anything else would lose or double a tick."""
    expected = sum(r.size for r in ranges)
    if records.num_rows != expected:
        raise OffsetRangeError(
            f"Kafka returned {records.num_rows} records for {expected} planned offsets in {list(ranges)}; "
            "the batch was not committed (has retention deleted part of the range?)"
        )


def read_rows(log: TickLog, ranges: Sequence[OffsetRange], store: SchemaStore, landed_ts_us: int) -> pa.Table:
    """The decoded raw_ticks rows of exactly `ranges`: a large batch from a real broker is read and decoded by
    worker processes (k2_resources.kafka_parallel), anything else in process."""
    if isinstance(log, KafkaResource) and sum(r.size for r in ranges) >= PARALLEL_MIN_RECORDS:
        rows = read_decoded(
            log.bootstrap_servers, log.consumer_group, ranges, log.request_timeout_s, store, landed_ts_us
        )
    else:
        rows = decode_records(log.read(ranges), store, landed_ts_us)
    check_coverage(rows, ranges)
    return rows


def ingest_raw(
    log: TickLog,
    table: Table,
    ranges: Sequence[OffsetRange],
    store: SchemaStore,
    batch_id: str,
    before_commit: Callable[[], None] | None = None,
) -> RawIngestResult:
    """Read `ranges` from the log and append them to raw_ticks unless already committed.

    Then, for monitoring only, move the consumer group's offsets to what Iceberg now holds: a crash between the
    two leaves the group behind, never ahead, and K2 never reads it back (the snapshot watermark is the truth).
    """
    started = time.perf_counter()
    target_schema = table.schema().as_arrow()
    seen = {"records": 0, "undecodable": 0}
    built: dict[str, pa.Table] = {}

    def build_rows(todo: list[OffsetRange]) -> pa.Table:
        rows = read_rows(log, todo, store, int(time.time() * 1_000_000))
        seen["records"] = rows.num_rows
        seen["undecodable"] = rows.num_rows - rows["decode_error"].null_count
        faults.reach("raw_ticks.after_read")
        conformed = conform(rows, target_schema)
        built["rows"] = conformed
        return conformed

    handover.discard()  # whatever was on offer belongs to an earlier batch
    outcome = commit_offset_ranges(table, ranges, build_rows, batch_id=batch_id, before_commit=before_commit)
    if outcome.rows_appended and "rows" in built:
        handover.offer(table, outcome.snapshot_id, outcome.ranges_committed, built["rows"])
    faults.reach("raw_ticks.after_commit")
    # The table's whole watermark, not just this batch: a group left behind by a crash catches up on any run.
    marks = read_watermarks(table)
    group_error = log.commit_group_offsets(
        [OffsetRange(t, p, o, o) for t, parts in marks.items() for p, o in parts.items()]
    )
    return RawIngestResult(outcome, seen["records"], seen["undecodable"], time.perf_counter() - started, group_error)
