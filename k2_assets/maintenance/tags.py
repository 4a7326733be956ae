"""Iceberg tags for backtests: `k2 tag create NAME` pins the current snapshot of every table (or one) under NAME.

A tagged snapshot is never expired, so `scan_as_of(table, tag=NAME)` reads the same rows for as long as the tag
exists.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.refs import SnapshotRefType

from k2_resources.errors import ConfigurationError, SnapshotNotFoundError, TagExistsError
from k2_resources.iceberg import IcebergResource


@dataclass(frozen=True)
class TagInfo:
    table: str
    tag: str
    snapshot_id: int
    committed_at: dt.datetime


def _tables(iceberg: IcebergResource, names: Sequence[str] | None) -> list[Table]:
    if names:
        return [iceberg.load(n) for n in names]
    catalog = iceberg.catalog()
    return [catalog.load_table(ident) for ident in sorted(catalog.list_tables(iceberg.namespace))]


def _info(table: Table, tag: str, snapshot_id: int) -> TagInfo:
    snap = table.snapshot_by_id(snapshot_id)
    ts = dt.datetime.fromtimestamp(snap.timestamp_ms / 1000, dt.UTC) if snap else dt.datetime.fromtimestamp(0, dt.UTC)
    return TagInfo(table.name()[-1], tag, snapshot_id, ts)


def create_tag(iceberg: IcebergResource, name: str, tables: Sequence[str] | None = None) -> list[TagInfo]:
    """Tag the current snapshot of `tables` (default: every table that has one). All-or-nothing per table: an
    existing tag of that name anywhere stops the command before anything is tagged."""
    if not name or name.strip() != name or name == "main":
        raise ConfigurationError(f"tag name {name!r}: use a non-empty name without surrounding spaces, not 'main'")
    targets = _tables(iceberg, tables)
    if tables:
        empty = [t.name()[-1] for t in targets if t.current_snapshot() is None]
        if empty:
            raise SnapshotNotFoundError(f"{', '.join(empty)} has no snapshot to tag yet: run `k2 run` first")
    targets = [t for t in targets if t.current_snapshot() is not None]
    clash = [t.name()[-1] for t in targets if name in t.refs()]
    if clash:
        raise TagExistsError(f"{', '.join(clash)} already has a ref named {name!r}; pick another tag name")
    created: list[TagInfo] = []
    for table in targets:
        snapshot = table.current_snapshot()
        assert snapshot is not None
        try:
            table.manage_snapshots().create_tag(snapshot.snapshot_id, name).commit()
        except CommitFailedException as exc:
            raise TagExistsError(
                f"{table.name()[-1]}: {name!r} was created concurrently; tagged so far: {[c.table for c in created]}"
            ) from exc
        created.append(_info(table, name, snapshot.snapshot_id))
    return created


def list_tags(iceberg: IcebergResource, tables: Sequence[str] | None = None) -> list[TagInfo]:
    out: list[TagInfo] = []
    for table in _tables(iceberg, tables):
        for ref_name, ref in sorted(table.refs().items()):
            if ref.snapshot_ref_type == SnapshotRefType.TAG:
                out.append(_info(table, ref_name, ref.snapshot_id))
    return out
