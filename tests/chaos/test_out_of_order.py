"""Ranges committed out of order are refused (OffsetGapError) without touching the table; in order they land."""

from __future__ import annotations

import pytest

from k2_resources.errors import OffsetGapError
from k2_resources.iceberg import OffsetRange
from tests.chaos.harness import BATCH, ChaosMatrix, Lake

pytestmark = pytest.mark.chaos


def test_a_range_past_the_watermark_is_refused_and_the_gap_is_filled_in_order(
    lake: Lake, rep: int, chaos_matrix: ChaosMatrix
) -> None:
    lake.produce()
    lake.ingest()  # watermarks exist for every partition
    lake.produce()
    planned = lake.planned()
    early = [OffsetRange(r.topic, r.partition, r.start, (r.start + r.stop) // 2) for r in planned]
    late = [OffsetRange(r.topic, r.partition, e.stop, r.stop) for r, e in zip(planned, early, strict=True)]
    snapshot = lake.snapshot_id()

    with pytest.raises(OffsetGapError, match="starts past the committed watermark"):
        lake.ingest(late)
    assert lake.snapshot_id() == snapshot

    assert lake.ingest(early).outcome.rows_appended == sum(r.size for r in early)
    assert lake.ingest(late).outcome.rows_appended == sum(r.size for r in late)
    assert lake.ingest(planned).outcome.rows_appended == 0  # the whole batch again: already there
    verdict = lake.verdict()
    chaos_matrix.record("ranges committed out of order", rep, verdict)
    assert verdict.exactly_once and verdict.produced == 2 * BATCH, verdict
