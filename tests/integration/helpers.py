"""Helpers shared by integration and chaos tests: produce a feed, run the pipeline, read tables back."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import polars as pl

from k2.feed.producer import ProduceResult, produce_feed
from k2.feed.simulator import FaultRates, generate
from k2.runner import RunSummary, run_until_caught_up
from k2_resources.duckdb import connect
from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka import KafkaResource
from k2_resources.schemas import FileSchemaStore

SESSION = dt.date(2026, 11, 25)


def produce(settings: Settings, n: int, seed: int = 7, faults: FaultRates | None = None) -> ProduceResult:
    feed = generate(n, seed=seed, day=SESSION, faults=faults or FaultRates())
    kafka = KafkaResource.from_settings(settings)
    return produce_feed(kafka, settings.tick_topic, feed, FileSchemaStore(), settings.topic_partitions)


def run(settings: Settings, instance: dg.DagsterInstance) -> RunSummary:
    return run_until_caught_up(settings, instance=instance)


def query(settings: Settings, sql: str) -> pl.DataFrame:
    return connect(IcebergResource.from_settings(settings)).sql(sql).pl()


def raw_offsets(settings: Settings) -> pl.DataFrame:
    return query(settings, "SELECT kafka_partition, kafka_offset FROM raw_ticks")


def as_offset_set(positions: list[tuple[int, int]]) -> set[tuple[int, int]]:
    return set(positions)
