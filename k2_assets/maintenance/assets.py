"""Maintenance assets: compaction (daily), snapshot expiry and orphan-file removal (weekly), and their jobs and
schedules. Each materialisation records what it did as metadata (files, bytes, snapshots, duration)."""

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import dagster as dg
from pyiceberg.exceptions import NoSuchNamespaceError
from pyiceberg.table import Table

from k2_assets.maintenance.compaction import MB, CompactionPolicy, compact_table
from k2_assets.maintenance.expiry import ExpiryPolicy, expire_table
from k2_assets.maintenance.orphans import remove_orphans
from k2_resources.errors import K2Error, MaintenanceError
from k2_resources.iceberg import IcebergResource

GROUP = "maintenance"
R = TypeVar("R")
COMPACTION_JOB = "compaction_job"
EXPIRE_SNAPSHOTS_JOB = "expire_snapshots_job"
REMOVE_ORPHAN_FILES_JOB = "remove_orphan_files_job"


def maintained_tables(iceberg: IcebergResource, names: Sequence[str]) -> list[Table]:
    """`names` (default: every table of the namespace) that exist; a table not created yet has nothing to do."""
    catalog = iceberg.catalog()
    try:
        existing = {ident[-1]: ident for ident in catalog.list_tables(iceberg.namespace)}
    except NoSuchNamespaceError:  # nothing ingested yet
        return []
    wanted = list(names) or sorted(existing)
    return [catalog.load_table(existing[n]) for n in wanted if n in existing]


def _each(
    context: dg.AssetExecutionContext, tables: list[Table], work: Callable[[Table], R], failures: list[str]
) -> Iterator[R]:
    """`work` on every table; a table that fails is logged and recorded, and the others still run."""
    for table in tables:
        try:
            yield work(table)
        except K2Error as exc:
            name = ".".join(table.name())
            context.log.error(f"{name}: {type(exc).__name__}: {exc}")
            failures.append(f"{name}: {type(exc).__name__}: {exc}")


def _fail_if(failures: list[str], what: str) -> None:
    if failures:
        raise MaintenanceError(
            f"{what} failed on {len(failures)} table(s), the others completed: {'; '.join(failures)}"
        )


