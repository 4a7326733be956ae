"""The data-quality report of one day (`k2 dq report --date D`): what compliance reads, from dq_results, quarantine,
sequence_gaps and quarantine_releases, plus where the Great Expectations Data Docs are."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from k2_resources.arrow_util import to_integer_space
from k2_resources.filters import all_of, ge, lt
from k2_resources.iceberg import IcebergResource


@dataclass(frozen=True)
class DqReport:
    day: dt.date
    check_runs: int
    blocked_runs: int
    expectations: pl.DataFrame  # asset, suite, expectation, column, evaluated, failed, last_failed_observed
    quarantined: pl.DataFrame  # reason, rows
    sequences: pl.DataFrame  # kind, detected, still_open
    released: int
    docs_index: Path

    @property
    def pass_rate(self) -> float:
        total = int(self.expectations["evaluated"].sum() or 0)
        failed = int(self.expectations["failed"].sum() or 0)
        return (total - failed) / total if total else 1.0


def _day_scan(iceberg: IcebergResource, name: str, column: str, day: dt.date, fields: tuple[str, ...]) -> pl.DataFrame:
    try:
        table: Table = iceberg.catalog().load_table(iceberg.identifier(name))
    except NoSuchTableError:
        return pl.DataFrame({f: [] for f in fields})
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    row_filter = all_of(ge(column, start.isoformat()), lt(column, (start + dt.timedelta(days=1)).isoformat()))
    frame = pl.from_arrow(to_integer_space(table.scan(row_filter=row_filter, selected_fields=fields).to_arrow()))
    assert isinstance(frame, pl.DataFrame)
    return frame


def build_report(iceberg: IcebergResource, day: dt.date, docs_dir: Path) -> DqReport:
    """Everything checked, quarantined, detected and released on `day` (UTC)."""
    fields = ("run_id", "asset", "suite", "expectation", "column", "success", "observed_value", "published")
    results = _day_scan(iceberg, "dq_results", "checked_at", day, (*fields, "checked_at"))
    if results.is_empty():
        expectations = pl.DataFrame(
            schema={
                "asset": pl.String,
                "suite": pl.String,
                "expectation": pl.String,
                "column": pl.String,
                "evaluated": pl.UInt32,
                "failed": pl.UInt32,
                "last_failed_observed": pl.String,
            }
        )
        runs = blocked = 0
    else:
        expectations = (
            results.sort("checked_at")
            .group_by("asset", "suite", "expectation", "column", maintain_order=True)
            .agg(
                pl.len().alias("evaluated"),
                (~pl.col("success")).sum().alias("failed"),
                pl.col("observed_value").filter(~pl.col("success")).last().alias("last_failed_observed"),
            )
            .sort("failed", "asset", "expectation", descending=[True, False, False])
        )
        per_run = results.group_by("run_id").agg(pl.col("success").all().alias("passed"))
        runs, blocked = per_run.height, per_run.filter(~pl.col("passed")).height
    quarantine = _day_scan(iceberg, "quarantine", "quarantined_at", day, ("reasons", "quarantined_at"))
    quarantined = (
        quarantine.select(pl.col("reasons").explode().alias("reason")).group_by("reason").len("rows").sort("reason")
        if not quarantine.is_empty()
        else pl.DataFrame(schema={"reason": pl.String, "rows": pl.UInt32})
    )
    gaps = _day_scan(iceberg, "sequence_gaps", "detected_at", day, ("kind", "filled_at", "detected_at"))
    sequences = (
        gaps.group_by("kind")
        .agg(pl.len().alias("detected"), pl.col("filled_at").is_null().sum().alias("still_open"))
        .sort("kind")
        if not gaps.is_empty()
        else pl.DataFrame(schema={"kind": pl.String, "detected": pl.UInt32, "still_open": pl.UInt32})
    )
    released = _day_scan(iceberg, "quarantine_releases", "released_at", day, ("release_id", "released_at")).height
    return DqReport(day, runs, blocked, expectations, quarantined, sequences, released, docs_dir / "index.html")
