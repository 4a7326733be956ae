"""Exactly-once commits for tables whose batch result replaces rows (sequence_gaps fills, symbol_state): the shared
loop of k2_resources.iceberg.commit_once with a delete and an append in ONE transaction whose snapshots all carry
the new watermark."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from k2_resources.iceberg import CommitOutcome, OffsetRange, commit_once

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

    def replace(replacement: Replacement, properties: dict[str, str]) -> int:
        rows, delete_filter = replacement
        with table.transaction() as tx:
            if delete_filter is not None:
                tx.delete(delete_filter, snapshot_properties=properties)
            if rows.num_rows:
                tx.append(rows, snapshot_properties=properties)
            else:
                with tx.update_snapshot(snapshot_properties=properties).fast_append():
                    pass
        return rows.num_rows

    planned = sorted(r for r in ranges if r.size > 0)
    return commit_once(
        table, planned, lambda _todo: build(), replace, batch_id=batch_id, whole_batch=True, max_attempts=max_attempts
    )