def _markdown(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("nothing to do")
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


class CompactionConfig(dg.Config):
    """Partitions with more than `max_files_per_partition` files or an average file below `min_avg_file_mb` are
    rewritten into files of about `target_file_mb`, sorted by the table sort order."""

    tables: list[str] = []
    max_files_per_partition: int = 100
    min_avg_file_mb: float = 50.0
    target_file_mb: float = 512.0
    row_group_rows: int = 131_072
    dry_run: bool = False

    def policy(self) -> CompactionPolicy:
        return CompactionPolicy(
            max_files_per_partition=self.max_files_per_partition,
            min_avg_file_bytes=int(self.min_avg_file_mb * MB),
            target_file_bytes=int(self.target_file_mb * MB),
            row_group_rows=self.row_group_rows,
        )


@dg.asset(
    group_name=GROUP,
    kinds={"iceberg"},
    description="Rewrites small-file partitions into ~512 MB files sorted by (symbol, exchange_ts), one atomic "
    "commit per table that carries the ingest watermark forward.",
)
def compaction(
    context: dg.AssetExecutionContext, config: CompactionConfig, iceberg: IcebergResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    started = time.perf_counter()
    policy = config.policy()
    rows: list[dict[str, Any]] = []
    totals = {"files_before": 0, "files_after": 0, "bytes_rewritten": 0, "rows_rewritten": 0, "given_up": 0}
    snapshots_before = snapshots_after = 0
    failures: list[str] = []
    tables = maintained_tables(iceberg, config.tables)
    for result in _each(context, tables, lambda t: compact_table(t, policy, dry_run=config.dry_run), failures):
        snapshots_before += result.snapshots_before
        snapshots_after += result.snapshots_after
        if result.skipped:
            context.log.info(f"{result.table}: skipped, {result.skipped}")
        for label, why in result.given_up.items():
            context.log.warning(f"{result.table}: gave up compacting {label}: {why}")
        totals["files_before"] += result.files_before
        totals["files_after"] += result.files_after
        totals["bytes_rewritten"] += result.bytes_rewritten
        totals["rows_rewritten"] += result.rows_rewritten
        totals["given_up"] += len(result.given_up)
        rows.append(
            {
                "table": result.table,
                "partitions": f"{result.partitions_compacted}/{result.partitions_planned}",
                "files": f"{result.files_before} -> {result.files_after}",
                "MB rewritten": round(result.bytes_rewritten / MB, 1),
                "rows/s": round(result.rows_per_second),
                "attempts": result.commit_attempts,
                "waits for audit": result.waits,
                "given up": len(result.given_up),
            }
        )
    seconds = time.perf_counter() - started
    _fail_if(failures, "compaction")
    return dg.MaterializeResult(
        metadata={
            **totals,
            "rows_per_second": round(totals["rows_rewritten"] / seconds) if seconds > 0 else 0,
            "snapshots_before": snapshots_before,
            "snapshots_after": snapshots_after,
            "dry_run": config.dry_run,
            "duration_s": round(seconds, 3),
            "tables": _markdown(rows),
        }
    )


class ExpireSnapshotsConfig(dg.Config):
    """Snapshots older than `older_than_days` go, except the last `retain_last` of main, the current one, branch
    heads and tagged snapshots; files only they referenced are deleted."""

    tables: list[str] = []
    older_than_days: float = 90.0
    retain_last: int = 10
    dry_run: bool = False


@dg.asset(
    group_name=GROUP,
    kinds={"iceberg"},
    description="Expires snapshots past the retention (never the last N, the current one or tagged ones) and "
    "deletes the data and metadata files only they referenced.",
)
def expire_snapshots(
    context: dg.AssetExecutionContext, config: ExpireSnapshotsConfig, iceberg: IcebergResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    started = time.perf_counter()
    policy = ExpiryPolicy(older_than=dt.timedelta(days=config.older_than_days), retain_last=config.retain_last)
    rows: list[dict[str, Any]] = []
    totals = {"snapshots_before": 0, "snapshots_after": 0, "snapshots_expired": 0, "files_deleted": 0}
    totals.update({"bytes_deleted": 0, "files_not_deleted": 0})
    failures: list[str] = []
    tables = maintained_tables(iceberg, config.tables)
    for result in _each(context, tables, lambda t: expire_table(t, policy, dry_run=config.dry_run), failures):
        files = result.data_files_deleted + result.manifests_deleted + result.manifest_lists_deleted
        if result.not_deleted:
            context.log.warning(f"{result.table}: could not delete {len(result.not_deleted)} files (orphans now)")
        totals["snapshots_before"] += result.snapshots_before
        totals["snapshots_after"] += result.snapshots_after
        totals["snapshots_expired"] += len(result.expired_ids)
        totals["files_deleted"] += files
        totals["bytes_deleted"] += result.bytes_deleted
        totals["files_not_deleted"] += len(result.not_deleted)
        rows.append(
            {
                "table": result.table,
                "snapshots": f"{result.snapshots_before} -> {result.snapshots_after}",
                "data files deleted": result.data_files_deleted,
                "manifests deleted": result.manifests_deleted + result.manifest_lists_deleted,
                "MB deleted": round(result.bytes_deleted / MB, 1),
            }
        )
    _fail_if(failures, "snapshot expiry")
    return dg.MaterializeResult(
        metadata={
            **totals,
            "dry_run": config.dry_run,
            "duration_s": round(time.perf_counter() - started, 3),
            "tables": _markdown(rows),
        }
    )


class RemoveOrphanFilesConfig(dg.Config):
    """Files under a table location that no metadata references and older than `older_than_hours`."""

    tables: list[str] = []
    older_than_hours: float = 72.0
    dry_run: bool = False


@dg.asset(
    group_name=GROUP,
    kinds={"iceberg"},
    description="Deletes files under each table location that no snapshot or metadata file references and that "
    "are older than the safety window (3 days), so in-flight writes are never touched.",
)
def remove_orphan_files(
    context: dg.AssetExecutionContext, config: RemoveOrphanFilesConfig, iceberg: IcebergResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    started = time.perf_counter()
    window = dt.timedelta(hours=config.older_than_hours)
    rows: list[dict[str, Any]] = []
    found: list[str] = []
    totals = {"files_listed": 0, "orphans_found": 0, "orphans_deleted": 0, "bytes_deleted": 0, "too_young": 0}
    failures: list[str] = []
    tables = maintained_tables(iceberg, config.tables)
    for result in _each(
        context, tables, lambda t: remove_orphans(t, older_than=window, dry_run=config.dry_run), failures
    ):
        found += [o.path for o in result.orphans]
        totals["files_listed"] += result.files_listed
        totals["orphans_found"] += len(result.orphans)
        totals["orphans_deleted"] += result.deleted
        totals["bytes_deleted"] += result.bytes_deleted
        totals["too_young"] += result.too_young
        rows.append(
            {
                "table": result.table,
                "files": result.files_listed,
                "orphans": len(result.orphans),
                "deleted": result.deleted,
                "MB deleted": round(result.bytes_deleted / MB, 1),
            }
        )
    _fail_if(failures, "orphan removal")
    if found:
        context.log.info(f"{len(found)} orphan files ({'listed' if config.dry_run else 'deleted'})")
    return dg.MaterializeResult(
        metadata={
            **totals,
            "dry_run": config.dry_run,
            "duration_s": round(time.perf_counter() - started, 3),
            "orphans": dg.MetadataValue.json(found[:100]),
            "tables": _markdown(rows),
        }
    )


MAINTENANCE_ASSETS = [compaction, expire_snapshots, remove_orphan_files]

compaction_job = dg.define_asset_job(
    COMPACTION_JOB, selection=dg.AssetSelection.assets(compaction), description="Compact small-file partitions."
)
expire_snapshots_job = dg.define_asset_job(
    EXPIRE_SNAPSHOTS_JOB,
    selection=dg.AssetSelection.assets(expire_snapshots),
    description="Expire old snapshots and delete the files only they referenced.",
)
remove_orphan_files_job = dg.define_asset_job(
    REMOVE_ORPHAN_FILES_JOB,
    selection=dg.AssetSelection.assets(remove_orphan_files),
    description="Delete unreferenced files older than the safety window.",
)
MAINTENANCE_JOBS = [compaction_job, expire_snapshots_job, remove_orphan_files_job]


def maintenance_schedules(
    timezone: str,
    *,
    compaction_cron: str = "0 2 * * *",
    expiry_cron: str = "0 3 * * 0",
    orphans_cron: str = "0 4 * * 0",
) -> list[dg.ScheduleDefinition]:
    """Compaction daily at 02:00 exchange time, expiry Sunday 03:00, orphan removal Sunday 04:00 (after expiry,
    whose undeletable leftovers it collects)."""
    return [
        dg.ScheduleDefinition(
            name="compaction_schedule",
            job=compaction_job,
            cron_schedule=compaction_cron,
            execution_timezone=timezone,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Daily compaction at 02:00 exchange time, after the session's ingest has settled.",
        ),
        dg.ScheduleDefinition(
            name="expire_snapshots_schedule",
            job=expire_snapshots_job,
            cron_schedule=expiry_cron,
            execution_timezone=timezone,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Weekly snapshot expiry (90-day retention, last 10 and tagged snapshots kept).",
        ),
        dg.ScheduleDefinition(
            name="remove_orphan_files_schedule",
            job=remove_orphan_files_job,
            cron_schedule=orphans_cron,
            execution_timezone=timezone,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Weekly orphan-file removal (files unreferenced for more than 3 days).",
        ),
    ]
