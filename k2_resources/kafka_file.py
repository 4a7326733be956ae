"""A file-backed TickLog for unit tests: the same interface as the broker, no services."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from k2_resources.errors import K2Error
from k2_resources.iceberg import OffsetRange
from k2_resources.kafka import RECORD_SCHEMA, TickLog, stable_partition


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
        # Read into memory (not a memory map): produce() rewrites this file, which would pull the pages from under
        # a live map.
        with pa.OSFile(str(path)) as source:
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
            p = stable_partition(key, n)
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
        staging = self._path(topic).with_suffix(".arrow.tmp")
        with pa.OSFile(str(staging), "wb") as sink, pa.ipc.new_file(sink, RECORD_SCHEMA) as writer:
            writer.write_table(combined)
        os.replace(staging, self._path(topic))  # atomic: a reader sees the old log or the new one
        return list(zip(partitions, offsets, strict=True))
