"""OHLCV bar assets."""

import dagster as dg

from k2_assets.bars.build import build_bars
from k2_assets.ticks.assets import validated_ticks
from k2_resources.iceberg import IcebergResource
from k2_resources.tables import BARS_1M, TICKS


@dg.asset(
    group_name="bars",
    deps=[validated_ticks],
    kinds={"polars", "iceberg"},
    description="1-minute OHLCV + trade count + VWAP per symbol; trading days touched by new ticks are recomputed "
    "and changed bars restated with revision + 1.",
)
def bars_1m(context: dg.AssetExecutionContext, iceberg: IcebergResource) -> dg.MaterializeResult:  # type: ignore[type-arg]
    result = build_bars(iceberg.ensure_table(TICKS), iceberg.ensure_table(BARS_1M))
    context.log.info(f"bars_1m: {result.bars_written} bars for {len(result.trading_dates)} trading day(s)")
    return dg.MaterializeResult(
        metadata={
            "trading_dates": dg.MetadataValue.json([f"{x}:{d.isoformat()}" for x, d in result.trading_dates]),
            "ticks_read": result.ticks_read,
            "bars_written": result.bars_written,
            "bars_restated": result.bars_restated,
            "source_snapshot_id": str(result.source_snapshot_id),
            "seconds": round(result.seconds, 3),
        }
    )
