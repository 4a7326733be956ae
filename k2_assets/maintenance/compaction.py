"""Compaction: rewrite partitions of many small files into a few large sorted ones, in one atomic Iceberg commit.

Safety (ARCHITECTURE.md decision 2):
- The commit deletes exactly the files it read and adds the files it wrote (pyiceberg's overwrite producer with
  explicit `delete_data_file` / `append_data_file`): one snapshot, no row-level predicate. The same catalog commit
  adds an empty append on top, so the current snapshot no longer lists the replaced files (see _commit).
- The snapshot carries the `k2.*` summary properties of its parent, the watermark included, so the exactly-once
  check of ingest reads the same watermark before and after compaction.
- Ingest tables have the library's commit retry off (`commit.retry.num-retries=0`), so a compaction commit can
  only land on the very snapshot whose properties it copied. When ingest commits in between, the commit fails;
  compaction reloads the table, keeps each partition whose input files are all still live (giving up the
  others), copies the new parent's properties and commits again, reusing the files it already wrote. Ingest's own
  retry (commit_offset_ranges) absorbs the conflicts compaction causes it.
- A write-audit-publish batch staged on a branch (validated ticks) publishes only if main has not moved, so
  compaction does not commit while one is staged: it waits (up to `max_wait_s`) for the publish, then commits on
  top of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.table.refs import MAIN_BRANCH, SnapshotRefType

from k2_assets.maintenance.files import LiveFiles, PartitionKey, delete_files, live_files, partition_label
from k2_assets.maintenance.rewrite import dictionary_columns, read_files, sort_rows, sort_spec, write_sorted
from k2_resources.errors import ConfigurationError
from k2_resources.iceberg import BATCH_PROPERTY, WATERMARK_PROPERTY

MB = 1024 * 1024
MAINTENANCE_PROPERTY = "k2.maintenance"
# Summary properties that describe the commit that wrote them rather than the table's state: not carried forward.
EVENT_PROPERTIES = frozenset({BATCH_PROPERTY, "k2.wap", "k2.audit.flush-id"})
# A table with this property set to "true" promises never to rewrite a row (the audit log): compaction skips it.
APPEND_ONLY_PROPERTY = "k2.append-only"
# A file at least this fraction of the target is already "big": left alone, not rewritten with the small ones.
BIG_FILE_FRACTION = 0.75


@dataclass(frozen=True)
class CompactionPolicy:
    """When a partition is compacted and what it is rewritten into."""

    max_files_per_partition: int = 100
    min_avg_file_bytes: int = 50 * MB
    target_file_bytes: int = 512 * MB
    row_group_rows: int = 131_072
    max_commit_attempts: int = 6
    threads: int = 2
    max_wait_s: float = 120.0  # how long the commit waits for a staged write-audit-publish batch to publish
    poll_s: float = 0.5
    stale_branch_s: float = 600.0  # a branch staged longer ago than this is abandoned, not in flight

    def __post_init__(self) -> None:
        for name in ("max_files_per_partition", "target_file_bytes", "row_group_rows", "max_commit_attempts"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"compaction {name} must be >= 1, got {getattr(self, name)}")
        if self.min_avg_file_bytes < 0 or self.threads < 1:
            raise ConfigurationError("compaction min_avg_file_bytes must be >= 0 and threads >= 1")


@dataclass(frozen=True)
class PartitionPlan:
    key: PartitionKey
    label: str
    files_in_partition: int
    bytes_in_partition: int
    groups: tuple[tuple[DataFile, ...], ...]  # each group is read, sorted and written together

    @property
    def inputs(self) -> list[DataFile]:
        return [f for g in self.groups for f in g]


@dataclass
class CompactionResult:
    table: str
    files_before: int = 0
    files_after: int = 0
    partitions_planned: int = 0
    partitions_compacted: int = 0
    given_up: dict[str, str] = field(default_factory=dict)  # partition label -> why
    files_rewritten: int = 0
    files_written: int = 0
    bytes_rewritten: int = 0
    bytes_written: int = 0
    rows_rewritten: int = 0
    snapshots_before: int = 0
    snapshots_after: int = 0
    commit_attempts: int = 0
    waits: int = 0  # polls spent waiting for a staged write-audit-publish batch
    snapshot_id: int | None = None
    seconds: float = 0.0
    rewrite_seconds: float = 0.0  # reading, sorting and writing
    rewrite_cpu_seconds: float = 0.0  # CPU time of this process (all threads) over the same span
    commit_seconds: float = 0.0  # liveness checks and the commit(s)
    dry_run: bool = False
    planned: list[str] = field(default_factory=list)
    skipped: str = ""  # why the whole table was left alone

    @property
    def rows_per_second(self) -> float:
        return self.rows_rewritten / self.seconds if self.seconds > 0 else 0.0


def plan_compaction(table: Table, policy: CompactionPolicy, live: LiveFiles | None = None) -> list[PartitionPlan]:
    """Partitions with more than `max_files_per_partition` files or an average file smaller than
    `min_avg_file_bytes`, each as groups of small files of about `target_file_bytes` together. Partitions with
    delete files are skipped: rewriting their data files would resurrect deleted rows."""
    live = live if live is not None else live_files(table)
    big = int(policy.target_file_bytes * BIG_FILE_FRACTION)
    plans: list[PartitionPlan] = []
    for key, files in sorted(live.data.items(), key=lambda kv: repr(kv[0])):
        if key in live.deletes or len(files) < 2:
            continue
        total = sum(int(f.file_size_in_bytes) for f in files)
        if len(files) <= policy.max_files_per_partition and total / len(files) >= policy.min_avg_file_bytes:
            continue
        small = [f for f in files if int(f.file_size_in_bytes) < big]
        groups: list[list[DataFile]] = [[]]
        size = 0
        for f in small:
            if groups[-1] and size + int(f.file_size_in_bytes) > policy.target_file_bytes:
                groups.append([])
                size = 0
            groups[-1].append(f)
            size += int(f.file_size_in_bytes)
        kept = tuple(tuple(g) for g in groups if len(g) >= 2)
        if kept:
            plans.append(PartitionPlan(key, partition_label(table, key), len(files), total, kept))
    return plans


def carried_properties(table: Table) -> dict[str, str]:
    """The `k2.*` summary properties of the current snapshot (watermark, bars source snapshot, ...) minus those
    naming a single commit (batch id, ...): what a maintenance snapshot must repeat so readers of the newest summary
    see the same state."""
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return {}
    props = {
        k: v
        for k, v in snapshot.summary.additional_properties.items()
        if k.startswith("k2.") and k not in EVENT_PROPERTIES
    }
    if WATERMARK_PROPERTY in props and table.properties.get("commit.retry.num-retries") != "0":
        raise ConfigurationError(
            f"{table.name()} carries Kafka watermarks but commit.retry.num-retries is not 0: the library's retry "
            "could rebase a maintenance commit onto a newer watermark and regress it; set it to 0 (tables.py does)"
        )
    return props


@dataclass
class _Rewritten:
    plan: PartitionPlan
    outputs: list[DataFile]
    rows: int


def _rewrite(table: Table, plan: PartitionPlan, policy: CompactionPolicy, dictionary: list[str]) -> _Rewritten:
    spec = sort_spec(table)
    outputs: list[DataFile] = []
    rows = 0
    try:
        for group in plan.groups:
            arrow = sort_rows(read_files(table, group), spec)
            rows += arrow.num_rows
            outputs += write_sorted(
                table,
                arrow,
                group[0],
                target_file_bytes=policy.target_file_bytes,
                row_group_rows=policy.row_group_rows,
                sort_order_id=spec.order_id,
                dictionary=dictionary,
            )
    except BaseException:
        delete_files(table.io, [f.file_path for f in outputs])
        raise
    return _Rewritten(plan, outputs, rows)


def _commit(
    table: Table,
    rewritten: list[_Rewritten],
    result: CompactionResult,
    policy: CompactionPolicy,
    before_commit: Callable[[], None] | None,
) -> list[_Rewritten]:
    """Swap inputs for outputs in one snapshot; returns the partitions committed (others are given up)."""
    pending = list(rewritten)
    deadline = time.monotonic() + policy.max_wait_s
    failures = 0

    def give_up(why: str) -> list[_Rewritten]:
        for r in pending:
            result.given_up[r.plan.label] = why
            delete_files(table.io, [f.file_path for f in r.outputs])
        return []

    while True:
        table.refresh()
        live = live_files(table).paths()
        still: list[_Rewritten] = []
        for r in pending:
            if all(f.file_path in live for f in r.plan.inputs):
                still.append(r)
            else:
                result.given_up[r.plan.label] = "another writer replaced or deleted files it read"
                delete_files(table.io, [f.file_path for f in r.outputs])
        pending = still
        if not pending:
            return []
        staged = staged_branches(table, policy.stale_branch_s)
        if staged:
            # A write-audit-publish batch waits on a branch cut from main; moving main now would send it back to
            # the start. Ingest goes first.
            if time.monotonic() >= deadline:
                return give_up(f"a write-audit-publish batch stayed staged on {staged} for {policy.max_wait_s:.0f} s")
            result.waits += 1
            time.sleep(policy.poll_s)
            continue
        properties = {**carried_properties(table), MAINTENANCE_PROPERTY: "compaction"}
        result.commit_attempts += 1
        try:
            if before_commit is not None:
                before_commit()
            with table.transaction() as tx:
                overwrite = tx.update_snapshot(snapshot_properties=properties).overwrite()
                for r in pending:
                    for f in r.plan.inputs:
                        overwrite.delete_data_file(f)
                    for f in r.outputs:
                        overwrite.append_data_file(f)
                overwrite.commit()
                # The overwrite snapshot lists every replaced file as a DELETED manifest entry; readers such as
                # DuckDB decode those on every query until the next append drops that manifest. Ingest is idle at
                # night, so drop it now: an empty append in the same catalog commit, carrying the same properties.
                tx.update_snapshot(snapshot_properties=properties).fast_append().commit()
        except (CommitFailedException, ValidationException):
            failures += 1
            if failures >= policy.max_commit_attempts:
                return give_up(f"lost the commit race {failures} times")
            time.sleep(min(0.05 * 2**failures, 2.0))
            continue
        snapshot = table.current_snapshot()
        result.snapshot_id = snapshot.parent_snapshot_id if snapshot else None  # the overwrite
        return pending


def staged_branches(table: Table, stale_after_s: float) -> list[str]:
    """Branches whose head is a child of main's head, committed less than `stale_after_s` ago: a
    write-audit-publish batch staged and not yet published (an older one is an abandoned audit)."""
    main = table.current_snapshot()
    if main is None:
        return []
    now_ms = time.time() * 1000
    out = []
    for name, ref in table.refs().items():
        if name == MAIN_BRANCH or ref.snapshot_ref_type != SnapshotRefType.BRANCH:
            continue
        head = table.snapshot_by_id(ref.snapshot_id)
        if (
            head is not None
            and head.parent_snapshot_id == main.snapshot_id
            and now_ms - head.timestamp_ms < stale_after_s * 1000
        ):
            out.append(name)
    return sorted(out)


def compact_table(
    table: Table,
    policy: CompactionPolicy = CompactionPolicy(),
    *,
    dry_run: bool = False,
    before_commit: Callable[[], None] | None = None,
) -> CompactionResult:
    """Plan, rewrite and commit the compaction of one table. `before_commit` runs right before each commit
    attempt (tests use it to make another writer commit in between)."""
    started = time.perf_counter()
    table.refresh()
    live = live_files(table)
    result = CompactionResult(table=".".join(table.name()), dry_run=dry_run)
    result.files_before = result.files_after = len(live.data_files())
    result.snapshots_before = result.snapshots_after = len(table.snapshots())
    if table.properties.get(APPEND_ONLY_PROPERTY) == "true":
        result.skipped = f"{APPEND_ONLY_PROPERTY}=true: the table promises never to rewrite its files"
        result.seconds = time.perf_counter() - started
        return result
    plans = plan_compaction(table, policy, live)
    result.partitions_planned = len(plans)
    result.planned = [p.label for p in plans]
    if dry_run or not plans:
        result.seconds = time.perf_counter() - started
        return result
    carried_properties(table)  # refuse an unsafe table before writing anything
    rewrite_started, rewrite_cpu = time.perf_counter(), time.process_time()
    # Which columns to dictionary-encode is judged once per table, on a sample file, not once per group.
    dictionary = dictionary_columns(read_files(table, plans[0].groups[0][:1]))
    with ThreadPoolExecutor(max_workers=policy.threads) as pool:
        futures = [pool.submit(_rewrite, table, plan, policy, dictionary) for plan in plans]
        rewritten: list[_Rewritten] = []
        failure: BaseException | None = None
        for future in futures:
            try:
                rewritten.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - collect every group, clean up, then re-raise the first
                failure = failure or exc
    if failure is not None:
        delete_files(table.io, [f.file_path for r in rewritten for f in r.outputs])
        raise failure
    commit_started = time.perf_counter()
    result.rewrite_seconds = commit_started - rewrite_started
    result.rewrite_cpu_seconds = time.process_time() - rewrite_cpu
    committed = _commit(table, rewritten, result, policy, before_commit)
    result.commit_seconds = time.perf_counter() - commit_started
    result.partitions_compacted = len(committed)
    result.files_rewritten = sum(len(r.plan.inputs) for r in committed)
    result.files_written = sum(len(r.outputs) for r in committed)
    result.bytes_rewritten = sum(int(f.file_size_in_bytes) for r in committed for f in r.plan.inputs)
    result.bytes_written = sum(int(f.file_size_in_bytes) for r in committed for f in r.outputs)
    result.rows_rewritten = sum(r.rows for r in committed)
    result.files_after = len(live_files(table).data_files())
    result.snapshots_after = len(table.snapshots())
    result.seconds = time.perf_counter() - started
    return result


def compact_tables(tables: Sequence[Table], policy: CompactionPolicy = CompactionPolicy()) -> list[CompactionResult]:
    return [compact_table(table, policy) for table in tables]
