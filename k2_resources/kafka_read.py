"""Reading planned offset ranges from Kafka into Arrow, without Dagster or pyiceberg imports: KafkaResource.read
uses it in process, and the ingest workers (k2_resources.kafka_parallel) use it in processes that must start fast."""

from __future__ import annotations

import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_resources.errors import BrokerUnavailableError
from k2_resources.offsets import OffsetRange

RECORD_SCHEMA = pa.schema(
    [
        ("kafka_topic", pa.string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("kafka_ts", pa.int64()),  # microseconds since the epoch, UTC
        ("kafka_key", pa.string()),
        ("value", pa.binary()),
    ]
)


def consumer_config(bootstrap_servers: str, group: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        # Prefetch up to a whole batch in librdkafka's queue: consume() of 1M ticks ~20% faster.
        "queued.min.messages": 1_000_000,
    }


def read_records(bootstrap_servers: str, group: str, ranges: Sequence[OffsetRange], timeout_s: float) -> pa.Table:
    """Every record in `ranges`, as RECORD_SCHEMA rows in (topic, partition, offset) order."""
    from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

    wanted = [r for r in ranges if r.size > 0]
    if not wanted:
        return RECORD_SCHEMA.empty_table()
    consumer: Any = Consumer(consumer_config(bootstrap_servers, group))  # confluent-kafka's stubs: Optional everywhere
    stops = {(r.topic, r.partition): r.stop for r in wanted}
    pending = set(stops)
    batches: list[pa.Table] = []
    try:
        consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in wanted])
        last_progress = time.monotonic()
        remaining = sum(r.size for r in wanted)
        while pending:
            # consume() waits out its timeout unless num_messages arrive: never ask for more than is left.
            messages = consumer.consume(num_messages=max(1, min(100_000, remaining)), timeout=0.5)
            if not messages:
                if time.monotonic() - last_progress > timeout_s:
                    missing = ", ".join(f"{t}[{p}]" for t, p in sorted(pending))
                    raise BrokerUnavailableError(
                        f"no records arrived for {missing} within {timeout_s:.0f}s: "
                        f"is the broker at {bootstrap_servers} up?"
                    )
                continue
            last_progress = time.monotonic()
            errors = [m for m, e in zip(messages, map(Message.error, messages), strict=True) if e is not None]
            for msg in errors:
                err = msg.error()
                key = (msg.topic(), msg.partition())
                if err.code() != KafkaError._PARTITION_EOF:
                    raise BrokerUnavailableError(f"consuming {key[0]}[{key[1]}] failed: {err}")
                if msg.offset() >= stops.get(key, 0):
                    pending.discard(key)
            if errors:
                messages = [m for m in messages if m.error() is None]
            if messages:
                batch = records_table(messages, stops)
                batches.append(batch)
                remaining -= batch.num_rows
                pending -= _reached(batch, stops)
    finally:
        consumer.close()
    table = pa.concat_tables(batches) if batches else RECORD_SCHEMA.empty_table()
    # Offset order per partition. One topic per read is the rule: then integers alone sort (strings are slow).
    keys = [("kafka_partition", "ascending"), ("kafka_offset", "ascending")]
    if len({r.topic for r in wanted}) > 1:
        keys.insert(0, ("kafka_topic", "ascending"))
    return table.sort_by(keys)


def records_table(messages: list, stops: dict[tuple[str, int], int]) -> pa.Table:  # type: ignore[type-arg]
    """Consumed messages as RECORD_SCHEMA rows, keeping only offsets below each partition's stop. The accessors are
    mapped as unbound methods: a million messages per batch make attribute lookups in a comprehension add up."""
    from confluent_kafka import Message

    topics = {t for t, _ in stops}
    n = len(messages)
    table = pa.table(
        {
            "kafka_topic": pa.repeat(pa.scalar(next(iter(topics)), pa.string()), n)
            if len(topics) == 1
            else pa.array(list(map(Message.topic, messages)), pa.string()),
            "kafka_partition": pa.array(list(map(Message.partition, messages)), pa.int32()),
            "kafka_offset": pa.array(list(map(Message.offset, messages)), pa.int64()),
            "kafka_ts": pc.multiply(
                pa.array(list(map(itemgetter(1), map(Message.timestamp, messages))), pa.int64()), 1000
            ),
            "kafka_key": keys_as_text(pa.array(list(map(Message.key, messages)), pa.binary())),
            "value": pa.array(list(map(Message.value, messages)), pa.binary()),
        },
        schema=RECORD_SCHEMA,
    )
    stop = np.full(table.num_rows, -1, dtype=np.int64)
    for (t, p), s in stops.items():
        stop[np.asarray(pc.and_(pc.equal(table["kafka_topic"], t), pc.equal(table["kafka_partition"], p)))] = s
    return table.filter(pa.array(table["kafka_offset"].to_numpy() < stop))


def _reached(batch: pa.Table, stops: dict[tuple[str, int], int]) -> set[tuple[str, int]]:
    """Partitions whose last wanted offset is in `batch`."""
    if batch.num_rows == 0:
        return set()
    last = batch.group_by(["kafka_topic", "kafka_partition"]).aggregate([("kafka_offset", "max")])
    return {
        (t, p)
        for t, p, o in zip(
            last["kafka_topic"].to_pylist(),
            last["kafka_partition"].to_pylist(),
            last["kafka_offset_max"].to_pylist(),
            strict=True,
        )
        if o >= stops[(t, p)] - 1
    }


def keys_as_text(keys: pa.Array) -> pa.Array:
    """Record keys as text; keys that are not UTF-8 are decoded with replacement characters."""
    try:
        return keys.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array(
            [k.decode("utf-8", "replace") if k is not None else None for k in keys.to_pylist()], pa.string()
        )
