"""Exactly-once commits for tables whose batch result replaces rows (sequence_gaps fills, symbol_state), with the
same watermark rule as k2_resources.iceberg.commit_offset_ranges: reload, skip ranges already committed, delete and
append in ONE transaction whose snapshots all carry the new watermark, retry K2-side on a commit conflict."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from k2_resources.errors import CommitConflictError, OffsetRangeError
from k2_resources.iceberg import (
    BATCH_PROPERTY,
    WATERMARK_PROPERTY,
    CommitOutcome,
    OffsetRange,
    advance,
    encode_watermarks,
    read_watermarks,
    trim_to_watermarks,
)

# (rows to append, filter of rows to delete first or None)
Replacement = tuple[pa.Table, BooleanExpression | None]


def commit_replacing(
    table: Table,
    ranges: Sequence[OffsetRange],
    build: Callable[[], Replacement],
    *,
    batch_id: str,
    max_attempts: int = 8,
) -> CommitOutcome:
    """Apply a whole batch's replacement once. The result of a batch is not split by range (a gap belongs to a
    symbol, not to an offset), so a table that has some but not all of the batch's ranges is an error."""
    planned = sorted(r for r in ranges if r.size > 0)
    for attempt in range(1, max_attempts + 1):
        table.refresh()
        watermarks = read_watermarks(table)
        todo, done = trim_to_watermarks(planned, watermarks)
        todo = [r for r in todo if r.size > 0]
        if not todo:
            return CommitOutcome(0, (), tuple(done), None, attempt)
        if todo != planned:
            raise OffsetRangeError(
                f"{'.'.join(table.name())} has part of batch {batch_id} ({done}) but not all of it ({todo}): its "
                "result cannot be split by offset range; re-plan the batch from this table's watermark"
            )
        rows, delete_filter = build()
        properties = {WATERMARK_PROPERTY: encode_watermarks(advance(watermarks, todo)), BATCH_PROPERTY: batch_id}
        try:
            with table.transaction() as tx:
                if delete_filter is not None:
                    tx.delete(delete_filter, snapshot_properties=properties)
                if rows.num_rows:
                    tx.append(rows, snapshot_properties=properties)
                else:
                    with tx.update_snapshot(snapshot_properties=properties).fast_append():
                        pass
        except CommitFailedException:
            time.sleep(min(0.05 * 2**attempt, 2.0))
            continue
        snapshot = table.current_snapshot()
        return CommitOutcome(
            rows.num_rows, tuple(todo), tuple(done), snapshot.snapshot_id if snapshot else None, attempt
        )
    raise CommitConflictError(
        f"{'.'.join(table.name())}: lost the commit race {max_attempts} times for batch {batch_id}; nothing was "
        "committed, re-run the batch"
    )
