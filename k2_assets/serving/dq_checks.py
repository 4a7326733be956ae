"""The Great Expectations check of the bars: suite `bars` on the bars_1m days the last live update changed.

Bars are derived (a pure function of published ticks), so this check audits after the write rather than gating a
publish; it is blocking so a failure stops anything downstream in the same run and shows in the UI, and, like the
ticks gate, it appends its results to dq_results and to the Data Docs.
"""

import datetime as dt
import json
from typing import Any

import dagster as dg
import polars as pl

from k2_assets.serving.dq_results import record_results, results_frame
from k2_assets.ticks.gate import session_window
from k2_assets.ticks.quality import QualityResource
from k2_resources.arrow_util import to_integer_space
from k2_resources.filters import any_of, eq
from k2_resources.iceberg import IcebergResource
from k2_resources.tables import DQ_RESULTS

BARS_CHECK = "bars_quality_gate"
PRICE_COLUMNS = ("open", "high", "low", "close", "vwap")


def changed_days(metadata: dict[str, Any]) -> list[str]:
    """Days of bars_1m a bars_live materialisation reports ("bars_1m:2026-11-25" entries)."""
    value = metadata.get("partitions_updated")
    items = value.value if isinstance(value, dg.JsonMetadataValue) else value or []
    return sorted({str(i).split(":", 1)[1] for i in items if str(i).startswith("bars_1m:")})  # type: ignore[union-attr]


def bars_frame(bars: pl.DataFrame, derivative_symbols: frozenset[str]) -> Any:
    frame = bars.with_columns(
        pl.col("window_start").alias("window_start_us"),
        pl.from_epoch("window_start", time_unit="us"),
        *[(pl.col(c) / 1_000_000).alias(c) for c in PRICE_COLUMNS],
        pl.col("symbol").is_in(list(derivative_symbols)).fill_null(False).alias("is_derivative"),
    ).select(
        pl.col("exchange").cast(pl.Categorical),  # GE pickles its input: categoricals are cheap, strings not
        pl.col("symbol").cast(pl.Categorical),
        "trading_date",
        "window_start",
        "window_start_us",
        *PRICE_COLUMNS,
        "volume",
        "trade_count",
        "is_derivative",
    )
    return frame.to_pandas()


@dg.asset_check(
    asset=dg.AssetKey("bars_live"),
    blocking=True,
    description="Great Expectations suite `bars` (quality_suites/bars.json) on the bars_1m days this live update "
    "changed: OHLC consistency, keys, ranges, uniqueness, windows within the session.",
)
def bars_quality_gate(
    context: dg.AssetCheckExecutionContext, iceberg: IcebergResource, quality: QualityResource
) -> dg.AssetCheckResult:
    from k2_assets.serving.dq_suites import run_suite

    event = context.instance.get_latest_materialization_event(dg.AssetKey("bars_live"))
    materialization = event.asset_materialization if event is not None else None
    days = changed_days(dict(materialization.metadata) if materialization is not None else {})
    if not days:
        return dg.AssetCheckResult(passed=True, metadata={"skipped": "no bars_1m day changed"})
    table = iceberg.load("bars_1m")
    arrow = table.scan(row_filter=any_of([eq("trading_date", d) for d in days])).to_arrow()
    bars = pl.from_arrow(to_integer_space(arrow))
    assert isinstance(bars, pl.DataFrame)
    config = quality.config()
    codes = bars["exchange"].unique().to_list() or ["ASX"]
    session_open, session_close = session_window(
        [(c, dt.date.fromisoformat(d)) for c in codes for d in days], config.gate.session_grace_us
    )
    parameters = {"session_open_us": session_open, "session_close_us": session_close}
    outcome = run_suite(
        "bars",
        bars_frame(bars, config.rules.derivative_symbols),
        parameters,
        run_name=context.run.run_id,
        docs_dir=config.gate.docs_dir,
    )
    record_results(
        iceberg.ensure_table(DQ_RESULTS),
        results_frame(
            [outcome],
            run_id=context.run.run_id,
            asset="bars_1m",
            batch=",".join(days),
            snapshot_id=snapshot.snapshot_id if (snapshot := table.current_snapshot()) is not None else None,
            published=True,
        ),
    )
    failed = outcome.failed
    lines = ["| expectation | column | observed |", "|---|---|---|"]
    lines += [f"| {e.expectation} | {e.column or ''} | `{e.observed.replace('|', '/')}` |" for e in failed]
    metadata: dict[str, Any] = {
        "suite": outcome.suite,
        "days": dg.MetadataValue.json(days),
        "bars_checked": bars.height,
        "expectations": len(outcome.expectations),
        "failed": len(failed),
        "pass_rate": round(outcome.pass_rate, 4),
        "failed_expectations": dg.MetadataValue.md("\n".join(lines) if failed else "none"),
        "parameters": dg.MetadataValue.json(json.loads(json.dumps(parameters))),
        "seconds": round(outcome.seconds, 3),
    }
    if outcome.docs_index is not None:
        metadata["data_docs"] = dg.MetadataValue.path(str(outcome.docs_index))
    return dg.AssetCheckResult(passed=outcome.success, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)
