"""`k2 produce` with fault options on the real broker, through the whole pipeline in several batches: quarantine
reasons, sequence gaps and dead letters must match what the simulator's manifest says it injected."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.feed.producer import produce_feed
from k2.feed.simulator import FaultRates, Feed, generate
from k2_resources.broker import LocalKafkaBroker
from k2_resources.env import Settings
from k2_resources.kafka import KafkaResource
from k2_resources.schemas import FileSchemaStore
from tests.conftest import make_settings
from tests.integration.helpers import query, run

pytestmark = pytest.mark.integration

SESSION = dt.date(2026, 11, 25)
N, SEED = 12_000, 5
FAULTS = {
    "duplicates": 0.01,
    "gaps": 0.01,
    "out_of_order": 0.01,
    "late": 0.005,
    "bad_prices": 0.005,
    "negative_volumes": 0.005,
    "jumps": 0.005,
    "undecodable": 0.005,
}
# The same arguments as the CLI call, for the simulator itself: the feed is deterministic, so this regenerates
# exactly what `k2 produce` sent (the manifest lists undecodable rows by offset, not by sequence).
RATES = FaultRates(0.01, 0.01, 0.01, 0.005, 5.0, 0.005, 0.005, 0.005, 0.005)


def cli_produce(settings: Settings, manifest: Path) -> dict[str, object]:
    args = ["produce", "--ticks", str(N), "--seed", str(SEED), "--date", SESSION.isoformat()]
    for name, rate in FAULTS.items():
        args += [f"--{name.replace('_', '-')}", str(rate)]
    env = {"K2_HOME": str(settings.home), "K2_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    env["K2_TICK_TOPIC"] = settings.tick_topic
    result = CliRunner().invoke(app, [*args, "--manifest", str(manifest)], env=env)
    assert result.exit_code == 0, result.output
    loaded: dict[str, object] = json.loads(manifest.read_text())
    return loaded


def keys(items: object) -> set[tuple[str, int]]:
    assert isinstance(items, list)
    return {(str(i["symbol"]), int(i["sequence"])) for i in items}


def quarantined(settings: Settings, reason: str) -> set[tuple[str, int]]:
    frame = query(settings, f"SELECT symbol, sequence FROM quarantine WHERE list_contains(reasons, '{reason}')")
    return set(frame.iter_rows())


def assert_open_gaps_are(settings: Settings, missing: set[tuple[str, int]]) -> None:
    """The open gaps cover exactly `missing`: every missing sequence lies in an open gap, and each open gap still
    lacks exactly as many sequences as its missing_count - filled_count says."""
    gaps = query(
        settings,
        "SELECT symbol, first_missing, last_missing, missing_count - filled_count AS still_missing "
        "FROM sequence_gaps WHERE kind = 'gap' AND filled_at IS NULL",
    )
    covered: set[tuple[str, int]] = set()
    for symbol, first, last, still_missing in gaps.iter_rows():
        inside = {(symbol, q) for q in range(first, last + 1)} & missing
        assert len(inside) == still_missing > 0, (symbol, first, last, still_missing, sorted(inside))
        covered |= inside
    assert covered == missing


def dead_letters(settings: Settings) -> set[tuple[int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"t-{uuid.uuid4()}", "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(settings.dlq_topic, 0, 0)])
    found: set[tuple[int, int]] = set()
    try:
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "the dead-letter topic did not answer"
            if msg.error():
                break  # partition EOF
            headers = {k: v.decode() for k, v in msg.headers() or []}
            if headers["k2.source.topic"] == settings.tick_topic:
                assert msg.value() and headers["k2.error"]
                found.add((int(headers["k2.source.partition"]), int(headers["k2.source.offset"])))
    finally:
        consumer.close()
    return found


def detectable_missing(clean: Feed, feed: Feed, extra: set[tuple[str, int]] | None = None) -> set[tuple[str, int]]:
    """Sequences that never arrived decoded, between the lowest and highest sequence of their symbol that did: a
    tracker cannot see a hole before the first sequence it ever receives, nor after the last one."""
    decoded = feed.ticks.with_row_index("row").filter(~pl.col("row").is_in(feed.undecodable_rows.tolist()))
    received = set(decoded.select("symbol", "sequence").iter_rows()) | (extra or set())
    bounds = {
        s: (lo, hi)
        for s, lo, hi in decoded.group_by("symbol")
        .agg(pl.col("sequence").min().alias("lo"), pl.col("sequence").max().alias("hi"))
        .iter_rows()
    }
    return {
        (s, q)
        for s, q in clean.ticks.select("symbol", "sequence").iter_rows()
        if (s, q) not in received and bounds.get(s, (0, 0))[0] < q < bounds.get(s, (0, 0))[1]
    }


def test_quarantine_reasons_gaps_and_dead_letters_match_the_fault_manifest(
    kafka_broker: LocalKafkaBroker, tmp_path: Path, dagster_instance: dg.DagsterInstance
) -> None:
    # Batches of at most 1200 offsets per partition: the feed arrives in several batches, so dedup, gaps and the
    # anomaly reference have to carry across batch boundaries.
    settings = make_settings(tmp_path, kafka_broker.bootstrap, K2_MAX_BATCH_PER_PARTITION="1200")
    manifest = cli_produce(settings, tmp_path / "manifest.json")
    feed = generate(N, seed=SEED, day=SESSION, faults=RATES)
    clean = generate(N, seed=SEED, day=SESSION)
    assert manifest["produced"] == feed.ticks.height
    summary = run(settings, dagster_instance)
    assert summary.batches >= 2

    undecodable = set(feed.ticks[feed.undecodable_rows].select("symbol", "sequence").iter_rows())
    assert quarantined(settings, "non_positive_price") == keys(manifest["non_positive_price"]) - undecodable
    assert quarantined(settings, "negative_volume") == keys(manifest["negative_volume"]) - undecodable
    assert quarantined(settings, "anomaly") == keys(manifest["jumps"]) - undecodable
    undecodable_offsets = {tuple(p) for p in manifest["undecodable"]}  # type: ignore[union-attr]
    frame = query(settings, "SELECT kafka_partition, kafka_offset FROM quarantine WHERE reasons = ['undecodable']")
    assert set(frame.iter_rows()) == undecodable_offsets
    assert dead_letters(settings) == undecodable_offsets

    # Every produced record is published, quarantined or a counted duplicate; published keys are unique.
    totals = query(settings, "SELECT count(*) n, count(DISTINCT (symbol, sequence)) k FROM ticks").row(0)
    assert totals[0] == totals[1]
    q_count = query(settings, "SELECT count(*) FROM quarantine").item()
    assert totals[0] + q_count <= feed.ticks.height
    injected_gaps = keys(manifest["gaps"])
    assert injected_gaps and len(injected_gaps) == round(N * 0.01)
    missing = detectable_missing(clean, feed)
    assert_open_gaps_are(settings, missing)
    assert missing - undecodable <= injected_gaps
    resets = query(settings, "SELECT count(*) FROM sequence_gaps WHERE kind = 'reset'").item()
    assert resets == 0  # late and out-of-order ticks carry their old exchange time: never a reset

    # The ticks that never arrived are sent late: every gap they cover closes, only undecodable holes stay open.
    lost_keys = pl.DataFrame(sorted(injected_gaps), orient="row", schema=["symbol", "sequence"])
    lost = clean.ticks.join(lost_keys, on=["symbol", "sequence"], how="semi")
    produce_feed(
        KafkaResource.from_settings(settings),
        settings.tick_topic,
        Feed(lost, np.array([], dtype=np.int64)),
        FileSchemaStore(),
        settings.topic_partitions,
    )
    run(settings, dagster_instance)
    assert_open_gaps_are(settings, detectable_missing(clean, feed, injected_gaps))
    closed = query(settings, "SELECT count(*) FROM sequence_gaps WHERE kind = 'gap' AND filled_at IS NOT NULL").item()
    assert closed > 0
    assert quarantined(settings, "anomaly") == keys(manifest["jumps"]) - undecodable  # no new anomalies
