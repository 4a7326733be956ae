"""The ingest process SIGKILLed at each point of a raw_ticks batch, then the next run: every tick exactly once."""

from __future__ import annotations

import pytest

from tests.chaos.harness import BATCH, ChaosMatrix, Lake

pytestmark = pytest.mark.chaos

# Fault point (k2_resources/faults.py) -> the row it gets in the chaos matrix.
KILL_POINTS = {
    "raw_ticks.after_read": "SIGKILL after the Kafka read, before any write",
    "raw_ticks.during_write": "SIGKILL during the data-file write",
    "raw_ticks.before_commit": "SIGKILL between write and commit",
    "raw_ticks.after_commit": "SIGKILL after the Iceberg commit, before the group-offset commit",
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_ingest_is_completed_by_the_next_run_without_loss_or_duplicates(
    lake: Lake, point: str, rep: int, chaos_matrix: ChaosMatrix
) -> None:
    lake.produce()
    assert lake.ingest().outcome.rows_appended == BATCH  # history the crash must not disturb
    snapshot_before, mark_before = lake.snapshot_id(), lake.watermark_total()
    lake.produce()

    died = lake.ingest_in_process(fault=point)

    assert died.killed, f"the worker was meant to die at {point}: {died}"
    committed = point == "raw_ticks.after_commit"
    if committed:
        assert lake.watermark_total() == mark_before + BATCH
        groups = lake.kafka.group_offsets(lake.topic, range(lake.settings.topic_partitions))
        assert sum(groups.values()) == mark_before, "the group offsets were meant to lag behind Iceberg"
    else:
        assert (lake.snapshot_id(), lake.watermark_total()) == (snapshot_before, mark_before)

    recovery = lake.ingest()

    assert recovery.outcome.rows_appended == (0 if committed else BATCH)
    assert recovery.group_commit_error is None
    groups = lake.kafka.group_offsets(lake.topic, range(lake.settings.topic_partitions))
    assert sum(groups.values()) == lake.watermark_total(), "group offsets catch up once Iceberg has the range"
    verdict = lake.verdict()
    chaos_matrix.record(KILL_POINTS[point], rep, verdict)
    assert verdict.exactly_once, verdict
