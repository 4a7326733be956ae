"""Cutting rows to Kafka offset ranges (k2_resources/offset_reads.py)."""

import polars as pl

from k2_resources.offset_reads import in_ranges
from k2_resources.offsets import OffsetRange


def rows() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "kafka_topic": ["a"] * 4 + ["b"] * 2,
            "kafka_partition": [0, 0, 1, 1, 0, 0],
            "kafka_offset": [5, 6, 5, 9, 5, 6],
            "value": list(range(6)),
        }
    )


def test_rows_outside_every_range_are_cut() -> None:
    cut = in_ranges(rows(), [OffsetRange("a", 0, 6, 10), OffsetRange("a", 1, 0, 9), OffsetRange("b", 0, 5, 6)])
    assert cut["value"].to_list() == [1, 2, 4]


def test_a_frame_already_inside_its_ranges_comes_back_as_it_is() -> None:
    frame = rows()
    ranges = [OffsetRange("a", 0, 5, 7), OffsetRange("a", 1, 5, 10), OffsetRange("b", 0, 0, 7)]
    assert in_ranges(frame, ranges) is frame


def test_no_ranges_keep_no_rows() -> None:
    assert in_ranges(rows(), []).is_empty()
