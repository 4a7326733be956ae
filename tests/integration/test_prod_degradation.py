"""The degradation cascade as the ingest sensor applies it (docs/DEGRADATION.md), against real services."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from k2.feed.producer import produce_feed
from k2.feed.simulator import Feed, generate
from k2_assets.definitions import build_definitions, resources_for
from k2_assets.ticks.sensors import INGEST_JOB, kafka_ticks_sensor
from k2_resources.broker import LocalKafkaBroker
from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka import KafkaResource
from k2_resources.local_process import free_port
from k2_resources.postgres import LocalPostgres
from k2_resources.schemas import FileSchemaStore
from k2_resources.tables import BARS_1M
from tests.conftest import make_settings
from tests.integration.helpers import SESSION, produce, query

pytestmark = pytest.mark.integration


def evaluate(settings: Settings, instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources_for(settings))
    result = kafka_ticks_sensor(context)
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(skip_reason=result)
    assert isinstance(result, dg.SensorResult)
    return result


def execute(settings: Settings, instance: dg.DagsterInstance, request: dg.RunRequest) -> None:
    job = build_definitions(settings).resolve_job_def(INGEST_JOB)
    result = job.execute_in_process(
        run_config=request.run_config, instance=instance, asset_selection=request.asset_selection, tags=request.tags
    )
    assert result.success


def test_level_2_catalog_down_pauses_ingest_with_a_reason_and_resumes_when_it_answers(
    tmp_path: Path, kafka_broker: LocalKafkaBroker, dagster_instance: dg.DagsterInstance
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="k2-pg-down-"))
    data_dir.chmod(0o755)
    catalog_server = LocalPostgres(data_dir, free_port())
    catalog_server.start()
    try:
        settings = make_settings(
            tmp_path,
            kafka_broker.bootstrap,
            K2_CATALOG_URI=catalog_server.create_database("catalog"),
            K2_CATALOG_TIMEOUT_S="2",
        )
        produce(settings, 300)
        assert len(evaluate(settings, dagster_instance).run_requests) == 1

        catalog_server.stop(mode="immediate")  # the catalog goes away
        paused = evaluate(settings, dagster_instance)
        assert paused.run_requests == []
        reason = str(paused.skip_reason)
        assert "L2-storage-down" in reason and "catalog unreachable" in reason and "Kafka buffers" in reason

        catalog_server.start()  # and comes back: the next tick plans the same batch, nothing was lost
        resumed = evaluate(settings, dagster_instance)
        assert [r.tags["k2/ticks"] for r in resumed.run_requests] == ["300"]
    finally:
        catalog_server.stop(mode="immediate")


def test_level_3_kafka_down_pauses_ingest_and_says_so(tmp_path: Path, dagster_instance: dg.DagsterInstance) -> None:
    settings = make_settings(tmp_path, f"127.0.0.1:{free_port()}", K2_CATALOG_TIMEOUT_S="2")
    paused = evaluate(settings, dagster_instance)
    assert paused.run_requests == []
    assert "L3-kafka-down" in str(paused.skip_reason) and "reads serve Iceberg only" in str(paused.skip_reason)


def _produce_slices(settings: Settings, sizes: list[int]) -> list[Callable[[], None]]:
    """One simulated session cut into consecutive slices (distinct sequence numbers), each produced when called."""
    feed = generate(sum(sizes), seed=21, day=SESSION)
    kafka = KafkaResource.from_settings(settings)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [
        lambda start=start, size=size: produce_feed(
            kafka,
            settings.tick_topic,
            Feed(feed.ticks.slice(start, size), feed.undecodable_rows[:0], feed.manifest),
            FileSchemaStore(),
            settings.topic_partitions,
        )
        for start, size in zip(starts, sizes, strict=True)
    ]


def test_level_1_lag_defers_bars_until_lag_recovers_then_bars_catch_up(
    tmp_path: Path, kafka_broker: LocalKafkaBroker, dagster_instance: dg.DagsterInstance
) -> None:
    settings = make_settings(tmp_path, kafka_broker.bootstrap, K2_MAX_CONSUMER_LAG="1000")
    first, second, third = _produce_slices(settings, [3_000, 700, 100])
    first()

    lagging = evaluate(settings, dagster_instance)
    (request,) = lagging.run_requests
    assert request.tags["k2/degradation"] == "L1-lagging"
    assert request.asset_selection == [dg.AssetKey("raw_ticks"), dg.AssetKey("validated_ticks")]
    execute(settings, dagster_instance, request)
    iceberg = IcebergResource.from_settings(settings)
    assert query(settings, "SELECT count(*) AS n FROM ticks")["n"][0] == 3_000
    assert iceberg.ensure_table(BARS_1M).current_snapshot() is None  # deferred, not built

    # 700 new records: under the threshold but over half of it, so the level holds (hysteresis).
    second()
    holding = evaluate(settings, dagster_instance, cursor=lagging.cursor)
    assert holding.run_requests[0].tags["k2/degradation"] == "L1-lagging"
    execute(settings, dagster_instance, holding.run_requests[0])

    third()
    recovered = evaluate(settings, dagster_instance, cursor=holding.cursor)
    (request,) = recovered.run_requests
    assert request.tags["k2/degradation"] == "L0-normal" and request.asset_selection is None
    execute(settings, dagster_instance, request)
    # The deferred bars caught up from the ticks table: every tick is in a bar.
    counts = query(settings, "SELECT (SELECT sum(trade_count) FROM bars_1m) AS bars, (SELECT count(*) FROM ticks) t")
    assert counts.row(0) == (3_800, 3_800)
