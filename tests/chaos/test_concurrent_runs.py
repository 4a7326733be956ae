"""The same range run twice, and two runs racing on one range: exactly one lands it, the other skips it."""

from __future__ import annotations

import threading
import time

import pytest

from k2_assets.ticks.ingest import RawIngestResult
from tests.chaos.harness import BATCH, ChaosMatrix, Lake

pytestmark = pytest.mark.chaos


def test_the_same_range_run_twice_appends_once(lake: Lake, rep: int, chaos_matrix: ChaosMatrix) -> None:
    lake.produce()
    ranges = lake.planned()
    first = lake.ingest(ranges)
    snapshot = lake.snapshot_id()

    second = lake.ingest(ranges)

    assert (first.outcome.rows_appended, second.outcome.rows_appended) == (BATCH, 0)
    assert len(second.outcome.ranges_skipped) == len(ranges)
    assert lake.snapshot_id() == snapshot, "a skipped re-run must not even write a snapshot"
    verdict = lake.verdict()
    chaos_matrix.record("same range run twice", rep, verdict)
    assert verdict.exactly_once, verdict


def test_two_writers_that_both_pass_the_watermark_check_cannot_both_commit(
    lake: Lake, rep: int, chaos_matrix: ChaosMatrix
) -> None:
    """Both writers read the same (empty) watermark and build their rows; a barrier releases them into the commit
    together. The catalog accepts one; the loser's retry reloads the table, sees the range committed and skips."""
    lake.produce()
    ranges = lake.planned()
    barrier = threading.Barrier(2, timeout=60)
    results: list[RawIngestResult] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            results.append(lake.ingest(ranges, before_commit=_once(barrier.wait)))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    appended = sorted(r.outcome.rows_appended for r in results)
    assert appended == [0, BATCH]
    loser = next(r for r in results if r.outcome.rows_appended == 0)
    assert loser.outcome.attempts == 2 and len(loser.outcome.ranges_skipped) == len(ranges)
    verdict = lake.verdict()
    chaos_matrix.record("two writers racing on one range (threads, forced overlap)", rep, verdict)
    assert verdict.exactly_once, verdict


def test_two_ingest_processes_racing_on_one_range(lake: Lake, rep: int, chaos_matrix: ChaosMatrix) -> None:
    lake.produce()
    ranges = lake.planned()
    lake.raw_table()  # created up front, as the sensor's first evaluation does
    start_at = time.time() + 1.0
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: lake.ingest_in_process(ranges=ranges, start_at=start_at), range(2)))

    assert [r.exitcode for r in runs] == [0, 0], runs
    outcomes = [r.outcome for r in runs]
    assert all(o is not None for o in outcomes)
    assert sorted(o["rows_appended"] for o in outcomes if o) == [0, BATCH]
    verdict = lake.verdict()
    chaos_matrix.record("two ingest processes racing on one range", rep, verdict)
    assert verdict.exactly_once, verdict


def _once(fn):  # type: ignore[no-untyped-def]
    """`fn` on the first call only (a retried attempt must not wait at the barrier again)."""
    called = []

    def wrapper() -> None:
        if not called:
            called.append(True)
            fn()

    return wrapper
