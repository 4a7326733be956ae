"""Write-audit-publish for an ingest table (ARCHITECTURE.md decision 3) with the exactly-once watermark of decision 2.

1. stage: reset the `audit` branch to main, append the batch to it; the new snapshot carries the watermark main
   would have after this batch (main's watermark advanced by exactly the ranges not yet on main).
2. audit: the caller checks exactly the rows that snapshot added (`read_staged`).
3. publish: fast-forward main to the audited snapshot, only if main is still the snapshot the branch was cut from
   (the catalog enforces it again at commit: pyiceberg asserts the ref's snapshot id). Main then carries the data
   and the watermark in one snapshot; a failed audit leaves main exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from k2_resources.iceberg import (
    BATCH_PROPERTY,
    WATERMARK_PROPERTY,
    OffsetRange,
    advance,
    append_with_properties,
    encode_watermarks,
    read_watermarks,
    trim_to_watermarks,
)

AUDIT_BRANCH = "audit"
WAP_PROPERTY = "k2.wap"


@dataclass(frozen=True)
class StagedBatch:
    snapshot_id: int  # the audit-branch snapshot holding the batch
    parent_id: int  # main when the branch was cut
    ranges: tuple[OffsetRange, ...]  # what the snapshot adds to main's watermark
    skipped: tuple[OffsetRange, ...]  # ranges main already had
    rows: int


def ensure_root_snapshot(table: Table) -> int:
    """A branch needs a snapshot to start from: give a never-written table an empty one (empty watermark)."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        append_with_properties(
            table, table.schema().as_arrow().empty_table(), {WATERMARK_PROPERTY: "{}", BATCH_PROPERTY: "root"}
        )
        snapshot = table.current_snapshot()
        assert snapshot is not None
    return snapshot.snapshot_id


def stage(
    table: Table,
    ranges: Sequence[OffsetRange],
    build_rows: Callable[[list[OffsetRange]], pa.Table],
    *,
    batch_id: str,
    extra_properties: dict[str, str] | None = None,
) -> StagedBatch | None:
    """Append the rows of the ranges main does not have yet to the audit branch. None if main has them all."""
    table.refresh()
    watermarks = read_watermarks(table)
    todo, done = trim_to_watermarks(sorted(ranges), watermarks)
    todo = [r for r in todo if r.size > 0]
    if not todo:
        return None
    parent_id = ensure_root_snapshot(table)
    rows = build_rows(todo)
    properties = {
        WATERMARK_PROPERTY: encode_watermarks(advance(watermarks, todo)),
        BATCH_PROPERTY: batch_id,
        WAP_PROPERTY: "audited",
        **(extra_properties or {}),
    }
    table.manage_snapshots().create_branch(parent_id, AUDIT_BRANCH).commit()
    if rows.num_rows:
        table.append(rows, snapshot_properties=properties, branch=AUDIT_BRANCH)
    else:
        with table.transaction() as tx, tx.update_snapshot(properties, branch=AUDIT_BRANCH).fast_append():
            pass
    staged = table.snapshot_by_name(AUDIT_BRANCH)
    assert staged is not None and staged.parent_snapshot_id == parent_id
    return StagedBatch(staged.snapshot_id, parent_id, tuple(todo), tuple(done), rows.num_rows)


def read_staged(table: Table, staged: StagedBatch) -> pa.Table:
    """Exactly the rows the staged snapshot added (an incremental append scan over that one snapshot)."""
    return table.incremental_append_scan(
        from_snapshot_id_exclusive=staged.parent_id, to_snapshot_id_inclusive=staged.snapshot_id
    ).to_arrow()


def publish(table: Table, staged: StagedBatch) -> bool:
    """Point main at the audited snapshot. False, with nothing changed, if main moved since the branch was cut."""
    table.refresh()
    current = table.current_snapshot()
    if current is None or current.snapshot_id != staged.parent_id:
        return False
    try:
        table.manage_snapshots().set_current_snapshot(snapshot_id=staged.snapshot_id).commit()
    except CommitFailedException:
        return False
    return True
