"""`k2 dr ...`: catalog backup and rebuild (k2/dr.py), mounted on the main CLI."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from k2_resources.env import load_settings

dr_app = typer.Typer(help="Disaster recovery of the Iceberg catalog.", no_args_is_help=True)
console = Console(width=None if sys.stdout.isatty() else 200)


@dr_app.command("backup")
def backup_command(
    out: Annotated[
        Path | None, typer.Option(help="JSON file to write (default <K2_HOME>/backups/catalog-<utc>.json)")
    ] = None,
) -> None:
    """Dump the catalog (namespaces, properties, every table's metadata pointer, snapshot and row count) to JSON."""
    from k2.dr import backup

    settings = load_settings()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out or settings.home / "backups" / f"catalog-{stamp}.json"
    document = backup(settings, out)
    table = Table("table", "snapshot", "rows", "metadata")
    for t in document["tables"]:
        table.add_row(t["identifier"], str(t["current_snapshot_id"]), f"{t['total_records']:,}", t["metadata_location"])
    console.print(table)
    console.print(f"catalog backup of {len(document['tables'])} table(s): {out}")


@dr_app.command("rebuild-catalog")
def rebuild_command(
    backup: Annotated[
        Path | None, typer.Option(help="A `k2 dr backup` file: namespace properties, table locations")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be registered")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Register every table again from the newest metadata file in the warehouse (after the catalog was lost)."""
    from k2.dr import rebuild_catalog

    report = rebuild_catalog(load_settings(), backup, dry_run=dry_run)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=1) + "\n")
        return
    table = Table("table", "action", "version", "since backup", "metadata")
    for t in report.tables:
        note = f"{t.action} (ambiguous: {t.candidates_at_version} files)" if t.ambiguous else t.action
        table.add_row(t.identifier, note, str(t.version), t.since_backup, t.metadata_location)
    console.print(table)
    if report.missing_from_warehouse:
        console.print(f"[red]in the backup but not in the warehouse:[/red] {', '.join(report.missing_from_warehouse)}")
        raise typer.Exit(1)
