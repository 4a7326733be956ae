"""The query router's Kafka side: ticks past the Iceberg watermark, read from the log.

Decision tree (per read of ticks):
1. `as_of` given: Iceberg only (Kafka has no history to pin).
2. route="iceberg": Iceberg only.
3. Kafka unreachable: Iceberg only, and the result says so (`freshness.kafka_error`): historical reads survive a
   broker outage.
4. No offsets past the watermark: Iceberg only (nothing newer exists).
5. Otherwise hybrid: Iceberg at the snapshot whose watermark was read, plus the Kafka records from that watermark to
   the log end. The watermark offset is the exact boundary, so nothing is read twice or skipped; a tail tick whose
   (exchange, symbol, sequence) is already in Iceberg is dropped, as the pipeline would.

Tail records are decoded and validated by the pipeline's own functions, so a tail tick looks exactly like the row
validated_ticks will write for it. The decoded tail is cached: the next query fetches only offsets it has not read.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa

from k2_assets.ticks.ingest import decode_records
from k2_assets.ticks.validate import validate
from k2_resources.arrow_util import conform
from k2_resources.errors import BrokerUnavailableError, K2Error, TailTooLargeError
from k2_resources.iceberg import OffsetRange
from k2_resources.kafka import TickLog
from k2_resources.schemas import SchemaStore


@dataclass(frozen=True)
class Part:
    source: str  # iceberg | kafka
    name: str  # table or topic
    rows: int
    snapshot_id: int | None = None
    offsets: dict[int, tuple[int, int]] | None = None  # kafka: partition -> [start, stop)


@dataclass
class Freshness:
    route: str  # iceberg | hybrid
    as_of: str | None = None
    watermark: dict[int, int] = field(default_factory=dict)  # partition -> first offset not in Iceberg
    kafka_end: dict[int, int] = field(default_factory=dict)
    lag_records: int = 0
    parts: list[Part] = field(default_factory=list)
    kafka_error: str | None = None
    lost_offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # deleted by retention before ingest
    cached: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "route": self.route,
            "as_of": self.as_of,
            "watermark": self.watermark,
            "kafka_end": self.kafka_end,
            "lag_records": self.lag_records,
            "parts": [p.__dict__ for p in self.parts],
            "kafka_error": self.kafka_error,
            "lost_offsets": self.lost_offsets,
            "cached": self.cached,
        }


class KafkaOffsetProbe:
    """Earliest and end offsets of a topic in two requests, over one long-lived admin client (a fresh client per
    query costs ~70 ms; this costs a few)."""

    def __init__(self, bootstrap_servers: str, timeout_s: float = 5.0) -> None:
        from confluent_kafka.admin import AdminClient

        self.timeout_s = timeout_s
        self.bootstrap_servers = bootstrap_servers
        self.admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        self._partitions: tuple[float, list[int]] | None = None

    def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        from confluent_kafka import KafkaException, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        try:
            if self._partitions is None or time.monotonic() - self._partitions[0] > 30.0:
                meta = self.admin.list_topics(topic, timeout=self.timeout_s).topics.get(topic)
                if meta is None or meta.error is not None:
                    raise K2Error(f"topic {topic} does not exist: produce to it first (`k2 produce`)")
                self._partitions = (time.monotonic(), sorted(meta.partitions))
            parts = self._partitions[1]
            result: dict[str, dict[int, int]] = {}
            for name, spec in (("low", OffsetSpec.earliest()), ("high", OffsetSpec.latest())):
                futures = self.admin.list_offsets(
                    {TopicPartition(topic, p): spec for p in parts}, request_timeout=self.timeout_s
                )
                result[name] = {tp.partition: int(f.result().offset) for tp, f in futures.items()}
        except KafkaException as exc:
            raise BrokerUnavailableError(f"no offsets from the broker at {self.bootstrap_servers}: {exc}") from exc
        return {p: (result["low"][p], result["high"][p]) for p in parts}


@dataclass(frozen=True)
class Tail:
    ticks: pa.Table  # ticks schema
    ranges: dict[int, tuple[int, int]]
    end: dict[int, int]
    lost: dict[int, tuple[int, int]]
    fetched: int  # records fetched from Kafka by this call (the rest came from the cache)
    seconds: float


class TailReader:
    """Validated ticks at offsets [watermark, end) of one topic, read incrementally."""

    def __init__(
        self,
        log: TickLog,
        topic: str,
        store: SchemaStore,
        ticks_schema: pa.Schema,
        max_records: int,
        probe: KafkaOffsetProbe | None = None,
    ) -> None:
        self.log = log
        self.probe = probe
        self.topic = topic
        self.store = store
        self.ticks_schema = ticks_schema
        self.max_records = max_records
        self._lock = threading.Lock()
        self._raw = pl.DataFrame()
        self._read_to: dict[int, int] = {}
        self._validated: tuple[dict[int, tuple[int, int]], pa.Table] | None = None

    def read(self, watermark: dict[int, int]) -> Tail:
        started = time.perf_counter()
        log_offsets = self.probe.offsets(self.topic) if self.probe is not None else self.log.offsets(self.topic)
        ranges: dict[int, tuple[int, int]] = {}
        lost: dict[int, tuple[int, int]] = {}
        for partition, (low, high) in log_offsets.items():
            start = watermark.get(partition, low)
            if low > start:
                lost[partition] = (start, low)
                start = low
            if high > start:
                ranges[partition] = (start, high)
        total = sum(hi - lo for lo, hi in ranges.values())
        if total > self.max_records:
            raise TailTooLargeError(
                f"{total:,} records of {self.topic} wait past the Iceberg watermark (limit {self.max_records:,}): "
                "ingest is behind; run `k2 run`, query with route='iceberg', or raise K2_QUERY_TAIL_MAX_RECORDS"
            )
        end = {p: hi for p, (_, hi) in log_offsets.items()}
        with self._lock:
            if self._validated is not None and self._validated[0] == ranges:
                ticks = self._validated[1]  # the same offsets as last time: nothing to decode or validate
                return Tail(ticks, ranges, end, lost, 0, time.perf_counter() - started)
            fetched = self._refresh(ranges)
            raw = self._raw
            if raw.is_empty():
                ticks = self.ticks_schema.empty_table()
            else:
                ticks = conform(validate(raw).ticks.to_arrow(), self.ticks_schema)
            self._validated = (dict(ranges), ticks)
        return Tail(ticks, ranges, end, lost, fetched, time.perf_counter() - started)

    def _refresh(self, ranges: dict[int, tuple[int, int]]) -> int:
        """Keep exactly the raw rows of `ranges`, fetching only what the cache lacks."""
        keep = self._raw
        if not keep.is_empty():
            bounds = pl.DataFrame(
                {
                    "kafka_partition": pl.Series(list(ranges), dtype=keep.schema["kafka_partition"]),
                    "_lo": [lo for lo, _ in ranges.values()],
                    "_hi": [hi for _, hi in ranges.values()],
                }
            )
            keep = (
                keep.join(bounds, on="kafka_partition", how="inner")
                .filter((pl.col("kafka_offset") >= pl.col("_lo")) & (pl.col("kafka_offset") < pl.col("_hi")))
                .drop("_lo", "_hi")
            )
        todo: list[OffsetRange] = []
        for partition, (lo, hi) in ranges.items():
            cached_to = self._read_to.get(partition)
            start = lo if cached_to is None or cached_to < lo or cached_to > hi else cached_to
            if cached_to is not None and cached_to > hi:  # the log was truncated or replaced: read it again
                keep = keep.filter(pl.col("kafka_partition") != partition)
            if hi > start:
                todo.append(OffsetRange(self.topic, partition, start, hi))
        fetched = 0
        if todo:
            records = self.log.read(todo)
            fetched = records.num_rows
            new = pl.from_arrow(decode_records(records, self.store, int(time.time() * 1_000_000)))
            assert isinstance(new, pl.DataFrame)
            keep = new if keep.is_empty() else pl.concat([keep, new], how="vertical_relaxed")
        self._raw = keep
        self._read_to = {p: hi for p, (_, hi) in ranges.items()}
        return fetched
