"""Kafka access behind a small interface: the real broker (confluent-kafka) or a file-backed fake for unit tests."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import dagster as dg
import numpy as np
import pyarrow as pa

from k2_resources.env import Settings
from k2_resources.errors import BrokerUnavailableError, K2Error
from k2_resources.iceberg import OffsetRange
from k2_resources.kafka_read import RECORD_SCHEMA, consumer_config, read_records

__all__ = ["RECORD_SCHEMA", "KafkaResource", "TickLog"]


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

    def commit_group_offsets(self, ranges: Sequence[OffsetRange]) -> str | None:
        """Record, for monitoring only, that a consumer group has reached the end of `ranges`; returns why that
        failed, or None. Logs without consumer groups have nothing to record."""
        return None


class KafkaResource(dg.ConfigurableResource, TickLog):  # type: ignore[type-arg, misc]
    """The real broker, reached by bootstrap servers."""

    bootstrap_servers: str
    consumer_group: str = "k2-ingest"
    request_timeout_s: float = 30.0
    group_commit_timeout_s: float = 5.0

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

        return Consumer(consumer_config(self.bootstrap_servers, self.consumer_group))

    def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        from confluent_kafka import KafkaException, TopicPartition

        meta = self._list_topics(self._admin()).get(topic)
        if meta is None:
            raise K2Error(f"topic {topic} does not exist: produce to it first (`k2 produce`)")
        consumer = self._consumer()
        deadline = time.monotonic() + self.request_timeout_s
        try:
            result: dict[int, tuple[int, int]] = {}
            for partition in sorted(meta.partitions):  # type: ignore[attr-defined]
                while True:
                    # Right after a broker restart a partition may have no leader yet: retry until the deadline.
                    try:
                        low, high = consumer.get_watermark_offsets(
                            TopicPartition(topic, partition), timeout=self.request_timeout_s, cached=False
                        )
                        break
                    except KafkaException as exc:
                        if time.monotonic() > deadline:
                            raise BrokerUnavailableError(
                                f"end offsets of {topic}[{partition}] unavailable for {self.request_timeout_s:.0f}s "
                                f"at {self.bootstrap_servers}: {exc}"
                            ) from exc
                        time.sleep(0.2)
                result[partition] = (int(low), int(high))
            return result
        finally:
            consumer.close()

    def read(self, ranges: Sequence[OffsetRange]) -> pa.Table:
        return read_records(self.bootstrap_servers, self.consumer_group, ranges, self.request_timeout_s)

    def commit_group_offsets(self, ranges: Sequence[OffsetRange]) -> str | None:
        """Commit the consumer group's offsets to the end of `ranges` (after Iceberg committed them).

        Informational only (ARCHITECTURE.md decision 2): lag dashboards read them, K2 never does. Bounded by
        group_commit_timeout_s, retried while the group coordinator is not ready; a failure is returned as text for
        the caller to log, never raised: the data is already safely in Iceberg.
        """
        from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

        ends: dict[tuple[str, int], int] = {}
        for r in ranges:
            ends[(r.topic, r.partition)] = max(ends.get((r.topic, r.partition), r.stop), r.stop)
        if not ends:
            return None
        request = [
            ConsumerGroupTopicPartitions(
                self.consumer_group, [TopicPartition(t, p, o) for (t, p), o in sorted(ends.items())]
            )
        ]
        admin = self._admin()
        deadline = time.monotonic() + self.group_commit_timeout_s
        problem = "no attempt made"
        while time.monotonic() < deadline:
            left = max(0.5, deadline - time.monotonic())
            try:
                done = admin.alter_consumer_group_offsets(request, request_timeout=left)
                result = done[self.consumer_group].result(timeout=left + 1)
            except (KafkaException, TimeoutError) as exc:
                problem = str(exc)
                time.sleep(0.2)
                continue
            failed = [f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in result.topic_partitions if tp.error]
            if not failed:
                return None
            problem = "; ".join(failed)
            time.sleep(0.2)
        return f"consumer group {self.consumer_group}: offsets not committed within {self.group_commit_timeout_s}s ({problem})"

    def group_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The consumer group's committed offset per partition (partitions without one are left out)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        request = [ConsumerGroupTopicPartitions(self.consumer_group, [TopicPartition(topic, p) for p in partitions])]
        admin = self._admin()  # must outlive the future: a collected client never resolves it
        done = admin.list_consumer_group_offsets(request, request_timeout=self.request_timeout_s)
        result = done[self.consumer_group].result(timeout=self.request_timeout_s + 1)
        return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}

    def _partition_count(self, topic: str) -> int:
        meta = self._list_topics(self._admin()).get(topic)
        if meta is None:
            raise K2Error(f"topic {topic} does not exist: create it first (`k2 produce` does)")
        return len(meta.partitions)  # type: ignore[attr-defined]

    def produce(self, topic: str, keys: Sequence[str], values: Sequence[bytes]) -> list[tuple[int, int]]:
        """Write records with their partition chosen like librdkafka's default (CRC32 of the key), so each one's
        offset follows from the per-partition order of the delivery reports (in produce order: the producer is
        idempotent) and one callback serves every record."""
        from confluent_kafka import Producer

        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys for {len(values)} values")
        partitions = key_partitions(keys, self._partition_count(topic))
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
        reported_partition: list[int] = []
        reported_offset: list[int] = []
        failures: list[str] = []

        def delivered(err, msg) -> None:  # type: ignore[no-untyped-def]
            if err is not None:
                failures.append(str(err))
            else:
                reported_partition.append(msg.partition())
                reported_offset.append(msg.offset())

        send, poll = producer.produce, producer.poll
        for key, value, partition in zip((k.encode() for k in keys), values, partitions.tolist(), strict=True):
            try:
                send(topic, value, key, partition, delivered)
            except BufferError:
                poll(0.05)
                send(topic, value, key, partition, delivered)
        remaining = producer.flush(self.request_timeout_s)
        if remaining or failures:
            raise BrokerUnavailableError(
                f"{remaining} records undelivered and {len(failures)} failed producing to {topic} "
                f"(first error: {failures[:1]}); is the broker at {self.bootstrap_servers} up?"
            )
        return positions_from_reports(partitions, np.array(reported_partition), np.array(reported_offset))


def key_partitions(keys: Sequence[str], partitions: int) -> np.ndarray:
    """The partition of each key: CRC32(key) % partitions, librdkafka's default for keyed records."""
    unique, inverse = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    per_key = np.array([stable_partition(str(k), partitions) for k in unique], dtype=np.int64)
    return per_key[inverse] if len(keys) else np.zeros(0, dtype=np.int64)


def positions_from_reports(
    partitions: np.ndarray, reported_partition: np.ndarray, reported_offset: np.ndarray
) -> list[tuple[int, int]]:
    """(partition, offset) per input record: the k-th record sent to a partition is its k-th delivery report."""
    offsets = np.full(len(partitions), -1, dtype=np.int64)
    for p in np.unique(partitions).tolist():
        sent = np.flatnonzero(partitions == p)
        got = reported_offset[reported_partition == p]
        if len(got) != len(sent) or (len(got) > 1 and not bool(np.all(np.diff(got) > 0))):
            raise K2Error(
                f"partition {p}: {len(sent)} records sent but {len(got)} delivery reports in offset order; "
                "the producer's ordering guarantee was broken (is enable.idempotence on?)"
            )
        offsets[sent] = got
    return list(zip(partitions.tolist(), offsets.tolist(), strict=True))


def stable_partition(key: str, partitions: int) -> int:
    import zlib

    return zlib.crc32(key.encode()) % partitions
