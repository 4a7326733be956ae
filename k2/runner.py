"""Running the ingest job in-process until Kafka is drained: what `k2 run` and the demo do, on the same job the
sensor launches."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
from rich.console import Console

from k2_assets.ticks.planning import ranges_to_config
from k2_assets.ticks.sensors import INGEST_JOB, plan_next_batch
from k2_resources.env import Settings
from k2_resources.errors import BatchFailedError
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka import KafkaResource
from k2_resources.pipeline import PipelineResource


@dataclass
class RunSummary:
    batches: int = 0
    ticks_planned: int = 0
    run_ids: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.batches} batch(es), {self.ticks_planned:,} Kafka records planned"


def describe_failures(result: dg.ExecuteInProcessResult) -> str:
    """Each failed step with the first line of its error (a failed blocking check names its expectation)."""
    parts = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            message = error.message.strip().splitlines()[0] if error is not None and error.message else "unknown"
            parts.append(f"{event.step_key}: {message}")
    return "; ".join(parts) or "see the run in the Dagster UI"


def run_until_caught_up(
    settings: Settings,
    *,
    max_batches: int = 1_000,
    console: Console | None = None,
    instance: dg.DagsterInstance | None = None,
) -> RunSummary:
    from k2_assets.definitions import build_definitions

    defs = build_definitions(settings)
    job = defs.resolve_job_def(INGEST_JOB)
    kafka = KafkaResource.from_settings(settings)
    iceberg = IcebergResource.from_settings(settings)
    pipeline = PipelineResource.from_settings(settings)
    summary = RunSummary()
    instance = instance or dg.DagsterInstance.get()
    while summary.batches < max_batches:
        ranges = plan_next_batch(kafka, iceberg, pipeline)
        if not ranges and summary.batches > 0:
            break
        # With nothing new in Kafka, one run still lets validated_ticks and the bars catch up with what upstream
        # tables already committed (e.g. after a failed run).
        size = sum(r.size for r in ranges)
        if console is not None:
            console.print(f"batch {summary.batches + 1}: {size:,} records from {len(ranges)} partition(s)")
        result = job.execute_in_process(
            run_config={"ops": {"raw_ticks": {"config": {"ranges": ranges_to_config(ranges)}}}},
            instance=instance,
            tags={"k2/launched-by": "k2 run"},
            raise_on_error=False,
        )
        if not result.success:
            raise BatchFailedError(
                f"ingest_job run {result.run_id} failed: {describe_failures(result)}. "
                "Committed watermarks are unchanged for what did not publish; fix the cause and "
                "run `k2 run` again (it re-plans from Iceberg)."
            )
        summary.batches += 1
        summary.ticks_planned += size
        summary.run_ids.append(result.run_id)
        if not ranges:
            break
    return summary
