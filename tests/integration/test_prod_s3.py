"""The whole prod profile at once: Kafka (values framed with schema-registry ids) -> Dagster (run, event and schedule
storage in PostgreSQL) -> Iceberg (PostgreSQL catalog, S3 warehouse on a real S3 server) -> DuckDB over httpfs; then
the catalog is lost and rebuilt from the S3 listing."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from k2.dr import rebuild_catalog
from k2.feed.producer import produce_feed
from k2.feed.simulator import generate
from k2_resources.broker import LocalKafkaBroker
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka import KafkaResource
from k2_resources.postgres import LocalPostgres, dagster_instance, drop_database
from k2_resources.registry import RegistrySchemaStore, register_shipped_schemas
from k2_resources.registry_server import LocalSchemaRegistry
from k2_resources.s3_server import LocalObjectStore
from tests.integration.helpers import SESSION, query, run
from tests.integration.prod_helpers import prod_settings

pytestmark = pytest.mark.integration

COUNTS = """SELECT (SELECT count(*) FROM raw_ticks) AS raw, (SELECT count(*) FROM ticks) AS ticks,
                   (SELECT count(*) FROM quarantine) AS quarantined, (SELECT sum(trade_count) FROM bars_1m) AS in_bars"""


def test_pipeline_on_postgres_s3_and_registry_is_read_by_duckdb_and_survives_catalog_loss(
    tmp_path: Path,
    postgres: LocalPostgres,
    kafka_broker: LocalKafkaBroker,
    object_store: LocalObjectStore,
    schema_registry: LocalSchemaRegistry,
) -> None:
    env = object_store.settings_env(prefix=f"lake-{tmp_path.name}")
    warehouse = env.pop("K2_WAREHOUSE")
    settings = prod_settings(
        tmp_path,
        postgres,
        kafka_broker.bootstrap,
        warehouse=warehouse,
        K2_SCHEMA_REGISTRY_URL=schema_registry.url,
        **env,
    )
    assert settings.warehouse.startswith("s3://") and settings.s3_endpoint == object_store.endpoint
    assert settings.catalog_uri.startswith("postgresql") and settings.dagster_pg_url
    registry = RegistrySchemaStore(schema_registry.url)
    register_shipped_schemas(registry)
    feed = generate(6_000, seed=5, day=SESSION)
    produced = produce_feed(
        KafkaResource.from_settings(settings), settings.tick_topic, feed, registry, settings.topic_partitions
    )
    summary = run(settings, dagster_instance(tmp_path / "dagster", settings.dagster_pg_url))

    # Dagster's runs, event logs and schedule storage are in PostgreSQL: a fresh instance on the database sees them.
    fresh = dagster_instance(tmp_path / "dagster-reader", settings.dagster_pg_url)
    assert {r.run_id for r in fresh.get_runs()} == set(summary.run_ids)
    assert all(r.is_success for r in fresh.get_runs())
    assert fresh.get_latest_materialization_event(dg.AssetKey("raw_ticks")) is not None
    for storage in (fresh.run_storage, fresh.event_log_storage, fresh.schedule_storage):
        assert type(storage).__module__.startswith("dagster_postgres"), type(storage)

    # The table files are objects on the S3 server, nothing under the local home.
    fs = object_store.filesystem()
    parquet = fs.glob(f"{warehouse.removeprefix('s3://')}/market_data/ticks/data/**/*.parquet")
    assert parquet, f"no data files in {warehouse}"
    assert not list(tmp_path.rglob("*.parquet"))

    # DuckDB reads through httpfs with the S3 secret; pyiceberg (a second reader) agrees with it.
    counts = query(settings, COUNTS).row(0)
    assert counts == (produced.records, produced.records, 0, produced.records)
    iceberg = IcebergResource.from_settings(settings)
    assert iceberg.load("ticks").scan().to_arrow().num_rows == produced.records

    tables = {".".join(ident) for ident in iceberg.catalog().list_tables(iceberg.namespace)}
    assert {"market_data.raw_ticks", "market_data.ticks", "market_data.quarantine", "market_data.bars_1m"} <= tables
    drop_database(settings.catalog_uri)
    report = rebuild_catalog(settings)
    assert {t.identifier for t in report.tables if t.action == "registered"} == tables
    assert query(settings, COUNTS).row(0) == counts
