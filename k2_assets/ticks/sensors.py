"""The Kafka sensor: plans micro-batches from end offsets; never consumes."""

import json

import dagster as dg

from k2_assets.ticks.planning import batch_key, plan_ranges, ranges_to_config, slowest_watermark
from k2_resources.degradation import DegradationResource, Level
from k2_resources.errors import K2Error
from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.kafka import KafkaResource
from k2_resources.pipeline import PipelineResource
from k2_resources.tables import QUARANTINE, RAW_TICKS, TICKS

INGEST_JOB = "ingest_job"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def plan_next_batch(kafka: KafkaResource, iceberg: IcebergResource, pipeline: PipelineResource) -> list:  # type: ignore[type-arg]
    """Ranges from the slowest committed watermark of the ingest tables to the log end (Iceberg is the truth, so a
    failed run's offsets are planned again)."""
    topic = pipeline.tick_topic
    marks = [read_watermarks(iceberg.ensure_table(d)) for d in (RAW_TICKS, TICKS, QUARANTINE)]
    committed = slowest_watermark(topic, *marks) if all(topic in m for m in marks) else marks[0].get(topic, {})
    return plan_ranges(topic, kafka.offsets(topic), committed, pipeline.max_batch_per_partition)


@dg.sensor(
    job_name=INGEST_JOB,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Plans the next Kafka micro-batch [committed watermark, end offset) per partition.",
)
def kafka_ticks_sensor(
    context: dg.SensorEvaluationContext,
    kafka: KafkaResource,
    iceberg: IcebergResource,
    pipeline: PipelineResource,
    degradation: DegradationResource,
) -> dg.SensorResult | dg.SkipReason:
    in_flight = context.instance.get_runs(dg.RunsFilter(job_name=INGEST_JOB, statuses=IN_FLIGHT), limit=1)
    if in_flight:
        return dg.SkipReason(f"batch {in_flight[0].run_id} is still running; one batch at a time keeps offsets ordered")
    # Degradation cascade (docs/DEGRADATION.md): storage or Kafka down pauses ingest; lag defers the bars.
    previous = Level(int(json.loads(context.cursor).get("level", 0))) if context.cursor else Level.NORMAL
    health = degradation.assess(kafka, iceberg, pipeline.tick_topic, previous)
    if health.pauses_ingest:
        return dg.SkipReason(health.describe())
    try:
        ranges = plan_next_batch(kafka, iceberg, pipeline)
    except K2Error as exc:
        return dg.SkipReason(f"cannot plan: {exc}")
    if not ranges:
        return dg.SkipReason(f"{pipeline.tick_topic}: nothing new past the committed watermark")
    if health.level != previous:
        context.log.warning(health.describe())
    state = json.loads(context.cursor) if context.cursor else {"seq": 0}
    seq = int(state.get("seq", 0)) + 1
    planned = {f"{r.topic}:{r.partition}": r.stop for r in ranges}
    key = batch_key(ranges)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                # A failed run's key is never launched again, so a retried batch gets a new key.
                run_key=f"{key}-{seq}",
                run_config={"ops": {"raw_ticks": {"config": {"ranges": ranges_to_config(ranges)}}}},
                tags={
                    "k2/batch": key,
                    "k2/ticks": str(sum(r.size for r in ranges)),
                    "k2/degradation": health.level.label,
                },
                asset_selection=health.asset_selection,
            )
        ],
        cursor=json.dumps({"seq": seq, "planned": planned, "level": int(health.level)}),
    )
