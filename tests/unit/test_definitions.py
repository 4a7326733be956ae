"""The Dagster code location loads and exposes exactly the expected assets, checks, jobs, sensors and schedules."""

from __future__ import annotations

import dagster as dg

from k2_assets.definitions import build_definitions
from k2_resources.env import load_settings

EXPECTED_ASSETS = {"raw_ticks", "validated_ticks", "bars_1m", "compaction", "expire_snapshots", "remove_orphan_files"}
EXPECTED_ASSETS |= {"bars_live", "bars_5m", "bars_1h", "bars_1d"}
EXPECTED_CHECKS = {
    ("raw_ticks", "raw_ticks_offsets_exactly_once"),
    ("validated_ticks", "ticks_quality_gate"),
    ("bars_live", "bars_quality_gate"),
}
EXPECTED_JOBS = {"ingest_job", "compaction_job", "expire_snapshots_job", "remove_orphan_files_job"}
EXPECTED_JOBS |= {"bars_daily_job"}
EXPECTED_SENSORS = {"kafka_ticks_sensor"}
EXPECTED_SCHEDULES = {"compaction_schedule", "expire_snapshots_schedule", "remove_orphan_files_schedule"}
EXPECTED_SCHEDULES |= {"bars_settle_schedule"}


def test_definitions_snapshot(tmp_path) -> None:
    defs = build_definitions(load_settings({"K2_HOME": str(tmp_path)}))
    repo = defs.get_repository_def()
    assert {k.to_user_string() for k in defs.resolve_all_asset_keys()} == EXPECTED_ASSETS
    checks = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks == EXPECTED_CHECKS
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == EXPECTED_JOBS
    assert {s.name for s in repo.sensor_defs} == EXPECTED_SENSORS
    assert {s.name for s in repo.schedule_defs} == EXPECTED_SCHEDULES


def test_lineage_runs_raw_to_validated_to_bars(tmp_path) -> None:
    defs = build_definitions(load_settings({"K2_HOME": str(tmp_path)}))
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("validated_ticks")).parent_keys == {dg.AssetKey("raw_ticks")}
    assert graph.get(dg.AssetKey("bars_1m")).parent_keys == {dg.AssetKey("validated_ticks")}
    assert graph.get(dg.AssetKey("bars_live")).parent_keys == {dg.AssetKey("validated_ticks")}
    for rolled in ("bars_5m", "bars_1h", "bars_1d"):
        assert graph.get(dg.AssetKey(rolled)).parent_keys == {dg.AssetKey("bars_1m")}


def test_ingest_job_updates_bars_live_and_bar_tables_are_daily_partitioned(tmp_path) -> None:
    defs = build_definitions(load_settings({"K2_HOME": str(tmp_path)}))
    ingest = defs.resolve_job_def("ingest_job")
    assert "bars_live" in {k.to_user_string() for k in ingest.asset_layer.executable_asset_keys}
    graph = defs.resolve_asset_graph()
    for name in ("bars_1m", "bars_5m", "bars_1h", "bars_1d"):
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert partitions is not None
        keys = partitions.get_partition_keys()
        # XASX trading days only: a weekday session is a key, a weekend or Christmas Day is not.
        assert "2026-11-25" in keys and "2026-11-28" not in keys and "2025-12-25" not in keys
    assert graph.get(dg.AssetKey("bars_live")).partitions_def is None


def test_ingest_job_steps_record_metrics_through_hooks(tmp_path) -> None:
    defs = build_definitions(load_settings({"K2_HOME": str(tmp_path)}))
    hooks = {h.name for h in defs.resolve_job_def("ingest_job").hook_defs}
    assert hooks == {"record_asset_success", "record_asset_failure"}
