"""OHLCV bar assets.

- `bars_1m`, `bars_5m`, `bars_1h`, `bars_1d`: daily-partitioned by exchange trading day (XASX calendar). A run
  recomputes whole days: backfill a range or re-materialise one day from the UI. bars_1m reads the day's ticks;
  the others roll the day up from bars_1m.
- `bars_live` (unpartitioned, in `ingest_job` after `validated_ticks`): after every micro-batch merges only the new
  ticks into the bars they touch, in all four tables, and reports a materialisation of each (table, day) it
  changed, so the partitioned assets show per-day status and metadata for live updates too.
"""

import datetime as dt
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

from k2_assets.bars.build import BarsRunResult, BarTables, DayReport, rebuild_days, rollup_days, update_live
from k2_assets.bars.partitions import trading_day_partitions
from k2_assets.bars.restate import ALLOWED_LATENESS_US, GRACE_US
from k2_assets.serving import dq_worker
from k2_assets.ticks.assets import validated_ticks
from k2_resources.iceberg import IcebergResource
from k2_resources.pipeline import PipelineResource

GROUP = "bars"
BAR_PARTITIONS = trading_day_partitions("ASX")
POOL = "k2_bars"  # one bar writer at a time when the instance limits this pool (writers also re-plan on conflict)
KINDS = {"polars", "iceberg"}


def _day_metadata(report: DayReport) -> dict[str, Any]:
    return {
        "trading_date": dg.MetadataValue.text(report.day[1].isoformat()),
        "bars": dg.MetadataValue.int(report.bars),
        "bars_written": dg.MetadataValue.int(report.bars_written),
        "bars_restated": dg.MetadataValue.int(report.bars_restated),
        "ticks_read": dg.MetadataValue.int(report.ticks_read),
        "open_bars": dg.MetadataValue.int(report.open_bars),
    }


def _run_metadata(result: BarsRunResult, interval: str) -> dict[str, Any]:
    rows = [r for r in result.reports if r.interval == interval]
    totals = result.totals(interval)
    meta: dict[str, Any] = {
        "bars_written": dg.MetadataValue.int(totals["bars_written"]),
        "bars_restated": dg.MetadataValue.int(totals["bars_restated"]),
        "open_bars": dg.MetadataValue.int(totals["open_bars"]),
        "ticks_read": dg.MetadataValue.int(sum(r.ticks_read for r in rows)),
        "corrections_written": dg.MetadataValue.int(result.corrections),
        "source_snapshot_id": dg.MetadataValue.text(str(result.source_snapshot_id)),
        "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
    }
    if len(rows) > 1:
        lines = ["| day | bars | written | restated | ticks read | open |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {r.day[1]} | {r.bars} | {r.bars_written} | {r.bars_restated} | {r.ticks_read} | {r.open_bars} |"
            for r in rows
        ]
        meta["per_day"] = dg.MetadataValue.md("\n".join(lines))
    return meta


