"""Serving reads on the real broker: the Kafka tail merged with Iceberg at the watermark, time travel to a tag,
replay to Kafka, metrics from Dagster runs and the CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from k2.feed.producer import produce_feed
from k2.feed.simulator import Feed, generate
from k2.query import Client
from k2.replay import replay
from k2.runner import run_until_caught_up
from k2.serving.metrics import serve
from k2.tags import create
from k2_resources.avro import decode_values
from k2_resources.broker import LocalKafkaBroker
from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource, OffsetRange, read_watermarks
from k2_resources.kafka import KafkaResource
from k2_resources.local_process import free_port
from k2_resources.metrics import FigureStore
from k2_resources.schemas import FileSchemaStore
from tests.conftest import make_settings
from tests.integration.helpers import SESSION

pytestmark = pytest.mark.integration

FIRST, SECOND = 4000, 2000
DAY_START = dt.datetime.combine(SESSION, dt.time(), dt.UTC) - dt.timedelta(hours=12)
DAY_END = DAY_START + dt.timedelta(days=1)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    settings: Settings
    instance: dg.DagsterInstance
    feed: Feed
    first_snapshot: int


def _produce(settings: Settings, feed: Feed, lo: int, hi: int) -> None:
    part = Feed(feed.ticks.slice(lo, hi - lo), feed.undecodable_rows[:0], feed.manifest)
    produce_feed(KafkaResource.from_settings(settings), settings.tick_topic, part, FileSchemaStore(), 3)


@pytest.fixture(scope="module")
def served(kafka_broker: LocalKafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """FIRST ticks ingested into Iceberg and tagged `before-tail`; SECOND more only in Kafka (the tail)."""
    settings = make_settings(tmp_path_factory.mktemp("served"), kafka_broker.bootstrap)
    feed = generate(FIRST + SECOND, seed=21, day=SESSION, symbols=10)
    with dg.DagsterInstance.ephemeral() as instance:
        _produce(settings, feed, 0, FIRST)
        run_until_caught_up(settings, instance=instance)
        snapshot = IcebergResource.from_settings(settings).load("ticks").current_snapshot()
        assert snapshot is not None
        create(settings, "before-tail")
        _produce(settings, feed, FIRST, FIRST + SECOND)
        yield Served(settings, instance, feed, snapshot.snapshot_id)


def _keys(frame: pl.DataFrame) -> list[tuple[str, int]]:
    return sorted(zip(frame["symbol"].to_list(), frame["sequence"].to_list(), strict=True))


def _scrape(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = free_port()
    server = threading.Thread(target=serve, args=(settings, port, 4.0))
    server.start()
    try:
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                    text = response.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("k2 metrics serve did not answer")
    finally:
        server.join()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_kafka_tail_and_iceberg_merge_at_the_watermark_with_no_gap_and_no_duplicate(served: Served) -> None:
    settings = served.settings
    c = Client(settings)
    hybrid = c.ticks(None, DAY_START, DAY_END)
    fresh = hybrid.freshness
    assert fresh.route == "hybrid"
    assert {p.source: p.rows for p in fresh.parts} == {"iceberg": FIRST, "kafka": SECOND}
    # Every tick exactly once: the feed's keys, no more, no fewer.
    assert _keys(hybrid.pl()) == _keys(served.feed.ticks)
    # The boundary is the committed watermark of the ticks table, per partition.
    ticks_table = IcebergResource.from_settings(settings).load("ticks")
    watermark = read_watermarks(ticks_table)[settings.tick_topic]
    kafka_part = next(p for p in fresh.parts if p.source == "kafka")
    assert fresh.watermark == watermark
    assert kafka_part.offsets is not None
    assert {p: lo for p, (lo, _) in kafka_part.offsets.items()} == {p: watermark[p] for p in kafka_part.offsets}
    assert fresh.lag_records == SECOND
    # The newest tick of each symbol comes from the tail.
    latest = c.latest().pl().sort("symbol")
    expected = (
        served.feed.ticks.sort(["exchange_ts", "sequence"]).group_by("symbol").last().sort("symbol").select("sequence")
    )
    assert latest["sequence"].to_list() == expected["sequence"].to_list()
    assert c.ticks(None, DAY_START, DAY_END, route="kafka").num_rows == SECOND
    # The metrics endpoint sees the same lag.
    samples = _scrape(settings)
    lag = sum(
        v for (name, labels), v in samples.items() if name == "k2_consumer_lag_records" and ("table", "ticks") in labels
    )
    assert lag == SECOND
    # Once the pipeline catches up, the same read comes wholly from Iceberg and is identical.
    run_until_caught_up(settings, instance=served.instance)
    settled = c.ticks(None, DAY_START, DAY_END)
    assert settled.freshness.route == "iceberg"
    assert settled.arrow.equals(hybrid.arrow)


def test_a_broker_outage_still_serves_history_and_says_so(served: Served) -> None:
    down = dataclasses.replace(served.settings, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    result = Client(down).ticks(None, DAY_START, DAY_END)
    assert result.freshness.route == "iceberg"
    assert result.freshness.kafka_error and "BrokerUnavailableError" in result.freshness.kafka_error
    assert result.num_rows >= FIRST


def test_a_backtest_tag_reproduces_the_read_made_before_the_tail_landed(served: Served) -> None:
    c = Client(served.settings)
    tagged = c.ticks(None, DAY_START, DAY_END, as_of="before-tail")
    by_id = c.ticks(None, DAY_START, DAY_END, as_of=served.first_snapshot)
    assert tagged.num_rows == FIRST
    assert tagged.arrow.equals(by_id.arrow)
    assert _keys(tagged.pl()) == _keys(served.feed.ticks.slice(0, FIRST))


def test_replay_republishes_history_in_exchange_time_order_in_the_same_wire_format(served: Served) -> None:
    settings = served.settings
    c = Client(settings)
    start = served.feed.ticks["exchange_ts"].min()
    t0 = dt.datetime.fromtimestamp(int(start) / 1e6, dt.UTC)  # type: ignore[arg-type]
    t1 = t0 + dt.timedelta(minutes=30)
    topic = f"{settings.tick_topic}.replay"
    out = replay(c, topic, t0, t1, speed=None)
    expected = c.ticks(None, t0, t1, route="iceberg").pl()
    assert out.records == expected.height > 0

    kafka = KafkaResource.from_settings(settings)
    ranges = [OffsetRange(topic, p, lo, hi) for p, (lo, hi) in kafka.offsets(topic).items()]
    records = kafka.read(ranges)
    decoded, errors = decode_values(records["value"].to_pylist(), FileSchemaStore())
    assert errors == [None] * records.num_rows
    decoded = decoded.with_columns(pl.Series("partition", records["kafka_partition"].to_pylist()))
    cols = ["symbol", "sequence", "exchange_ts", "price", "volume"]
    want = expected.select(
        "symbol",
        "sequence",
        pl.col("exchange_ts").dt.epoch("us"),
        (pl.col("price").cast(pl.Float64) * 1e6).round().cast(pl.Int64),
        "volume",
    )
    assert decoded.select(cols).sort(cols).equals(want.sort(cols))
    # Within each partition, offsets follow exchange time.
    for _, part in decoded.group_by("partition"):
        assert part["exchange_ts"].is_sorted()


def test_replay_paces_ticks_at_the_chosen_speed(served: Served) -> None:
    c = Client(served.settings)
    ticks = c.ticks(None, DAY_START, DAY_END, route="iceberg").pl().sort("exchange_ts")
    first = ticks["exchange_ts"][0]
    window = ticks.filter(pl.col("exchange_ts") < first + dt.timedelta(seconds=40))
    span = (window["exchange_ts"][-1] - first).total_seconds()
    out = replay(c, f"{served.settings.tick_topic}.paced", first, first + dt.timedelta(seconds=40), speed=20.0)
    assert out.records == window.height
    assert out.seconds >= span / 20.0 - 0.05
    assert out.seconds < span / 20.0 + 3.0


def test_dagster_runs_record_their_figures(served: Served) -> None:
    state = FigureStore(served.settings.serving.metrics_dir).read()  # type: ignore[arg-type]
    runs = state["k2_asset_runs"]
    for asset in ("raw_ticks", "validated_ticks"):
        assert runs.get(f'["{asset}", "success"]', 0) >= 1, asset
    assert any(key.startswith('["bars') and value >= 1 for key, value in runs.items()), runs
    latency = state["k2_tick_to_queryable_seconds"]["[]"]
    assert latency["count"] >= FIRST
    assert 0 <= latency["sum"] / latency["count"] < 600
    assert state["k2_dq_rows"]['["ticks", "passed"]'] >= FIRST


def test_the_cli_keeps_plain_sql_and_adds_typed_reads_and_tags(served: Served) -> None:
    settings = served.settings
    env = {
        **os.environ,
        "K2_HOME": str(settings.home),
        "K2_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "K2_TICK_TOPIC": settings.tick_topic,
    }
    k2 = str(REPO / ".venv" / "bin" / "k2")

    def run(*args: str) -> str:
        done = subprocess.run([k2, *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return done.stdout

    in_iceberg = Client(settings).sql("SELECT count(*) AS n FROM ticks").pl()["n"][0]
    assert run("query", "SELECT count(*) AS n FROM ticks", "--format", "csv").split() == ["n", str(in_iceberg)]
    symbol = served.feed.ticks["symbol"][0]
    span = ["--start", DAY_START.isoformat(), "--end", DAY_END.isoformat()]
    out = run("query", "ticks", symbol, *span, "--format", "csv", "--limit", "100000")
    assert len(out.strip().splitlines()) - 1 == served.feed.ticks.filter(pl.col("symbol") == symbol).height
    run("tag", "create", "from-cli")
    assert '"from-cli"' in run("tag", "show", "from-cli")
    cli_calls = "SELECT action, outcome FROM audit_log WHERE client_address LIKE 'cli:%' ORDER BY event_ts"
    audit = run("query", cli_calls, "--format", "csv")
    assert audit.split()[1:] == ["sql,allowed", "ticks,allowed"]
