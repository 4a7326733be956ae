"""raw_ticks and validated_ticks: Kafka -> Iceberg, exactly once."""

import functools

import dagster as dg

from k2_assets.ticks.gate import prewarm_gate
from k2_assets.ticks.ingest import ingest_raw
from k2_assets.ticks.planning import plan_ranges, ranges_from_config, ranges_to_config
from k2_assets.ticks.quality import QualityResource
from k2_assets.ticks.validated import validated_ticks
from k2_assets.ticks.warm import warm_kernels_in_background
from k2_resources import kafka_parallel
from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.kafka import KafkaResource
from k2_resources.kafka_parallel import PARALLEL_MIN_RECORDS
from k2_resources.pipeline import PipelineResource
from k2_resources.tables import RAW_TICKS

GROUP = "ticks"
__all__ = ["raw_ticks", "validated_ticks"]  # validated_ticks lives in validated.py (its quality gate)


class OffsetRangeConfig(dg.Config):
    topic: str
    partition: int
    start: int
    stop: int


class RawTicksConfig(dg.Config):
    """Offsets to land. Empty: everything from the committed watermark to the end of the log (capped per
    partition), which is what a manual materialisation in the UI does."""

    ranges: list[OffsetRangeConfig] = []


@dg.asset(
    group_name=GROUP,
    kinds={"kafka", "iceberg"},
    description="Every record of the tick topic exactly once (topic, partition, offset), decoded where possible.",
)
def raw_ticks(
    context: dg.AssetExecutionContext,
    config: RawTicksConfig,
    kafka: KafkaResource,
    iceberg: IcebergResource,
    pipeline: PipelineResource,
    quality: QualityResource,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    ranges = ranges_from_config([r.model_dump() for r in config.ranges]) if config.ranges else []
    if sum(r.size for r in ranges) >= PARALLEL_MIN_RECORDS:
        kafka_parallel.prestart()  # the read workers import (~0.5 s) while the catalog is opened below
    table = iceberg.ensure_table(RAW_TICKS)
    if not config.ranges:
        committed = read_watermarks(table).get(pipeline.tick_topic, {})
        ranges = plan_ranges(
            pipeline.tick_topic, kafka.offsets(pipeline.tick_topic), committed, pipeline.max_batch_per_partition
        )
    warm_gate = None
    if validated_ticks.key in context.job_def.asset_layer.selected_asset_keys:
        warm_kernels_in_background()  # validated_ticks runs next in this process: its kernels load while Kafka is read
    if validated_ticks.key in context.job_def.asset_layer.selected_asset_keys and quality.gate_enabled:
        # validated_ticks runs next in this process (ingest_job executes in process). Its GE gate takes seconds to
        # import and set up, in the GE worker process (dq_worker): started once the batch is read and decoded (the
        # read workers have both cores until then), it overlaps the Iceberg write and validated_ticks' first steps.
        warm_gate = functools.partial(prewarm_gate, quality.config().gate)
    result = ingest_raw(kafka, table, ranges, pipeline.schema_store(), batch_id=context.run_id, before_commit=warm_gate)
    out = result.outcome
    context.log.info(
        f"raw_ticks: {out.rows_appended} rows appended, {len(out.ranges_skipped)} ranges already committed"
    )
    if result.group_commit_error:  # informational only: Iceberg has the batch either way
        context.log.warning(f"raw_ticks: consumer-group offsets not updated: {result.group_commit_error}")
    return dg.MaterializeResult(
        metadata={
            "rows_appended": out.rows_appended,
            "undecodable": result.undecodable,
            "ranges_planned": dg.MetadataValue.json(ranges_to_config(ranges)),
            "ranges_committed": dg.MetadataValue.json(ranges_to_config(out.ranges_committed)),
            "ranges_already_committed": len(out.ranges_skipped),
            "snapshot_id": str(out.snapshot_id),
            "commit_attempts": out.attempts,
            "group_offsets_committed": result.group_commit_error is None,
            "seconds": round(result.seconds, 3),
            "rows_per_second": round(out.rows_appended / result.seconds) if result.seconds > 0 else 0,
        }
    )
