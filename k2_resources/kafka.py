"""Kafka access behind a small interface: the real broker (confluent-kafka) or a file-backed fake for unit tests."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from k2_resources.env import Settings
from k2_resources.errors import BrokerUnavailableError, K2Error
from k2_resources.iceberg import OffsetRange

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


class TickLog(ABC):
    """What K2 needs from a partitioned log of tick records."""

    @abstractmethod
    def ensure_topic(self, topic: str, partitions: int) -> None:
        """Create `topic` if it does not exist (an existing topic is left as it is)."""

    @abstractmethod
    def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        """partition -> (earliest offset, end offset) without consuming anything."""

    @abstractmethod
    def read(self, ranges: Sequence[OffsetRange]) -> pa.Table:
        """Every record in the given ranges, as RECORD_SCHEMA rows."""

    @abstractmethod
    def produce(self, topic: str, keys: Sequence[str], values: Sequence[bytes]) -> list[tuple[int, int]]:
        """Write records (partitioned by key) and return their (partition, offset) in input order."""


class KafkaResource(dg.ConfigurableResource, TickLog):  # type: ignore[type-arg, misc]
    """The real broker, reached by bootstrap servers."""

    bootstrap_servers: str
    consumer_group: str = "k2-ingest"
    request_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaResource:
        return cls(bootstrap_servers=settings.kafka_bootstrap)

    def _admin(self):  # type: ignore[no-untyped-def]
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap_servers})

    def ensure_topic(self, topic: str, partitions: int) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import NewTopic

        admin = self._admin()
        if topic in self._list_topics(admin):
            return
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        try:
            futures[topic].result(timeout=self.request_timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        # Topic metadata propagates asynchronously; wait until every partition has a leader.
        deadline = time.monotonic() + self.request_timeout_s
        while time.monotonic() < deadline:
            meta = admin.list_topics(topic, timeout=5).topics.get(topic)
            if meta is not None and meta.error is None and len(meta.partitions) == partitions:
                return
            time.sleep(0.1)

    def _list_topics(self, admin) -> dict[str, object]:  # type: ignore[no-untyped-def]
        try:
            return dict(admin.list_topics(timeout=self.request_timeout_s).topics)
        except Exception as exc:
            raise BrokerUnavailableError(
                f"no Kafka broker answered at {self.bootstrap_servers}: start one with `k2 kafka start` "
                f"(or set K2_KAFKA_BOOTSTRAP) ({exc})"
            ) from exc

    def _consumer(self):  # type: ignore[no-untyped-def]
        from confluent_kafka import Consumer

        return Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": self.consumer_group,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 16 * 1024 * 1024,
            }
        )

    def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        from confluent_kafka import TopicPartition

        meta = self._list_topics(self._admin()).get(topic)
        if meta is None:
            raise K2Error(f"topic {topic} does not exist: produce to it first (`k2 produce`)")
        consumer = self._consumer()
        try:
            result: dict[int, tuple[int, int]] = {}
            for partition in sorted(meta.partitions):  # type: ignore[attr-defined]
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=self.request_timeout_s, cached=False
                )
                result[partition] = (int(low), int(high))
            return result
        finally:
            consumer.close()

    def read(self, ranges: Sequence[OffsetRange]) -> pa.Table:
        from confluent_kafka import KafkaError, TopicPartition

        wanted = [r for r in ranges if r.size > 0]
        if not wanted:
            return RECORD_SCHEMA.empty_table()
        consumer = self._consumer()
        stops = {(r.topic, r.partition): r.stop for r in wanted}
        pending = set(stops)
        cols: dict[str, list[object]] = {name: [] for name in RECORD_SCHEMA.names}
        try:
            consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in wanted])
            last_progress = time.monotonic()
            while pending:
                messages = consumer.consume(num_messages=50_000, timeout=0.5)
                if not messages:
                    if time.monotonic() - last_progress > self.request_timeout_s:
                        missing = ", ".join(f"{t}[{p}]" for t, p in sorted(pending))
                        raise BrokerUnavailableError(
                            f"no records arrived for {missing} within {self.request_timeout_s:.0f}s: "
                            f"is the broker at {self.bootstrap_servers} up?"
                        )
                    continue
                last_progress = time.monotonic()
                for msg in messages:
                    err = msg.error()
                    key = (msg.topic(), msg.partition())
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            if msg.offset() >= stops.get(key, 0):
                                pending.discard(key)
                            continue
                        raise BrokerUnavailableError(f"consuming {key[0]}[{key[1]}] failed: {err}")
                    offset = msg.offset()
                    stop = stops.get(key)
                    if stop is None or offset >= stop:
                        pending.discard(key)
                        continue
                    cols["kafka_topic"].append(key[0])
                    cols["kafka_partition"].append(key[1])
                    cols["kafka_offset"].append(offset)
                    cols["kafka_ts"].append(msg.timestamp()[1] * 1000)
                    raw_key = msg.key()
                    cols["kafka_key"].append(raw_key.decode("utf-8", "replace") if raw_key is not None else None)
                    cols["value"].append(msg.value())
                    if offset >= stop - 1:
                        pending.discard(key)
        finally:
            consumer.close()
        table = pa.table(cols, schema=RECORD_SCHEMA)
        return table.sort_by(
            [("kafka_topic", "ascending"), ("kafka_partition", "ascending"), ("kafka_offset", "ascending")]
        )

    def produce(self, topic: str, keys: Sequence[str], values: Sequence[bytes]) -> list[tuple[int, int]]:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "enable.idempotence": True,
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        positions: list[tuple[int, int]] = [(-1, -1)] * len(values)
        failures: list[str] = []

        def delivered(index: int):  # type: ignore[no-untyped-def]
            def callback(err, msg) -> None:  # type: ignore[no-untyped-def]
                if err is not None:
                    failures.append(str(err))
                else:
                    positions[index] = (msg.partition(), msg.offset())

            return callback

        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            while True:
                try:
                    producer.produce(topic, key=key.encode(), value=value, on_delivery=delivered(i))
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 10_000 == 0:
                producer.poll(0)
        remaining = producer.flush(self.request_timeout_s)
        if remaining or failures:
            raise BrokerUnavailableError(
                f"{remaining} records undelivered and {len(failures)} failed producing to {topic} "
                f"(first error: {failures[:1]}); is the broker at {self.bootstrap_servers} up?"
            )
        return positions


class FileTickLog(TickLog):
    """A file-backed stand-in for unit tests: one Arrow IPC file per topic, offsets are row positions per partition."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, topic: str) -> Path:
        return self.root / f"{topic}.arrow"

    def _meta(self, topic: str) -> Path:
        return self.root / f"{topic}.partitions"

    def _load(self, topic: str) -> pa.Table:
        path = self._path(topic)
        if not path.exists():
            return RECORD_SCHEMA.empty_table()
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all()

    def ensure_topic(self, topic: str, partitions: int) -> None:
        if not self._meta(topic).exists():
            self._meta(topic).write_text(str(partitions))

    def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        if not self._meta(topic).exists():
            raise K2Error(f"topic {topic} does not exist")
        n = int(self._meta(topic).read_text())
        table = self._load(topic)
        counts = {p: 0 for p in range(n)}
        if table.num_rows:
            for row in table.group_by("kafka_partition").aggregate([("kafka_offset", "count")]).to_pylist():
                counts[int(row["kafka_partition"])] = int(row["kafka_offset_count"])
        return {p: (0, c) for p, c in counts.items()}

    def read(self, ranges: Sequence[OffsetRange]) -> pa.Table:
        parts = []
        for r in ranges:
            table = self._load(r.topic)
            mask = pc.and_(
                pc.equal(table["kafka_partition"], r.partition),
                pc.and_(pc.greater_equal(table["kafka_offset"], r.start), pc.less(table["kafka_offset"], r.stop)),
            )
            parts.append(table.filter(mask))
        return pa.concat_tables(parts) if parts else RECORD_SCHEMA.empty_table()

    def produce(self, topic: str, keys: Sequence[str], values: Sequence[bytes]) -> list[tuple[int, int]]:
        n = int(self._meta(topic).read_text())
        existing = self._load(topic)
        next_offset = {p: hi for p, (_, hi) in self.offsets(topic).items()}
        partitions, offsets = [], []
        for key in keys:
            p = _stable_partition(key, n)
            partitions.append(p)
            offsets.append(next_offset[p])
            next_offset[p] += 1
        now_us = int(time.time() * 1_000_000)
        new = pa.table(
            {
                "kafka_topic": [topic] * len(keys),
                "kafka_partition": pa.array(partitions, pa.int32()),
                "kafka_offset": pa.array(offsets, pa.int64()),
                "kafka_ts": pa.array([now_us] * len(keys), pa.int64()),
                "kafka_key": list(keys),
                "value": pa.array(list(values), pa.binary()),
            },
            schema=RECORD_SCHEMA,
        )
        combined = pa.concat_tables([existing, new])
        with pa.OSFile(str(self._path(topic)), "wb") as sink, pa.ipc.new_file(sink, RECORD_SCHEMA) as writer:
            writer.write_table(combined)
        return list(zip(partitions, offsets, strict=True))


def _stable_partition(key: str, partitions: int) -> int:
    import zlib

    return zlib.crc32(key.encode()) % partitions
