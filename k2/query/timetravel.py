"""`as_of`: pinning every table a read touches to one consistent point in its history.

`as_of` is one of
- a snapshot id (int, or digits): the table holding it is pinned to it; every other table the read touches is
  pinned to its snapshot current at that snapshot's commit time (a consistent cut);
- a tag name (`NAME` or `tag:NAME`): each table's Iceberg tag of that name, else the snapshot the backtest manifest
  of that tag recorded (`k2 tag create`);
- a time (datetime, or ISO 8601 text; naive means UTC): each table's snapshot current at that time.
A snapshot that has been expired is an error, never an empty result.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyiceberg.table import Table
from pyiceberg.table.refs import SnapshotRefType

from k2_resources.errors import SnapshotNotFoundError

AsOf = int | str | dt.datetime | None
ManifestLookup = Callable[[str], dict[str, int] | None]


@dataclass(frozen=True)
class Pin:
    label: str  # the caller's as_of, as text (audit log, freshness)
    kind: str  # snapshot | tag | time
    snapshots: dict[str, int]


def parse_time(value: str | dt.datetime) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    else:
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise SnapshotNotFoundError(f"{value!r} is neither a snapshot id, a tag nor an ISO 8601 time") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _looks_like_time(text: str) -> bool:
    return len(text) >= 10 and text[4] == "-" and text[7] == "-" and text[:4].isdigit()


def _snapshot_at(name: str, table: Table, moment: dt.datetime) -> int:
    snap = table.snapshot_as_of_timestamp(int(moment.timestamp() * 1000))
    if snap is None:
        raise SnapshotNotFoundError(f"{name} had no snapshot at or before {moment.isoformat()}")
    return snap.snapshot_id


def resolve(
    as_of: AsOf, tables: dict[str, Table], reads: Sequence[str], manifest: ManifestLookup | None = None
) -> Pin | None:
    """Snapshot ids for every table in `reads` (all must be in `tables`), or None for 'current'."""
    if as_of is None:
        return None
    if isinstance(as_of, bool):
        raise SnapshotNotFoundError("as_of must be a snapshot id, a tag or a time, not a boolean")
    if isinstance(as_of, int) or (isinstance(as_of, str) and as_of.strip().lstrip("-").isdigit()):
        return _by_snapshot(int(as_of), tables, reads)
    if isinstance(as_of, dt.datetime) or (isinstance(as_of, str) and _looks_like_time(as_of.strip())):
        moment = parse_time(as_of)
        return Pin(moment.isoformat(), "time", {n: _snapshot_at(n, tables[n], moment) for n in reads})
    tag = as_of.strip().removeprefix("tag:")
    return _by_tag(tag, tables, reads, manifest)


def _by_snapshot(snapshot_id: int, tables: dict[str, Table], reads: Sequence[str]) -> Pin:
    owner = next((n for n in reads if tables[n].snapshot_by_id(snapshot_id) is not None), None)
    if owner is None:
        raise SnapshotNotFoundError(
            f"snapshot {snapshot_id} is not in the history of {', '.join(reads)} (expired, or of another table); "
            '`k2 query sql "SELECT ..."` over a tag or a time is the alternative'
        )
    snap = tables[owner].snapshot_by_id(snapshot_id)
    assert snap is not None
    moment = dt.datetime.fromtimestamp(snap.timestamp_ms / 1000, dt.UTC)
    pins = {n: (snapshot_id if n == owner else _snapshot_at(n, tables[n], moment)) for n in reads}
    return Pin(str(snapshot_id), "snapshot", pins)


def _by_tag(tag: str, tables: dict[str, Table], reads: Sequence[str], manifest: ManifestLookup | None) -> Pin:
    recorded = manifest(tag) if manifest is not None else None
    pins: dict[str, int] = {}
    for name in reads:
        ref = tables[name].metadata.refs.get(tag)
        snapshot_id = ref.snapshot_id if ref is not None and ref.snapshot_ref_type == SnapshotRefType.TAG else None
        if snapshot_id is None and recorded is not None:
            snapshot_id = recorded.get(name)
        if snapshot_id is None:
            raise SnapshotNotFoundError(
                f"{name} has no tag {tag!r} and no backtest manifest names it: `k2 tag list` shows the tags"
            )
        if tables[name].snapshot_by_id(snapshot_id) is None:
            raise SnapshotNotFoundError(f"tag {tag!r} of {name} points at snapshot {snapshot_id}, which has expired")
        pins[name] = snapshot_id
    return Pin(f"tag:{tag}", "tag", pins)
