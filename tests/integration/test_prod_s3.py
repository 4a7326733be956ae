"""The whole prod profile at once: Kafka -> Dagster (PostgreSQL storage) -> Iceberg (PostgreSQL catalog, S3 warehouse
on a real S3 server) -> DuckDB over httpfs; then the catalog is lost and rebuilt from the S3 listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from k2.dr import rebuild_catalog
from k2_resources.broker import LocalKafkaBroker
from k2_resources.iceberg import IcebergResource
from k2_resources.postgres import LocalPostgres, dagster_instance, drop_database
from k2_resources.s3_server import LocalObjectStore
from tests.integration.helpers import produce, query, run
from tests.integration.prod_helpers import prod_settings

pytestmark = pytest.mark.integration

COUNTS = """SELECT (SELECT count(*) FROM raw_ticks) AS raw, (SELECT count(*) FROM ticks) AS ticks,
                   (SELECT count(*) FROM quarantine) AS quarantined, (SELECT sum(trade_count) FROM bars_1m) AS in_bars"""


def test_pipeline_on_postgres_and_s3_is_read_by_duckdb_and_survives_catalog_loss(
    tmp_path: Path, postgres: LocalPostgres, kafka_broker: LocalKafkaBroker, object_store: LocalObjectStore
) -> None:
    env = object_store.settings_env(prefix=f"lake-{tmp_path.name}")
    warehouse = env.pop("K2_WAREHOUSE")
    settings = prod_settings(tmp_path, postgres, kafka_broker.bootstrap, warehouse=warehouse, **env)
    assert settings.warehouse.startswith("s3://") and settings.s3_endpoint == object_store.endpoint
    produced = produce(settings, 12_000, seed=5)
    assert settings.dagster_pg_url
    run(settings, dagster_instance(tmp_path / "dagster", settings.dagster_pg_url))

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
