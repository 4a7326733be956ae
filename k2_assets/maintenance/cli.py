"""`k2 maintain ...`: the maintenance jobs on demand, mounted on the main CLI (k2/cli.py). Same code as the Dagster
assets; the schedules run them nightly/weekly."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated

import polars as pl
import typer
from rich.console import Console

from k2.display import print_frame
from k2_resources.env import load_settings

maintain_app = typer.Typer(
    help="Table maintenance: compaction, snapshot expiry, orphan files, health.", no_args_is_help=True
)
console = Console(width=None if sys.stdout.isatty() else 200)
MB = 1024 * 1024

Tables = Annotated[list[str] | None, typer.Option("--table", help="Only this table (repeatable; default: all)")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Report what would be done, change nothing")]


def _iceberg():  # type: ignore[no-untyped-def]  # lazy: keep `k2 --help` free of dagster/pyiceberg imports
    from k2_resources.iceberg import IcebergResource

    return IcebergResource.from_settings(load_settings())


@maintain_app.command("compact")
def compact_command(
    table: Tables = None,
    max_files: Annotated[int, typer.Option(help="Compact partitions with more files than this")] = 100,
    min_avg_mb: Annotated[float, typer.Option(help="...or an average file smaller than this (MB)")] = 50.0,
    target_mb: Annotated[float, typer.Option(help="Target size of rewritten files (MB)")] = 512.0,
    dry_run: DryRun = False,
) -> None:
    """Rewrite small-file partitions into large files sorted by (symbol, exchange_ts), one commit per table."""
    from k2_assets.maintenance.assets import maintained_tables
    from k2_assets.maintenance.compaction import CompactionPolicy, compact_table

    policy = CompactionPolicy(
        max_files_per_partition=max_files,
        min_avg_file_bytes=int(min_avg_mb * MB),
        target_file_bytes=int(target_mb * MB),
    )
    rows = []
    for t in maintained_tables(_iceberg(), table or []):
        r = compact_table(t, policy, dry_run=dry_run)
        rows.append(
            {
                "table": r.table,
                "partitions": f"{r.partitions_compacted}/{r.partitions_planned}",
                "given up": len(r.given_up),
                "files": f"{r.files_before} -> {r.files_after}",
                "MB rewritten": round(r.bytes_rewritten / MB, 1),
                "rows": r.rows_rewritten,
                "rows/s": round(r.rows_per_second),
                "seconds": round(r.seconds, 2),
            }
        )
        for label in r.planned if dry_run else []:
            console.print(f"would compact {r.table} {label}")
    print_frame(console, pl.DataFrame(rows), title="compaction" + (" (dry run)" if dry_run else ""))


@maintain_app.command("expire")
def expire_command(
    table: Tables = None,
    older_than_days: Annotated[float, typer.Option(help="Expire snapshots older than this")] = 90.0,
    retain_last: Annotated[int, typer.Option(help="Always keep this many latest snapshots of main")] = 10,
    dry_run: DryRun = False,
) -> None:
    """Expire old snapshots (never the last N, the current or tagged ones) and delete files only they used."""
    from k2_assets.maintenance.assets import maintained_tables
    from k2_assets.maintenance.expiry import ExpiryPolicy, expire_table

    policy = ExpiryPolicy(older_than=dt.timedelta(days=older_than_days), retain_last=retain_last)
    rows = []
    for t in maintained_tables(_iceberg(), table or []):
        r = expire_table(t, policy, dry_run=dry_run)
        rows.append(
            {
                "table": r.table,
                "snapshots": f"{r.snapshots_before} -> {r.snapshots_after}",
                "expired": len(r.expired_ids),
                "data files deleted": r.data_files_deleted,
                "metadata files deleted": r.manifests_deleted + r.manifest_lists_deleted,
                "MB deleted": round(r.bytes_deleted / MB, 1),
                "not deleted": len(r.not_deleted),
            }
        )
    print_frame(console, pl.DataFrame(rows), title="snapshot expiry" + (" (dry run)" if dry_run else ""))


@maintain_app.command("orphans")
def orphans_command(
    table: Tables = None,
    older_than_hours: Annotated[float, typer.Option(help="Safety window: only files older than this")] = 72.0,
    dry_run: DryRun = False,
) -> None:
    """List (--dry-run) or delete files under the table locations that no metadata references."""
    from k2_assets.maintenance.assets import maintained_tables
    from k2_assets.maintenance.orphans import remove_orphans

    rows = []
    for t in maintained_tables(_iceberg(), table or []):
        r = remove_orphans(t, older_than=dt.timedelta(hours=older_than_hours), dry_run=dry_run)
        for orphan in r.orphans:
            console.print(
                f"{'orphan' if dry_run else 'deleted'} {orphan.path} ({orphan.size:,} B, {orphan.modified:%F})"
            )
        rows.append(
            {
                "table": r.table,
                "files": r.files_listed,
                "referenced": r.files_referenced,
                "orphans": len(r.orphans),
                "too young": r.too_young,
                "deleted": r.deleted,
                "MB deleted": round(r.bytes_deleted / MB, 1),
            }
        )
    print_frame(console, pl.DataFrame(rows), title="orphan files" + (" (dry run)" if dry_run else ""))


@maintain_app.command("health")
def health_command(table: Tables = None) -> None:
    """Files per partition, average file size, snapshot count per table."""
    from k2_assets.maintenance.assets import maintained_tables
    from k2_assets.maintenance.health import table_health

    rows = []
    for t in maintained_tables(_iceberg(), table or []):
        h = table_health(t)
        rows.append({k: (", ".join(v) if isinstance(v, list) else v) for k, v in h.items()})
    print_frame(console, pl.DataFrame(rows), title="table health")
