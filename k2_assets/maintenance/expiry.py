"""Snapshot expiry with file deletion.

pyiceberg's expire_snapshots only edits metadata. K2 decides which snapshots go (older than the retention, never
the last N of main, never the current one, never a branch head or tagged snapshot), commits that, and only then
deletes the files that the expired snapshots referenced and that no remaining snapshot does: the remaining set is
read from the table *after* the commit, so snapshots committed meanwhile only protect more files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass, field

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2_assets.maintenance.files import delete_files, reachable
from k2_resources.errors import ConfigurationError, MaintenanceError


@dataclass(frozen=True)
class ExpiryPolicy:
    older_than: dt.timedelta = dt.timedelta(days=90)
    retain_last: int = 10
    max_commit_attempts: int = 5

    def __post_init__(self) -> None:
        if self.retain_last < 1:
            raise ConfigurationError(
                f"retain_last must be >= 1 (the current snapshot is always kept), got {self.retain_last}"
            )
        if self.older_than < dt.timedelta(0):
            raise ConfigurationError(f"older_than must not be negative, got {self.older_than}")


@dataclass
class ExpiryResult:
    table: str
    snapshots_before: int = 0
    snapshots_after: int = 0
    expired_ids: list[int] = field(default_factory=list)
    data_files_deleted: int = 0
    manifests_deleted: int = 0
    manifest_lists_deleted: int = 0
    bytes_deleted: int = 0
    not_deleted: list[str] = field(default_factory=list)  # could not delete: left for orphan removal
    seconds: float = 0.0
    dry_run: bool = False


def main_ancestry(table: Table) -> list[Snapshot]:
    """The current snapshot and its ancestors, newest first."""
    out: list[Snapshot] = []
    snap = table.current_snapshot()
    seen: set[int] = set()
    while snap is not None and snap.snapshot_id not in seen:
        out.append(snap)
        seen.add(snap.snapshot_id)
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return out


def protected_ids(table: Table, policy: ExpiryPolicy, now: dt.datetime) -> set[int]:
    """Snapshots that stay whatever their age: the last `retain_last` of main (the current one included), the head
    of every branch and every tagged snapshot, and all snapshots younger than the retention."""
    cutoff_ms = int((now - policy.older_than).timestamp() * 1000)
    keep = {s.snapshot_id for s in main_ancestry(table)[: policy.retain_last]}
    keep |= {ref.snapshot_id for ref in table.refs().values()}
    keep |= {s.snapshot_id for s in table.snapshots() if s.timestamp_ms >= cutoff_ms}
    return keep


def effective_policy(table: Table, policy: ExpiryPolicy) -> ExpiryPolicy:
    """The job's policy, made stricter by the table's own Iceberg properties `history.expire.max-snapshot-age-ms`
    and `history.expire.min-snapshots-to-keep` when they ask to keep more."""
    props = table.properties
    age_ms = props.get("history.expire.max-snapshot-age-ms")
    keep = props.get("history.expire.min-snapshots-to-keep")
    older_than = max(policy.older_than, dt.timedelta(milliseconds=int(age_ms))) if age_ms else policy.older_than
    retain_last = max(policy.retain_last, int(keep)) if keep else policy.retain_last
    return dataclasses.replace(policy, older_than=older_than, retain_last=retain_last)


def plan_expiry(table: Table, policy: ExpiryPolicy, now: dt.datetime | None = None) -> list[Snapshot]:
    now = now or dt.datetime.now(dt.UTC)
    keep = protected_ids(table, effective_policy(table, policy), now)
    return [s for s in table.snapshots() if s.snapshot_id not in keep]


def expire_table(
    table: Table, policy: ExpiryPolicy = ExpiryPolicy(), *, now: dt.datetime | None = None, dry_run: bool = False
) -> ExpiryResult:
    started = time.perf_counter()
    result = ExpiryResult(table=".".join(table.name()), dry_run=dry_run)
    expired: list[Snapshot] = []
    for attempt in range(1, policy.max_commit_attempts + 1):
        table.refresh()
        result.snapshots_before = len(table.snapshots())
        expired = plan_expiry(table, policy, now)
        if dry_run or not expired:
            break
        refs_before = dict(table.refs())
        try:
            table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in expired]).commit()
        except CommitFailedException:
            time.sleep(min(0.05 * 2**attempt, 2.0))
            continue
        table.refresh()
        lost = [name for name in refs_before if name not in table.refs()]
        if lost:
            raise MaintenanceError(
                f"{result.table}: refs {lost} pointed at snapshots expired by a concurrent change; no file was "
                "deleted. Re-create the tags and re-run expiry."
            )
        break
    else:
        raise MaintenanceError(
            f"{result.table}: lost the commit race {policy.max_commit_attempts} times; nothing expired"
        )
    result.expired_ids = [s.snapshot_id for s in expired]
    if dry_run or not expired:
        result.snapshots_after = result.snapshots_before - (len(expired) if dry_run else 0)
        result.seconds = time.perf_counter() - started
        return result

    kept = reachable(table, table.snapshots())
    gone = reachable(table, expired, known=kept)  # a manifest kept snapshots share has only kept files
    data = {p: n for p, n in gone.files.items() if p not in kept.files}
    manifests = {p: n for p, n in gone.manifests.items() if p not in kept.manifests}
    lists = gone.manifest_lists - kept.manifest_lists
    list_sizes = {p: _size(table, p) for p in lists}
    failed = delete_files(table.io, [*data, *manifests, *lists])
    failed_set = set(failed)
    result.data_files_deleted = len([p for p in data if p not in failed_set])
    result.manifests_deleted = len([p for p in manifests if p not in failed_set])
    result.manifest_lists_deleted = len([p for p in lists if p not in failed_set])
    sizes = {**data, **manifests, **list_sizes}
    result.bytes_deleted = sum(n for p, n in sizes.items() if p not in failed_set)
    result.not_deleted = failed
    result.snapshots_after = len(table.snapshots())
    result.seconds = time.perf_counter() - started
    return result


def _size(table: Table, path: str) -> int:
    try:
        return len(table.io.new_input(path))
    except OSError:
        return 0
