"""Disaster recovery: the PostgreSQL catalog database is lost; `k2 dr rebuild-catalog` brings every table back from
the metadata files in the warehouse, and ingest resumes exactly where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2_resources.broker import LocalKafkaBroker
from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.postgres import LocalPostgres, dagster_instance, database_exists, drop_database
from tests.integration.helpers import produce, run
from tests.integration.prod_helpers import prod_settings

pytestmark = pytest.mark.integration


def _env(settings: Settings) -> dict[str, str]:
    return {
        "K2_ENV": "prod",
        "K2_HOME": str(settings.home),
        "K2_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "K2_TICK_TOPIC": settings.tick_topic,
        "K2_CATALOG_URI": settings.catalog_uri,
        "K2_DAGSTER_PG_URL": settings.dagster_pg_url or "",
        "K2_WAREHOUSE": settings.warehouse,
    }


def _contents(settings: Settings) -> dict[str, tuple[int | None, pa.Table]]:
    """Every table's current snapshot id and rows (sorted, so equal contents compare equal)."""
    iceberg = IcebergResource.from_settings(settings)
    catalog = iceberg.catalog()
    out = {}
    for ident in catalog.list_tables(iceberg.namespace):
        table = catalog.load_table(ident)
        rows = table.scan().to_arrow()
        keys = [(c, "ascending") for c in rows.column_names if not pa.types.is_nested(rows.schema.field(c).type)]
        snapshot = table.current_snapshot()
        out[ident[-1]] = (snapshot.snapshot_id if snapshot else None, rows.sort_by(keys))
    return out


def test_lost_catalog_database_is_rebuilt_from_warehouse_metadata(
    tmp_path: Path, postgres: LocalPostgres, kafka_broker: LocalKafkaBroker
) -> None:
    settings = prod_settings(tmp_path, postgres, kafka_broker.bootstrap)
    assert settings.dagster_pg_url
    instance = dagster_instance(tmp_path / "dagster", settings.dagster_pg_url)
    first = produce(settings, 5_000, seed=3)
    run(settings, instance)
    before = _contents(settings)
    assert {"raw_ticks", "ticks", "quarantine", "bars_1m"} <= set(before)
    assert before["raw_ticks"][1].num_rows == first.records

    cli = CliRunner()
    backup_file = tmp_path / "catalog-backup.json"
    result = cli.invoke(app, ["dr", "backup", "--out", str(backup_file)], env=_env(settings))
    assert result.exit_code == 0, result.output
    backed_up = json.loads(backup_file.read_text())
    assert {t["identifier"] for t in backed_up["tables"]} == {f"market_data.{n}" for n in before}
    assert "k2:***@" in backed_up["catalog_uri"]  # no password in the backup file

    drop_database(settings.catalog_uri)  # the disaster
    assert not database_exists(settings.catalog_uri)

    # Rebuilt from the warehouse alone (the backup is only a cross-check, passed in the second call).
    result = cli.invoke(app, ["dr", "rebuild-catalog", "--json"], env=_env(settings))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {t["identifier"]: t["action"] for t in report["tables"]} == {
        f"market_data.{n}": "registered" for n in before
    }
    assert _contents(settings) == before
    result = cli.invoke(app, ["dr", "rebuild-catalog", "--json", "--backup", str(backup_file)], env=_env(settings))
    report = json.loads(result.output)
    assert {(t["action"], t["since_backup"]) for t in report["tables"]} == {("kept", "same")}

    # The Kafka watermarks survived with the snapshots: new ticks are ingested once, old ones are not re-read.
    second = produce(settings, 1_000, seed=4)
    run(settings, instance)
    raw = IcebergResource.from_settings(settings).load("raw_ticks")
    assert raw.scan().to_arrow().num_rows == first.records + second.records
    assert sum(read_watermarks(raw)[settings.tick_topic].values()) == first.records + second.records
