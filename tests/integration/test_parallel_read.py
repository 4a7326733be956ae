"""A large batch is read and decoded by worker processes (k2_resources.kafka_parallel) on a real broker: the rows
equal the in-process read and decode, worker errors reach the caller with their type, and a worker that dies is a
typed error that commits nothing."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pyarrow as pa
import pytest

from k2.feed.producer import produce_feed
from k2.feed.simulator import FaultRates, generate
from k2_assets.ticks import ingest
from k2_resources import kafka_parallel
from k2_resources.broker import LocalKafkaBroker
from k2_resources.errors import BrokerUnavailableError, OffsetRangeError
from k2_resources.iceberg import OffsetRange
from k2_resources.kafka import KafkaResource
from k2_resources.kafka_parallel import IngestWorkerError, decode_records, read_decoded, split_ranges
from k2_resources.schemas import FileSchemaStore

FAULTS = FaultRates(duplicates=0.01, undecodable=0.01)


@pytest.fixture(scope="module")
def topic(kafka_broker: LocalKafkaBroker) -> tuple[KafkaResource, list[OffsetRange]]:
    kafka = KafkaResource(bootstrap_servers=kafka_broker.bootstrap)
    name = f"parallel.ticks.{time.time_ns()}"
    feed = generate(20_000, seed=11, day=dt.date(2026, 11, 25), faults=FAULTS)
    produce_feed(kafka, name, feed, FileSchemaStore(), 5)
    ranges = [OffsetRange(name, p, lo, hi) for p, (lo, hi) in sorted(kafka.offsets(name).items())]
    return kafka, ranges


def test_workers_return_exactly_the_in_process_rows(topic: tuple[KafkaResource, list[OffsetRange]]) -> None:
    kafka, ranges = topic
    store = FileSchemaStore()
    expected = decode_records(kafka.read(ranges), store, 42)
    got = read_decoded(kafka.bootstrap_servers, kafka.consumer_group, ranges, 30.0, store, 42)
    assert expected.num_rows == sum(r.size for r in ranges) > 20_000  # duplicates on top
    assert pa.table(got).equals(expected)
    assert got.schema == expected.schema


def test_read_rows_uses_the_workers_above_the_threshold(
    topic: tuple[KafkaResource, list[OffsetRange]], monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka, ranges = topic
    used: list[int] = []
    real = ingest.read_decoded

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        used.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "read_decoded", spy)
    monkeypatch.setattr(ingest, "PARALLEL_MIN_RECORDS", 1_000)
    part = [OffsetRange(r.topic, r.partition, r.start + 3, r.stop) for r in ranges]
    rows = ingest.read_rows(kafka, part, FileSchemaStore(), 7)
    assert used == [1]
    assert rows.num_rows == sum(r.size for r in part)
    assert rows.equals(decode_records(kafka.read(part), FileSchemaStore(), 7))


def test_a_range_the_log_cannot_fill_is_refused(
    topic: tuple[KafkaResource, list[OffsetRange]], monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka, ranges = topic
    monkeypatch.setattr(ingest, "PARALLEL_MIN_RECORDS", 1_000)
    short = KafkaResource(bootstrap_servers=kafka.bootstrap_servers, request_timeout_s=2.0)
    beyond = [*ranges[:-1], OffsetRange(ranges[-1].topic, ranges[-1].partition, ranges[-1].start, ranges[-1].stop + 5)]
    with pytest.raises(BrokerUnavailableError):  # raised in a worker, re-raised here with its type
        ingest.read_rows(short, beyond, FileSchemaStore(), 7)
    # The pool survives a worker's error: the next batch reads normally.
    assert ingest.read_rows(kafka, ranges, FileSchemaStore(), 7).num_rows == sum(r.size for r in ranges)
    with pytest.raises(OffsetRangeError):
        ingest.check_coverage(pa.table({"x": [1]}), ranges)


def test_a_worker_that_dies_is_a_typed_error(topic: tuple[KafkaResource, list[OffsetRange]]) -> None:
    kafka, ranges = topic
    kafka_parallel.prestart()
    victim = kafka_parallel._WORKERS[0].proc
    # The worker waits for offsets that never arrive; kill it meanwhile.
    beyond = [OffsetRange(r.topic, r.partition, r.stop, r.stop + 5) for r in ranges]
    threading.Timer(1.0, victim.kill).start()
    with pytest.raises(IngestWorkerError, match="died"):
        read_decoded(kafka.bootstrap_servers, kafka.consumer_group, beyond, 20.0, FileSchemaStore(), 1)
    # Fresh workers start for the next batch.
    got = read_decoded(kafka.bootstrap_servers, kafka.consumer_group, ranges, 30.0, FileSchemaStore(), 1)
    assert got.num_rows == sum(r.size for r in ranges)


def test_partitions_are_split_into_contiguous_groups_of_similar_size() -> None:
    ranges = [OffsetRange("t", p, 0, size) for p, size in enumerate([100, 100, 100, 100, 400, 0])]
    groups = split_ranges(ranges, 2)
    assert [[r.partition for r in g] for g in groups] == [[0, 1, 2, 3], [4]]
    assert split_ranges(ranges, 1) == [[OffsetRange("t", p, 0, s) for p, s in enumerate([100] * 4 + [400])]]
    assert split_ranges([], 2) == []
