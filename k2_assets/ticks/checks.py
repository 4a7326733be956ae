"""Blocking asset checks on the tick tables."""

import dagster as dg
import polars as pl

from k2_assets.ticks.assets import raw_ticks
from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.tables import RAW_TICKS


def offset_coverage(offsets: pl.DataFrame, watermarks: dict[str, dict[int, int]]) -> pl.DataFrame:
    """Per (topic, partition): rows, distinct offsets, and whether they are exactly [min, watermark)."""
    stats = offsets.group_by("kafka_topic", "kafka_partition").agg(
        pl.len().alias("rows"),
        pl.col("kafka_offset").n_unique().alias("distinct"),
        pl.col("kafka_offset").min().alias("first"),
        pl.col("kafka_offset").max().alias("last"),
    )
    marks = pl.DataFrame(
        [(t, p, o) for t, parts in watermarks.items() for p, o in parts.items()],
        schema={"kafka_topic": pl.String, "kafka_partition": pl.Int32, "watermark": pl.Int64},
        orient="row",
    )
    return (
        stats.join(marks, on=["kafka_topic", "kafka_partition"], how="full", coalesce=True)
        .with_columns(
            (
                (pl.col("rows") == pl.col("distinct"))
                & (pl.col("last") - pl.col("first") + 1 == pl.col("rows"))
                & (pl.col("last") + 1 == pl.col("watermark"))
            )
            .fill_null(False)
            .alias("ok")
        )
        .sort("kafka_topic", "kafka_partition")
    )


@dg.asset_check(
    asset=raw_ticks,
    blocking=True,
    description="Every committed offset is present exactly once, "
    "contiguous up to the watermark recorded in the snapshot.",
)
def raw_ticks_offsets_exactly_once(iceberg: IcebergResource) -> dg.AssetCheckResult:
    table = iceberg.ensure_table(RAW_TICKS)
    arrow = table.scan(selected_fields=("kafka_topic", "kafka_partition", "kafka_offset")).to_arrow()
    offsets = pl.from_arrow(arrow)
    assert isinstance(offsets, pl.DataFrame)
    report = offset_coverage(offsets, read_watermarks(table))
    bad = report.filter(~pl.col("ok"))
    return dg.AssetCheckResult(
        passed=bad.is_empty(),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "partitions": report.height,
            "rows": int(report["rows"].sum() or 0),
            "failing_partitions": dg.MetadataValue.md(bad.to_pandas().to_markdown() if not bad.is_empty() else "none"),
        },
    )
