from __future__ import annotations

from pathlib import Path

from k2_resources.iceberg import OffsetRange
from k2_resources.kafka_file import FileTickLog


def test_repeated_produce_appends_and_offsets_continue_per_partition(tmp_path: Path) -> None:
    log = FileTickLog(tmp_path)
    log.ensure_topic("t", 2)
    first = log.produce("t", ["BHP", "CBA", "BHP"], [b"a", b"b", b"c"])
    second = log.produce("t", ["BHP"], [b"d"])
    bhp_partition = first[0][0]
    offsets = log.offsets("t")
    assert sum(hi for _, hi in offsets.values()) == 4
    assert second[0] == (bhp_partition, offsets[bhp_partition][1] - 1)
    records = log.read([OffsetRange("t", p, 0, hi) for p, (_, hi) in offsets.items()])
    assert sorted(records["value"].to_pylist()) == [b"a", b"b", b"c", b"d"]
