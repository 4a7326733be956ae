"""A writer process for the concurrent-commit test: imports only what committing needs, so spawning it is quick."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from k2_resources.iceberg import IcebergResource, OffsetRange, commit_offset_ranges
from k2_resources.tables import RAW_TICKS

TOPIC = "market.ticks.race"
COMMITS_PER_WRITER = 4
RANGE = 250


def _rows(schema: pa.Schema, ranges: list[OffsetRange]) -> pa.Table:
    """raw_ticks rows carrying only their Kafka position (the rest null): enough to prove what was committed."""
    n = sum(r.size for r in ranges)
    columns: dict[str, pa.Array] = {f.name: pa.nulls(n, f.type) for f in schema}
    columns["kafka_topic"] = pa.array([r.topic for r in ranges for _ in range(r.size)], pa.string())
    columns["kafka_partition"] = pa.array([r.partition for r in ranges for _ in range(r.size)], pa.int32())
    columns["kafka_offset"] = pa.array([o for r in ranges for o in range(r.start, r.stop)], pa.int64())
    columns["kafka_ts"] = pa.array([1_764_000_000_000_000] * n, pa.timestamp("us", tz="UTC"))
    return pa.table(columns, schema=schema)


def writer(catalog_uri: str, warehouse: str, partition: int, barrier: Any, results: Any) -> None:
    """Commit COMMITS_PER_WRITER consecutive ranges of one partition; the first commit waits for the other writer so
    both build on the same snapshot and one of them must lose the race."""
    iceberg = IcebergResource(catalog_uri=catalog_uri, warehouse=warehouse)
    table = iceberg.load(RAW_TICKS.name)
    schema = table.schema().as_arrow()
    attempts = []
    for i in range(COMMITS_PER_WRITER):
        waits = [barrier] if i == 0 else []

        def before_commit(waits: list[Any] = waits) -> None:
            while waits:
                waits.pop().wait(timeout=60)

        outcome = commit_offset_ranges(
            table,
            [OffsetRange(TOPIC, partition, i * RANGE, (i + 1) * RANGE)],
            lambda todo: _rows(schema, todo),
            batch_id=f"writer-{partition}-{i}",
            before_commit=before_commit,
        )
        attempts.append(outcome.attempts)
    results.put((partition, attempts))
