"""`k2 quarantine release --reason anomaly --symbol X`: reviewed anomalies move into ticks with an audit record,
and the next run restates the bars they fall in."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.feed.producer import produce_feed
from k2.feed.simulator import FaultRates, generate
from k2_resources.broker import LocalKafkaBroker
from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.kafka import KafkaResource
from k2_resources.schemas import FileSchemaStore
from tests.conftest import make_settings
from tests.integration.helpers import query, run

pytestmark = pytest.mark.integration

MINUTE_BARS = """
SELECT time_bucket(INTERVAL 1 MINUTE, exchange_ts) AS window_start, max(price) AS high, min(price) AS low,
       sum(volume)::BIGINT AS volume, count(*) AS trade_count
FROM ticks WHERE symbol = '{symbol}' GROUP BY ALL ORDER BY 1
"""


def k2(settings: Settings, *args: str) -> str:
    env = {"K2_HOME": str(settings.home), "K2_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    result = CliRunner().invoke(app, list(args), env={**env, "K2_TICK_TOPIC": settings.tick_topic})
    assert result.exit_code == 0, result.output
    return result.output


def test_released_anomalies_join_ticks_with_an_audit_record_and_restate_their_bars(
    kafka_broker: LocalKafkaBroker, tmp_path: Path, dagster_instance: dg.DagsterInstance
) -> None:
    settings = make_settings(tmp_path, kafka_broker.bootstrap)
    feed = generate(4_000, seed=31, day=dt.date(2026, 11, 25), faults=FaultRates(jumps=0.01))
    produce_feed(KafkaResource.from_settings(settings), settings.tick_topic, feed, FileSchemaStore(), 6)
    run(settings, dagster_instance)
    flagged = query(
        settings,
        "SELECT symbol, count(*) n FROM quarantine WHERE reasons = ['anomaly'] GROUP BY ALL ORDER BY n DESC, symbol",
    )
    symbol, count = flagged.row(0)
    keys = set(query(settings, f"SELECT sequence FROM quarantine WHERE symbol = '{symbol}'")["sequence"])
    iceberg = IcebergResource.from_settings(settings)
    marks = read_watermarks(iceberg.load("ticks"))
    ticks_before = query(settings, "SELECT count(*) FROM ticks").item()

    refused = CliRunner().invoke(
        app,
        ["quarantine", "release", "--reason", "negative_volume", "--symbol", symbol],
        env={"K2_HOME": str(settings.home)},
    )
    assert refused.exit_code != 0
    output = k2(settings, "quarantine", "release", "--reason", "anomaly", "--symbol", symbol, "--by", "reviewer-1")
    assert f"released {count} {symbol} tick(s)" in output

    assert query(settings, f"SELECT count(*) FROM quarantine WHERE symbol = '{symbol}'").item() == 0
    released = query(settings, f"SELECT sequence, price FROM ticks WHERE symbol = '{symbol}'")
    assert keys <= set(released["sequence"])
    assert query(settings, "SELECT count(*) FROM ticks").item() == ticks_before + count
    assert read_watermarks(iceberg.load("ticks")) == marks  # a release moves no Kafka offsets
    audit = query(settings, "SELECT released_by, reason, outcome, sequence, ticks_snapshot_id FROM quarantine_releases")
    assert audit.height == count and set(audit["sequence"]) == keys
    assert set(audit["outcome"]) == {"published"} and set(audit["released_by"]) == {"reviewer-1"}

    # Nothing new in Kafka: the next run only catches the bars up with the released ticks.
    run(settings, dagster_instance)
    bars = query(
        settings,
        "SELECT window_start, high, low, volume, trade_count FROM bars_1m "
        f"WHERE symbol = '{symbol}' ORDER BY window_start",
    )
    assert bars.rows() == query(settings, MINUTE_BARS.format(symbol=symbol)).rows()
    spikes = set(
        query(
            settings, f"SELECT price FROM ticks WHERE symbol = '{symbol}' AND sequence IN ({','.join(map(str, keys))})"
        )["price"]
    )
    assert spikes & (set(bars["high"]) | set(bars["low"]))  # a released spike is now some minute's high or low
