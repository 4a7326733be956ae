"""Planning Kafka micro-batches: which offsets the next run covers, from what is committed and what the log holds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from k2_resources.iceberg import OffsetRange, Watermarks


def plan_ranges(
    topic: str,
    log_offsets: Mapping[int, tuple[int, int]],
    committed: Mapping[int, int],
    max_per_partition: int,
) -> list[OffsetRange]:
    """Ranges [lo, hi) per partition from the committed watermark (or the log's earliest offset) to the log end.

    If retention already deleted offsets past the watermark, the range starts at the earliest offset still in the
    log: those records are gone from Kafka and cannot be planned (the gap shows as a jump in the watermark).
    """
    ranges = []
    for partition, (earliest, end) in sorted(log_offsets.items()):
        start = max(committed.get(partition, earliest), earliest)
        stop = min(end, start + max_per_partition)
        if stop > start:
            ranges.append(OffsetRange(topic, partition, start, stop))
    return ranges


def slowest_watermark(topic: str, *watermarks: Watermarks) -> dict[int, int]:
    """Per partition, the lowest watermark over several tables: the batch must be re-planned from there so every
    table downstream of a failed step catches up. A partition missing from any table is missing here too."""
    partition_sets = [set(w.get(topic, {})) for w in watermarks]
    if not partition_sets:
        return {}
    common = set.intersection(*partition_sets)
    return {p: min(w[topic][p] for w in watermarks) for p in common}


def ranges_to_config(ranges: Sequence[OffsetRange]) -> list[dict[str, object]]:
    return [{"topic": r.topic, "partition": r.partition, "start": r.start, "stop": r.stop} for r in ranges]


def ranges_from_config(items: Sequence[Mapping[str, object]]) -> list[OffsetRange]:
    return [
        OffsetRange(str(i["topic"]), int(i["partition"]), int(i["start"]), int(i["stop"]))  # type: ignore[call-overload]
        for i in items
    ]


def batch_key(ranges: Sequence[OffsetRange]) -> str:
    """A short stable id for a planned batch (same ranges, same key)."""
    payload = json.dumps(ranges_to_config(sorted(ranges)), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]
