"""Publishing a simulated feed to Kafka in the Confluent wire format."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from k2.feed.simulator import Feed
from k2_resources.avro import encode_frame, frame
from k2_resources.kafka import TickLog
from k2_resources.schemas import TICK_SUBJECT, SchemaStore

UNKNOWN_SCHEMA_ID = 9_999


@dataclass(frozen=True)
class ProduceResult:
    records: int
    seconds: float
    positions: list[tuple[int, int]]
    manifest: dict[str, object]


def corrupt(value: bytes, kind: int) -> bytes:
    """Three ways a value can be unusable: not Confluent-framed, an unknown schema id, a truncated Avro body."""
    if kind == 0:
        return b"\x07not-avro:" + value[5:20]
    if kind == 1:
        return frame(UNKNOWN_SCHEMA_ID, value[5:])
    return value[: max(6, len(value) // 3)]


def produce_feed(log: TickLog, topic: str, feed: Feed, store: SchemaStore, partitions: int) -> ProduceResult:
    log.ensure_topic(topic, partitions)
    started = time.perf_counter()
    values = encode_frame(feed.ticks, store, store.latest_id(TICK_SUBJECT)).to_pylist()
    for i, row in enumerate(feed.undecodable_rows.tolist()):
        values[row] = corrupt(values[row], i % 3)
    keys = feed.ticks["symbol"].to_list()
    positions = log.produce(topic, keys, values)
    seconds = time.perf_counter() - started
    manifest = dict(feed.manifest)
    manifest["topic"] = topic
    manifest["undecodable"] = [list(positions[r]) for r in np.asarray(feed.undecodable_rows).tolist()]
    return ProduceResult(len(values), seconds, positions, manifest)
