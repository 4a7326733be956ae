"""The maintenance assets run in Dagster against a real SQLite Iceberg catalog and report what they did; the
schedules fire at night in exchange time; table health reflects compaction."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from k2_assets.definitions import build_definitions
from k2_assets.maintenance.assets import compaction, expire_snapshots, remove_orphan_files
from k2_assets.maintenance.compaction import CompactionPolicy, compact_table
from k2_assets.maintenance.files import live_files
from k2_assets.maintenance.health import lakehouse_health, table_health
from k2_resources.env import load_settings
from k2_resources.tables import TICKS, TableDef
from tests.unit.test_maintenance_support import append_batches, catalog_in, tick_rows, ticks_table


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


def test_maintenance_assets_materialise_and_report_files_bytes_and_snapshots(
    tmp_path: Path, dagster_instance: dg.DagsterInstance
) -> None:
    table, data = ticks_table(tmp_path)
    iceberg = catalog_in(tmp_path)
    snapshots = len(table.snapshots())
    small = {"max_files_per_partition": 2, "min_avg_file_mb": 0.0}

    result = dg.materialize(
        [compaction, expire_snapshots, remove_orphan_files],
        resources={"iceberg": iceberg},
        instance=dagster_instance,
        run_config={
            "ops": {
                "compaction": {"config": small},
                "expire_snapshots": {"config": {"older_than_days": 0.0, "retain_last": 1}},
                "remove_orphan_files": {"config": {"dry_run": True}},
            }
        },
    )

    assert result.success
    compacted = _metadata(result, "compaction")
    assert compacted["files_before"] > compacted["files_after"]  # type: ignore[operator]
    assert compacted["rows_rewritten"] > 0 and compacted["bytes_rewritten"] > 0  # type: ignore[operator]
    assert compacted["snapshots_after"] == snapshots + 2
    expired = _metadata(result, "expire_snapshots")
    assert expired["snapshots_before"] == snapshots + 2 and expired["snapshots_after"] == 1
    assert expired["files_deleted"] > 0  # type: ignore[operator]
    orphans = _metadata(result, "remove_orphan_files")
    assert orphans["orphans_found"] == 0 and orphans["dry_run"] is True
    table.refresh()
    assert table.scan().to_arrow().num_rows == data.num_rows


def test_compaction_is_scheduled_nightly_at_two_in_exchange_time(tmp_path: Path) -> None:
    defs = build_definitions(load_settings({"K2_HOME": str(tmp_path)}))
    schedules = {s.name: s for s in defs.get_repository_def().schedule_defs}

    daily = schedules["compaction_schedule"]
    assert (daily.cron_schedule, daily.execution_timezone) == ("0 2 * * *", "Australia/Sydney")
    assert daily.job_name == "compaction_job"
    weekly = schedules["expire_snapshots_schedule"]
    assert weekly.cron_schedule == "0 3 * * 0" and weekly.job_name == "expire_snapshots_job"
    assert schedules["remove_orphan_files_schedule"].job_name == "remove_orphan_files_job"


def test_table_health_shows_small_files_before_compaction_and_not_after(tmp_path: Path) -> None:
    table, _ = ticks_table(tmp_path)
    policy = CompactionPolicy(max_files_per_partition=2, min_avg_file_bytes=0)

    before = table_health(table, policy)
    compact_table(table, policy)
    after = table_health(table, policy)

    assert before["partitions_needing_compaction"] > 0 and after["partitions_needing_compaction"] == 0
    assert after["files_per_partition_max"] < before["files_per_partition_max"]
    assert after["data_files"] < before["data_files"] and after["rows"] == before["rows"]
    assert after["snapshots"] == before["snapshots"] + 2
    assert after["avg_file_bytes"] > before["avg_file_bytes"]
    assert [h["table"] for h in lakehouse_health(catalog_in(tmp_path), policy)] == ["market_data.ticks"]


def test_a_table_that_fails_does_not_stop_the_others_and_fails_the_run(
    tmp_path: Path, dagster_instance: dg.DagsterInstance
) -> None:
    table, _ = ticks_table(tmp_path)
    iceberg = catalog_in(tmp_path)
    unsafe = iceberg.ensure_table(
        TableDef(
            name="a_unsafe",  # sorts before ticks: it fails first
            schema=TICKS.schema,
            partition_spec=TICKS.partition_spec,
            properties={**TICKS.properties, "commit.retry.num-retries": "4"},
        )
    )
    append_batches(unsafe, tick_rows(unsafe, 3_000), 3)
    files_before = len(live_files(table).data_files())

    result = dg.materialize(
        [compaction],
        resources={"iceberg": iceberg},
        instance=dagster_instance,
        run_config={"ops": {"compaction": {"config": {"max_files_per_partition": 2, "min_avg_file_mb": 0.0}}}},
        raise_on_error=False,
    )

    assert not result.success
    failure = result.failure_data_for_node("compaction")
    assert failure is not None and "a_unsafe" in str(failure.error) and "MaintenanceError" in str(failure.error)
    table.refresh()
    assert len(live_files(table).data_files()) < files_before
