"""validated_ticks killed mid-batch (the whole ingest job in its own process, as `k2 run` runs it), then the next
run: every raw row still ends exactly once in ticks, quarantine or the duplicates, and raw_ticks is untouched."""

from __future__ import annotations

import dagster as dg
import pytest

from k2.feed.simulator import FaultRates
from tests.chaos.harness import ChaosMatrix, Lake, validated_exactly_once

pytestmark = pytest.mark.chaos

# Rows for every outcome: duplicates, rule failures, undecodable values.
DIRTY = FaultRates(duplicates=0.02, non_positive_price=0.01, negative_volume=0.01, undecodable=0.01)
# Two places inside validated_ticks, alternating by repetition (each job costs seconds of Dagster and GE):
# while the ticks batch is written to the audit branch, and between a side table's write and its commit.
JOB_KILLS = ("ticks.during_write", "quarantine.before_commit")
FAULT = "SIGKILL inside validated_ticks (WAP staging write / quarantine write-commit, alternating)"


def test_a_job_killed_inside_validated_ticks_recovers_with_every_raw_row_accounted_once(
    lake: Lake, rep: int, chaos_matrix: ChaosMatrix, dagster_instance: dg.DagsterInstance
) -> None:
    point = JOB_KILLS[rep % len(JOB_KILLS)]
    lake.produce(faults=DIRTY)

    died = lake.ingest_in_process(fault=point, job=True)

    assert died.killed, f"the job was meant to die at {point}: {died}"
    validated = validated_exactly_once(lake, dagster_instance)  # runs the job again, then checks
    verdict = lake.verdict()
    chaos_matrix.record(FAULT, rep, verdict, validated=validated)
    assert verdict.exactly_once, verdict
    assert validated, "raw rows and ticks + quarantine + duplicates disagree after recovery"
