"""Dead letters: undecodable Kafka values go to `market.ticks.dlq` with their original bytes and key, and headers
naming where they came from, in addition to the quarantine table.

Delivery is at least once: the records are produced before the quarantine commit of their batch, so a crash in
between produces them again on the re-run. Consumers deduplicate on the k2.source.* headers (topic, partition,
offset), which identify a record uniquely.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import polars as pl

from k2_resources.errors import DeadLetterError

HEADERS = ("k2.source.topic", "k2.source.partition", "k2.source.offset", "k2.error", "k2.batch")
COLUMNS = ["kafka_topic", "kafka_partition", "kafka_offset", "kafka_key", "raw_value", "detail"]


class DeadLetterSink(ABC):
    @abstractmethod
    def send(self, records: pl.DataFrame, batch_id: str) -> int:
        """Write `records` (COLUMNS) and return how many were written; raise DeadLetterError if any was not."""


class MemoryDeadLetters(DeadLetterSink):
    """For unit tests and dry runs: keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    def send(self, records: pl.DataFrame, batch_id: str) -> int:
        self.sent.extend(records.with_columns(pl.lit(batch_id).alias("batch_id")).to_dicts())
        return records.height


class KafkaDeadLetters(DeadLetterSink):
    """The real dead-letter topic (created with one partition if missing)."""

    def __init__(self, bootstrap_servers: str, topic: str, timeout_s: float = 30.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = timeout_s

    def _ensure_topic(self) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        if self.topic in admin.list_topics(timeout=self.timeout_s).topics:
            return
        future = admin.create_topics([NewTopic(self.topic, num_partitions=1, replication_factor=1)])[self.topic]
        try:
            future.result(timeout=self.timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise

    def send(self, records: pl.DataFrame, batch_id: str) -> int:
        if records.is_empty():
            return 0
        from confluent_kafka import KafkaException, Producer

        try:
            self._ensure_topic()
            producer = Producer(
                {"bootstrap.servers": self.bootstrap_servers, "enable.idempotence": True, "linger.ms": 20}
            )
        except KafkaException as exc:
            raise DeadLetterError(f"cannot reach {self.topic} at {self.bootstrap_servers}: {exc}") from exc
        failures: list[str] = []

        def delivered(err, _msg) -> None:  # type: ignore[no-untyped-def]
            if err is not None:
                failures.append(str(err))

        # One produce call per dead letter: undecodable records are rare, and the client has no batch API.
        for topic, partition, offset, key, value, detail in records.select(COLUMNS).iter_rows():
            headers: list[tuple[str, str | bytes | None]] = [
                ("k2.source.topic", str(topic).encode()),
                ("k2.source.partition", str(partition).encode()),
                ("k2.source.offset", str(offset).encode()),
                ("k2.error", str(detail or "").encode()),
                ("k2.batch", batch_id.encode()),
            ]
            producer.produce(
                self.topic,
                key=key.encode() if key is not None else None,
                value=value,
                headers=headers,
                on_delivery=delivered,
            )
        remaining = producer.flush(self.timeout_s)
        if remaining or failures:
            raise DeadLetterError(
                f"{remaining} dead letters undelivered and {len(failures)} failed to {self.topic} "
                f"(first error: {failures[:1]}); the batch was not committed: re-run it once the broker is reachable"
            )
        return records.height
