"""raw_ticks -> validated_ticks hand-over inside one process.

ingest_job runs in process, so validated_ticks would read back from Iceberg the batch raw_ticks decoded a moment
ago (~0.5-1 s per million rows). raw_ticks leaves the rows it appended here, keyed by the raw table, the snapshot
its commit made and the offset ranges that snapshot added; validated_ticks takes them only when raw's current
snapshot is still that one and every range it plans lies inside them. Anything else (another process, a newer
commit, compaction, a retry that re-plans) reads Iceberg as before. The rows are exactly what the snapshot holds:
the ranges were trimmed to the watermark, so no other snapshot has those offsets.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
from pyiceberg.table import Table

from k2_resources.arrow_util import to_integer_space
from k2_resources.iceberg import OffsetRange


@dataclass(frozen=True)
class RawHandover:
    table_uuid: str
    snapshot_id: int
    ranges: tuple[OffsetRange, ...]
    rows: pa.Table  # as appended (the raw table's Arrow schema)

    def covers(self, ranges: Sequence[OffsetRange]) -> bool:
        return all(
            any(
                h.topic == r.topic and h.partition == r.partition and h.start <= r.start and r.stop <= h.stop
                for h in self.ranges
            )
            for r in ranges
            if r.size > 0
        )


_LAST: RawHandover | None = None
_LOCK = threading.Lock()


def offer(table: Table, snapshot_id: int | None, ranges: Sequence[OffsetRange], rows: pa.Table) -> None:
    """Keep the rows raw_ticks' commit `snapshot_id` added for `ranges` (one batch at a time)."""
    global _LAST
    with _LOCK:
        _LAST = (
            RawHandover(str(table.metadata.table_uuid), snapshot_id, tuple(ranges), rows)
            if snapshot_id is not None and ranges
            else None
        )


def discard() -> None:
    global _LAST
    with _LOCK:
        _LAST = None


def take(table: Table, ranges: Sequence[OffsetRange]) -> pl.DataFrame | None:
    """The raw rows of `ranges` (integer space, arrival order) if the hand-over is exactly what `table`'s current
    snapshot added for them; None otherwise (read Iceberg). The hand-over is released either way."""
    global _LAST
    with _LOCK:
        handed, _LAST = _LAST, None
    current = table.current_snapshot()
    if (
        handed is None
        or current is None
        or handed.table_uuid != str(table.metadata.table_uuid)
        or handed.snapshot_id != current.snapshot_id
        or not handed.covers(ranges)
    ):
        return None
    frame = pl.from_arrow(to_integer_space(handed.rows))
    assert isinstance(frame, pl.DataFrame)
    return frame


def peek() -> RawHandover | None:
    """What is on offer (tests)."""
    return _LAST
