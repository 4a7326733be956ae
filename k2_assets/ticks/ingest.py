"""Landing Kafka records in raw_ticks exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

from k2_resources import faults
from k2_resources.arrow_util import conform
from k2_resources.avro import decode_column
from k2_resources.errors import OffsetRangeError
from k2_resources.iceberg import CommitOutcome, OffsetRange, commit_offset_ranges, read_watermarks
from k2_resources.kafka import TickLog
from k2_resources.schemas import SchemaStore


@dataclass(frozen=True)
class RawIngestResult:
    outcome: CommitOutcome
    records: int
    undecodable: int
    seconds: float
    # Why the informational consumer-group offset commit failed (None: committed, or nothing to commit).
    group_commit_error: str | None = None


def decode_records(records: pa.Table, store: SchemaStore, landed_ts_us: int) -> pa.Table:
    """Kafka records -> raw_ticks rows (integer space). Undecodable values keep their bytes and the reason."""
    decoded, error_col = decode_column(records["value"], store)
    raw_value = pc.if_else(pc.is_valid(error_col), records["value"], pa.nulls(records.num_rows, pa.binary()))
    base = pl.from_arrow(records.drop_columns(["value"]))
    assert isinstance(base, pl.DataFrame)
    frame = base.hstack(decoded).with_columns(
        pl.lit(landed_ts_us, pl.Int64).alias("landed_ts"),
        pl.Series("decode_error", error_col),
        pl.Series("raw_value", raw_value),
    )
    return frame.to_arrow()


def check_coverage(records: pa.Table, ranges: Sequence[OffsetRange]) -> None:
    """Every offset of every range must be present exactly once; anything else would lose or double a tick."""
    expected = sum(r.size for r in ranges)
    if records.num_rows != expected:
        raise OffsetRangeError(
            f"Kafka returned {records.num_rows} records for {expected} planned offsets in {list(ranges)}; "
            "the batch was not committed (has retention deleted part of the range?)"
        )


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

    def build_rows(todo: list[OffsetRange]) -> pa.Table:
        records = log.read(todo)
        check_coverage(records, todo)
        rows = decode_records(records, store, int(time.time() * 1_000_000))
        seen["records"] = rows.num_rows
        seen["undecodable"] = rows.num_rows - rows["decode_error"].null_count
        faults.reach("raw_ticks.after_read")
        return conform(rows, target_schema)

    outcome = commit_offset_ranges(table, ranges, build_rows, batch_id=batch_id, before_commit=before_commit)
    faults.reach("raw_ticks.after_commit")
    # The table's whole watermark, not just this batch: a group left behind by a crash catches up on any run.
    marks = read_watermarks(table)
    group_error = log.commit_group_offsets(
        [OffsetRange(t, p, o, o) for t, parts in marks.items() for p, o in parts.items()]
    )
    return RawIngestResult(outcome, seen["records"], seen["undecodable"], time.perf_counter() - started, group_error)
