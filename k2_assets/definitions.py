"""The one Definitions object. Resources are chosen from K2_ENV via k2_resources.env."""

from __future__ import annotations

import dagster as dg

from k2_assets.bars.assets import BAR_ASSETS, bars_daily_job, bars_live, bars_settle_schedule
from k2_assets.maintenance.assets import MAINTENANCE_ASSETS, MAINTENANCE_JOBS, maintenance_schedules
from k2_assets.serving.dq_checks import bars_quality_gate
from k2_assets.serving.hooks import METRIC_HOOKS
from k2_assets.serving.resources import MetricsResource
from k2_assets.ticks.assets import raw_ticks, validated_ticks
from k2_assets.ticks.checks import raw_ticks_offsets_exactly_once
from k2_assets.ticks.quality import QualityResource
from k2_assets.ticks.sensors import INGEST_JOB, kafka_ticks_sensor
from k2_resources.degradation import DegradationResource
from k2_resources.duckdb import DuckDBResource
from k2_resources.env import Settings, load_settings
from k2_resources.exchanges import exchange as exchange_info
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka import KafkaResource
from k2_resources.pipeline import PipelineResource

ingest_job = dg.define_asset_job(
    INGEST_JOB,
    selection=dg.AssetSelection.assets(raw_ticks, validated_ticks, bars_live),
    description="One Kafka micro-batch through every stage: raw_ticks -> validated_ticks -> bars_live (which updates "
    "the affected bars of bars_1m/5m/1h/1d).",
    hooks=METRIC_HOOKS,  # each step's figures -> `k2 metrics serve`
    # The steps form one chain, so a process per step (Dagster's default) would only add seconds of start-up per
    # step to every micro-batch; in process, validated_ticks also finds the GE gate warmed by raw_ticks.
    executor_def=dg.in_process_executor,
)


def resources_for(settings: Settings) -> dict[str, object]:
    return {
        "kafka": KafkaResource.from_settings(settings),
        "iceberg": IcebergResource.from_settings(settings),
        "pipeline": PipelineResource.from_settings(settings),
        "duckdb": DuckDBResource(),
        "degradation": DegradationResource.from_settings(settings),
        "metrics": MetricsResource.from_settings(settings),
        "quality": QualityResource.from_settings(settings),
    }


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    return dg.Definitions(
        assets=[raw_ticks, validated_ticks, *BAR_ASSETS, *MAINTENANCE_ASSETS],
        asset_checks=[raw_ticks_offsets_exactly_once, bars_quality_gate],
        jobs=[ingest_job, bars_daily_job, *MAINTENANCE_JOBS],
        sensors=[kafka_ticks_sensor],
        # Maintenance runs at night in the exchange's own time zone (Australia/Sydney for ASX).
        schedules=[*maintenance_schedules(exchange_info(settings.exchange).tz), bars_settle_schedule],
        resources=resources_for(settings),
    )


defs = build_definitions()
