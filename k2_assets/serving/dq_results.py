"""market_data.dq_results: one row per expectation per check run, appended by every quality gate."""

from __future__ import annotations

import time
from collections.abc import Iterable

import polars as pl
from pyiceberg.table import Table

from k2_assets.serving.dq_suites import SuiteOutcome
from k2_resources.arrow_util import conform


def results_frame(
    suites: Iterable[SuiteOutcome],
    *,
    run_id: str,
    asset: str,
    batch: str,
    snapshot_id: int | None,
    published: bool,
    checked_at_us: int | None = None,
) -> pl.DataFrame:
    checked_at = checked_at_us if checked_at_us is not None else int(time.time() * 1_000_000)
    rows = [
        {
            "run_id": run_id,
            "asset": asset,
            "batch": batch,
            "suite": suite.suite,
            "expectation": e.expectation,
            "column": e.column,
            "success": e.success,
            "observed_value": e.observed,
            "element_count": e.element_count,
            "unexpected_count": e.unexpected_count,
            "checked_at": checked_at,
            "snapshot_id": snapshot_id,
            "published": published,
            "kwargs": e.kwargs,
        }
        for suite in suites
        for e in suite.expectations
    ]
    schema = {
        "run_id": pl.String,
        "asset": pl.String,
        "batch": pl.String,
        "suite": pl.String,
        "expectation": pl.String,
        "column": pl.String,
        "success": pl.Boolean,
        "observed_value": pl.String,
        "element_count": pl.Int64,
        "unexpected_count": pl.Int64,
        "checked_at": pl.Int64,
        "snapshot_id": pl.Int64,
        "published": pl.Boolean,
        "kwargs": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def record_results(table: Table, frame: pl.DataFrame) -> int:
    """Append the rows (an append-only log: concurrent appends never conflict in meaning, the library retries)."""
    if frame.is_empty():
        return 0
    table.append(conform(frame.to_arrow(), table.schema().as_arrow()))
    return frame.height