def _days(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> list[tuple[str, dt.date]]:
    return [(pipeline.exchange, dt.date.fromisoformat(key)) for key in context.partition_keys]


@dg.asset(
    group_name=GROUP,
    deps=[validated_ticks],
    kinds=KINDS,
    pool=POOL,
    description="Live bar updates after each micro-batch: only the (symbol, window) bars the new ticks fall in are "
    "recomputed (1m from the new ticks merged into the stored bar state, 5m/1h/1d rolled up from 1m), final bars "
    "that change are restated (revision + 1, market_data.bar_corrections). Reports a materialisation of each "
    "partition of bars_1m/5m/1h/1d it changed.",
)
def bars_live(context: dg.AssetExecutionContext, iceberg: IcebergResource) -> dg.MaterializeResult:  # type: ignore[type-arg]
    try:
        result = update_live(BarTables.open(iceberg), run_id=context.run_id)
    finally:
        # validated_ticks left its gate's Data Docs building while the bars were computed: they are part of the run.
        dq_worker.wait_docs()
    by_partition: dict[tuple[str, str], DayReport] = {}
    for report in result.reports:
        if report.bars_written or report.ticks_read:
            by_partition[(report.interval, report.day[1].isoformat())] = report
    keys = set(BAR_PARTITIONS.get_partition_keys())
    skipped: dict[str, int] = defaultdict(int)
    for (interval, key), report in sorted(by_partition.items()):
        if key not in keys:
            skipped[key] += 1
            continue
        context.log_event(
            dg.AssetMaterialization(
                asset_key=f"bars_{interval}",
                partition=key,
                description="live update (bars_live)",
                metadata={**_day_metadata(report), "run_mode": dg.MetadataValue.text("live")},
            )
        )
    if skipped:
        context.log.warning(f"bars written for days outside the partition range/calendar: {sorted(skipped)}")
    marks = {k: dt.datetime.fromtimestamp(v / 1e6, dt.UTC).isoformat() for k, v in result.watermark.items()}
    context.log.info(
        f"bars_live: {result.ticks_read} new ticks, {result.totals('1m')['bars_written']} 1m bars written, "
        f"{result.corrections} corrections, {result.seconds:.2f}s"
    )
    return dg.MaterializeResult(
        metadata={
            **_run_metadata(result, "1m"),
            "partitions_updated": dg.MetadataValue.json(sorted(f"bars_{i}:{k}" for i, k in by_partition)),
            "event_watermark": dg.MetadataValue.json(marks),
            "allowed_lateness_s": dg.MetadataValue.float(ALLOWED_LATENESS_US / 1e6),
            "grace_s": dg.MetadataValue.float(GRACE_US / 1e6),
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[validated_ticks],
    partitions_def=BAR_PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds=KINDS,
    pool=POOL,
    description="1-minute OHLCV + trade count + VWAP per symbol for one exchange trading day, recomputed whole from "
    "the day's validated ticks; changed final bars are restated (revision + 1, bar_corrections reason 'rebuild').",
)
def bars_1m(
    context: dg.AssetExecutionContext,
    iceberg: IcebergResource,
    pipeline: PipelineResource,  # type: ignore[type-arg]
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    result = rebuild_days(BarTables.open(iceberg), _days(context, pipeline), run_id=context.run_id)
    return dg.MaterializeResult(metadata=_run_metadata(result, "1m"))


def _rollup_asset(interval: str, what: str, upstream: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"bars_{interval}",
        group_name=GROUP,
        deps=[upstream],
        partitions_def=BAR_PARTITIONS,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds=KINDS,
        pool=POOL,
        description=f"{what} bars of one trading day rolled up exactly from bars_1m (open = first 1m open, close "
        "= last, VWAP from the exact notional); changed final bars are restated.",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        iceberg: IcebergResource,
        pipeline: PipelineResource,  # type: ignore[type-arg]
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]
        result = rollup_days(BarTables.open(iceberg), interval, _days(context, pipeline), run_id=context.run_id)
        return dg.MaterializeResult(metadata=_run_metadata(result, interval))

    return _asset


bars_5m = _rollup_asset("5m", "5-minute", bars_1m)
bars_1h = _rollup_asset("1h", "1-hour (exchange-local hours)", bars_1m)
bars_1d = _rollup_asset("1d", "Daily (the exchange trading day)", bars_1m)

BAR_ASSETS = [bars_live, bars_1m, bars_5m, bars_1h, bars_1d]
bars_daily_job = dg.define_asset_job(
    "bars_daily_job",
    selection=dg.AssetSelection.assets(bars_1m, bars_5m, bars_1h, bars_1d),
    partitions_def=BAR_PARTITIONS,
    description="Recompute whole trading days of bars (1m from ticks, then 5m/1h/1d): backfills, re-runs.",
)


@dg.schedule(
    job=bars_daily_job,
    cron_schedule="30 16 * * 1-5",
    execution_timezone="Australia/Sydney",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Settles the day after the XASX close: recomputes today's partitions whole (a reconciliation of the "
    "live path against the ticks) and marks every bar of the closed session final.",
)
def bars_settle_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    scheduled = context.scheduled_execution_time
    key = (scheduled or dt.datetime.now(dt.UTC)).astimezone(ZoneInfo("Australia/Sydney")).date().isoformat()
    if key not in BAR_PARTITIONS.get_partition_keys():
        return dg.SkipReason(f"{key} is not an XASX trading day")
    return dg.RunRequest(run_key=f"settle-{key}", partition_key=key, tags={"k2/bars": "settle"})
