"""`k2 quarantine ...` and `k2 dq ...`: the reviewer's and the compliance officer's commands."""

from __future__ import annotations

import datetime as dt
import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from k2_resources.env import load_settings

quarantine_app = typer.Typer(help="Review and re-admit quarantined ticks.", no_args_is_help=True)
dq_app = typer.Typer(help="Data-quality results: the Great Expectations gate of every batch.", no_args_is_help=True)
console = Console(width=None if sys.stdout.isatty() else 200)


@quarantine_app.command("release")
def release_cmd(
    reason: Annotated[str, typer.Option(help="Reason code to release (anomaly)")],
    symbol: Annotated[str, typer.Option(help="Symbol whose rows to release")],
    exchange: Annotated[str | None, typer.Option(help="Only this exchange (default: any)")] = None,
    note: Annotated[str, typer.Option(help="Why (kept in the audit record)")] = "",
    by: Annotated[str | None, typer.Option(help="Reviewer (default: the OS user)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be released, change nothing")] = False,
) -> None:
    """Move rows quarantined only for REASON of SYMBOL into ticks, with an audit record; `k2 run` then restates the
    bars of the days they touch."""
    from k2.display import print_frame
    from k2_assets.ticks.release import release
    from k2_resources.iceberg import IcebergResource
    from k2_resources.tables import QUARANTINE, QUARANTINE_RELEASES, TICKS

    iceberg = IcebergResource.from_settings(load_settings())
    catalog = iceberg.catalog()
    result = release(
        iceberg.ensure_table(TICKS, catalog),
        iceberg.ensure_table(QUARANTINE, catalog),
        iceberg.ensure_table(QUARANTINE_RELEASES, catalog),
        reason=reason,
        symbol=symbol.upper(),
        exchange=exchange.upper() if exchange else None,
        released_by=by or getpass.getuser(),
        note=note,
        dry_run=dry_run,
    )
    verb = "would release" if dry_run else "released"
    console.print(
        f"{result.release_id}: {verb} {result.published} {symbol.upper()} tick(s) into ticks"
        + (f", {result.already_in_ticks} already there" if result.already_in_ticks else "")
        + ("" if dry_run else f" (ticks snapshot {result.ticks_snapshot_id}); run `k2 run` to restate the bars")
    )
    shown = ["kafka_partition", "kafka_offset", "sequence", "exchange_ts", "price", "outcome"]
    print_frame(console, result.rows.select(shown).head(20))


@dq_app.command("report")
def report_cmd(
    date: Annotated[str | None, typer.Option(help="Day (UTC) YYYY-MM-DD; default today")] = None,
) -> None:
    """Summary of the day's quality gates, quarantine, sequence gaps and releases, and where the Data Docs are."""
    from k2.display import print_frame
    from k2_assets.serving.dq_report import build_report
    from k2_resources.iceberg import IcebergResource

    settings = load_settings()
    day = dt.date.fromisoformat(date) if date else dt.datetime.now(dt.UTC).date()
    report = build_report(IcebergResource.from_settings(settings), day, Path(settings.home) / "data_docs")
    console.print(
        f"[bold]Data quality {day}[/bold]: {report.check_runs} check run(s), {report.blocked_runs} blocked, "
        f"{report.expectations['evaluated'].sum() or 0} expectation results, pass rate {report.pass_rate:.2%}"
    )
    if not report.expectations.is_empty():
        print_frame(console, report.expectations)
    console.print("Quarantined by reason:")
    print_frame(console, report.quarantined)
    console.print("Sequence gaps and resets detected:")
    print_frame(console, report.sequences)
    console.print(f"Quarantine rows released: {report.released}")
    docs = report.docs_index
    console.print(f"Data Docs: {docs}" + ("" if docs.exists() else " (not built yet: no gate has run here)"))
