from __future__ import annotations

import pytest

from k2_assets.ticks.planning import batch_key, plan_ranges, ranges_from_config, ranges_to_config, slowest_watermark
from k2_resources.errors import OffsetGapError
from k2_resources.iceberg import OffsetRange, advance, trim_to_watermarks

T = "market.ticks.asx"


def test_plans_from_committed_watermark_to_log_end_per_partition() -> None:
    ranges = plan_ranges(T, {0: (0, 100), 1: (0, 50), 2: (0, 0)}, {0: 40}, max_per_partition=1_000)
    assert ranges == [OffsetRange(T, 0, 40, 100), OffsetRange(T, 1, 0, 50)]


def test_caps_each_range_at_the_batch_size() -> None:
    assert plan_ranges(T, {0: (0, 100)}, {}, max_per_partition=30) == [OffsetRange(T, 0, 0, 30)]


def test_starts_at_earliest_offset_when_retention_deleted_past_the_watermark() -> None:
    assert plan_ranges(T, {0: (500, 600)}, {0: 100}, 1_000) == [OffsetRange(T, 0, 500, 600)]


def test_nothing_to_plan_when_caught_up() -> None:
    assert plan_ranges(T, {0: (0, 10)}, {0: 10}, 1_000) == []


def test_trim_skips_committed_trims_straddling_and_refuses_gaps() -> None:
    marks = {T: {0: 100, 1: 50}}
    todo, done = trim_to_watermarks([OffsetRange(T, 0, 0, 100), OffsetRange(T, 1, 40, 80)], marks)
    assert done == [OffsetRange(T, 0, 0, 100)]
    assert todo == [OffsetRange(T, 1, 50, 80)]
    with pytest.raises(OffsetGapError, match=r"\[50, 60\) would be lost"):
        trim_to_watermarks([OffsetRange(T, 1, 60, 80)], marks)


def test_advance_moves_watermarks_forward_only() -> None:
    marks = advance({T: {0: 100}}, [OffsetRange(T, 0, 100, 150), OffsetRange(T, 3, 0, 7)])
    assert marks == {T: {0: 150, 3: 7}}


def test_slowest_watermark_takes_the_minimum_over_tables() -> None:
    assert slowest_watermark(T, {T: {0: 10, 1: 20}}, {T: {0: 5, 1: 30}}) == {0: 5, 1: 20}


def test_config_round_trip_and_stable_batch_key() -> None:
    ranges = [OffsetRange(T, 1, 0, 5), OffsetRange(T, 0, 3, 9)]
    assert ranges_from_config(ranges_to_config(ranges)) == ranges
    assert batch_key(ranges) == batch_key(list(reversed(ranges)))
    assert batch_key(ranges) != batch_key([OffsetRange(T, 1, 0, 6)])
