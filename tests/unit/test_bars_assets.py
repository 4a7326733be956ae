"""The partitioned bar assets in Dagster, offline (local Iceberg catalog): a day re-run, its metadata, the settle
schedule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from k2_assets.bars.assets import bars_1d, bars_1h, bars_1m, bars_5m, bars_settle_schedule
from k2_assets.bars.build import BarTables
from k2_resources.iceberg import IcebergResource
from k2_resources.pipeline import PipelineResource
from tests.unit.bars_support import mismatches, oracle, publish, stored
from tests.unit.test_bars_late_data import make_ticks


def test_materialising_one_day_builds_all_intervals_with_per_partition_metadata(tmp_path: Path) -> None:
    iceberg = IcebergResource(catalog_uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/w")
    tables = BarTables.open(iceberg)
    ticks = make_ticks(500, seed=4)
    publish(tables, ticks)
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [bars_1m, bars_5m, bars_1h, bars_1d],
            partition_key="2026-11-25",
            resources={"iceberg": iceberg, "pipeline": PipelineResource()},
            instance=instance,
        )
        assert result.success
        meta = result.asset_materializations_for_node("bars_1m")[0].metadata
        assert meta["ticks_read"].value == 500
        assert meta["bars_written"].value == stored(tables, "1m").height > 0
        assert meta["bars_restated"].value == 0
        assert instance.get_materialized_partitions(dg.AssetKey("bars_1d")) == {"2026-11-25"}
    for interval in ("1m", "5m", "1h", "1d"):
        assert mismatches(stored(tables, interval), oracle(ticks, interval)).is_empty()
        assert stored(tables, interval)["is_final"].all()  # a closed session


def test_the_settle_schedule_targets_today_on_trading_days_only() -> None:
    sydney = dt.timezone(dt.timedelta(hours=11))
    on_session = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 25, 16, 30, tzinfo=sydney))
    request = bars_settle_schedule(on_session)
    assert isinstance(request, dg.RunRequest) and request.partition_key == "2026-11-25"
    saturday = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 28, 16, 30, tzinfo=sydney))
    assert isinstance(bars_settle_schedule(saturday), dg.SkipReason)
