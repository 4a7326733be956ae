"""Write-audit-publish on the real broker: a batch failing the Great Expectations gate is staged on the audit branch
but never reaches main; the failed check says which expectation failed with its observed value."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.feed.producer import produce_feed
from k2.feed.simulator import FaultRates, generate
from k2_assets import definitions
from k2_assets.definitions import build_definitions
from k2_assets.ticks.planning import ranges_to_config
from k2_assets.ticks.quality import QualityResource
from k2_assets.ticks.sensors import INGEST_JOB, plan_next_batch
from k2_assets.ticks.validated import GATE_CHECK
from k2_resources.broker import LocalKafkaBroker
from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.kafka import KafkaResource
from k2_resources.pipeline import PipelineResource
from k2_resources.schemas import FileSchemaStore
from tests.conftest import make_settings
from tests.integration.helpers import query

pytestmark = pytest.mark.integration

RESOURCES_FOR = definitions.resources_for
GUARDED = ("ticks", "quarantine", "sequence_gaps", "symbol_state")


def produce(settings: Settings, n: int, seed: int, day: dt.date, faults: FaultRates | None = None) -> None:
    feed = generate(n, seed=seed, day=day, faults=faults or FaultRates())
    kafka = KafkaResource.from_settings(settings)
    produce_feed(kafka, settings.tick_topic, feed, FileSchemaStore(), settings.topic_partitions)


def run_batch(
    settings: Settings, instance: dg.DagsterInstance, quality: QualityResource, monkeypatch: pytest.MonkeyPatch
) -> dg.ExecuteInProcessResult:
    """One ingest_job run, as the sensor would launch it, with these quality settings (the deployment's resource
    configuration: definitions.resources_for is where a deployment sets it)."""
    monkeypatch.setattr(definitions, "resources_for", lambda s: {**RESOURCES_FOR(s), "quality": quality})
    ranges = plan_next_batch(
        KafkaResource.from_settings(settings),
        IcebergResource.from_settings(settings),
        PipelineResource.from_settings(settings),
    )
    job = build_definitions(settings).resolve_job_def(INGEST_JOB)
    return job.execute_in_process(
        run_config={"ops": {"raw_ticks": {"config": {"ranges": ranges_to_config(ranges)}}}},
        instance=instance,
        raise_on_error=False,
    )


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    return [str(e.event_specific_data)[:2000] for e in result.all_events if e.is_step_failure]


def heads(iceberg: IcebergResource) -> dict[str, int]:
    return {name: iceberg.load(name).current_snapshot().snapshot_id for name in GUARDED}  # type: ignore[union-attr]


def test_a_batch_failing_the_gate_leaves_main_untouched_until_it_passes(
    kafka_broker: LocalKafkaBroker,
    tmp_path: Path,
    dagster_instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(tmp_path, kafka_broker.bootstrap)
    iceberg = IcebergResource.from_settings(settings)
    strict = QualityResource(docs_dir=str(settings.home / "data_docs"), quarantine_ceiling=0.05)
    produce(settings, 3_000, seed=21, day=dt.date(2026, 11, 25))
    first = run_batch(settings, dagster_instance, strict, monkeypatch)
    assert first.success, failures(first)
    bars_gate = query(settings, "SELECT count(*), bool_and(success) FROM dq_results WHERE asset = 'bars_1m'").row(0)
    assert bars_gate[0] > 10 and bars_gate[1]  # the bars suite ran on the bars this batch wrote, and passed
    before = heads(iceberg)
    ticks_before = query(settings, "SELECT count(*) FROM ticks").item()
    marks_before = read_watermarks(iceberg.load("ticks"))

    # A session where 30% of the prices are <= 0: rows go to quarantine, and the batch's quarantine rate breaks the
    # 5% ceiling, so the batch as a whole must not be published.
    produce(settings, 2_000, seed=22, day=dt.date(2026, 11, 24), faults=FaultRates(non_positive_price=0.3))
    blocked = run_batch(settings, dagster_instance, strict, monkeypatch)
    assert not blocked.success
    gate = next(e for e in blocked.get_asset_check_evaluations() if e.check_name == GATE_CHECK)
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
    failed = gate.metadata["failed_expectations"].value
    assert "quarantine_rate" in str(failed) and "0.3" in str(failed)
    assert gate.metadata["published_to_main"].value is False
    materialized = {e.asset_key.to_user_string() for e in blocked.get_asset_materialization_events()}
    assert "validated_ticks" in materialized and not materialized & {"bars_live", "bars_1m"}

    assert heads(iceberg) == before
    assert query(settings, "SELECT count(*) FROM ticks").item() == ticks_before
    ticks = iceberg.load("ticks")
    assert read_watermarks(ticks) == marks_before
    staged = ticks.scan().use_ref("audit").to_arrow().num_rows - ticks_before
    assert 1_000 < staged < 2_000  # the ~70% good rows wait on the audit branch, for inspection
    dq = query(
        settings,
        f"SELECT \"column\", success, observed_value, published FROM dq_results WHERE run_id = '{blocked.run_id}'",
    )
    assert dq.height > 10 and not any(dq["published"])
    rate = dq.filter(dq["column"] == "quarantine_rate").row(0, named=True)
    assert rate["success"] is False and 0.25 < json.loads(rate["observed_value"])["sample"][0] < 0.35
    assert (settings.home / "data_docs" / "index.html").exists()

    report = CliRunner().invoke(app, ["dq", "report"], env={"K2_HOME": str(settings.home)})
    assert report.exit_code == 0, report.output
    # One Dagster run with both a ticks and a bars check counts once.
    assert "2 check run(s), 1 blocked" in report.output and "data_docs/index.html" in report.output

    # With a ceiling that tolerates this session, the same batch passes and is published, watermark and all.
    lenient = QualityResource(docs_dir=str(settings.home / "data_docs"), quarantine_ceiling=0.5)
    published = run_batch(settings, dagster_instance, lenient, monkeypatch)
    assert published.success, failures(published)
    assert query(settings, "SELECT count(*) FROM ticks").item() == ticks_before + staged
    assert read_watermarks(iceberg.load("ticks")) == read_watermarks(iceberg.load("raw_ticks"))
