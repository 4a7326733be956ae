"""The ingest process the chaos tests kill: raw_ticks ingest (the code the raw_ticks asset runs) in its own process.

Processes come from a multiprocessing fork server that imported K2 once, so each one starts in a fraction of a
second instead of re-importing Dagster, pyiceberg and polars. A worker arms its fault with K2_FAULT_POINT (see
k2_resources/faults.py) before it opens the catalog; a killed worker exits with -SIGKILL and writes nothing.
Nothing K2 imports may start threads at import time, or the fork server could not fork safely: a worker that hangs
is reported as such.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# Modules the fork server imports once; workers inherit them.
PRELOAD = ["tests.chaos.worker", "k2_assets.ticks.ingest", "k2_resources.kafka", "k2_resources.iceberg"]


@dataclass(frozen=True)
class WorkerResult:
    exitcode: int
    outcome: dict[str, Any] | None  # what ingest_raw returned, None if the worker died or failed
    error: str | None  # the exception a failed worker raised, as "Type: message"

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL


@cache
def _context() -> Any:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def ingest_in_worker(
    environ: dict[str, str],
    result_path: Path,
    *,
    fault: str | None = None,
    ranges: list[dict[str, Any]] | None = None,
    start_at: float | None = None,
    job: bool = False,
    timeout_s: float = 120.0,
) -> WorkerResult:
    """Run one raw_ticks ingest (or the ingest job) in a new process and wait for it (kill it and fail loudly if it
    hangs)."""
    process = start_worker(environ, result_path, fault=fault, ranges=ranges, start_at=start_at, job=job)
    return wait_worker(process, result_path, timeout_s)


def start_worker(
    environ: dict[str, str],
    result_path: Path,
    *,
    fault: str | None = None,
    ranges: list[dict[str, Any]] | None = None,
    start_at: float | None = None,
    job: bool = False,
) -> Any:
    target = _run_job if job else _main
    process = _context().Process(target=target, args=(environ, str(result_path), fault, ranges, start_at))
    process.start()
    return process


def wait_worker(process: Any, result_path: Path, timeout_s: float = 120.0) -> WorkerResult:
    process.join(timeout_s)
    if process.exitcode is None:
        process.kill()
        process.join(10)
        raise AssertionError(
            f"ingest worker {process.pid} hung for {timeout_s:.0f}s (a module imported at fork-server start may "
            "have started threads: keep import-time code free of polars/pyarrow work)"
        )
    payload = json.loads(result_path.read_text()) if result_path.exists() else {}
    return WorkerResult(int(process.exitcode), payload.get("outcome"), payload.get("error"))


def _arm(environ: dict[str, str], fault: str | None) -> None:
    os.environ.update(environ)
    os.environ.pop("K2_FAULT_POINT", None)
    if fault:
        os.environ["K2_FAULT_POINT"] = fault


def _run_job(environ: dict[str, str], result_path: str, fault: str | None, *_: Any) -> None:
    """The ingest job (raw_ticks -> validated_ticks -> bars_1m) until Kafka is drained, as `k2 run` runs it."""
    _arm(environ, fault)
    import dagster as dg

    from k2.runner import run_until_caught_up
    from k2_resources.env import load_settings

    with dg.DagsterInstance.ephemeral() as instance:
        summary = run_until_caught_up(load_settings(environ), instance=instance)
    Path(result_path).write_text(json.dumps({"outcome": {"batches": summary.batches}}))


def _main(
    environ: dict[str, str],
    result_path: str,
    fault: str | None,
    ranges: list[dict[str, Any]] | None,
    start_at: float | None,
) -> None:
    _arm(environ, fault)
    from k2_assets.ticks.ingest import ingest_raw
    from k2_assets.ticks.planning import plan_ranges, ranges_from_config
    from k2_resources.env import load_settings
    from k2_resources.iceberg import IcebergResource, read_watermarks
    from k2_resources.kafka import KafkaResource
    from k2_resources.schemas import FileSchemaStore
    from k2_resources.tables import RAW_TICKS

    settings = load_settings(environ)
    kafka = KafkaResource.from_settings(settings)
    table = IcebergResource.from_settings(settings).ensure_table(RAW_TICKS)
    if ranges is None:
        committed = read_watermarks(table).get(settings.tick_topic, {})
        planned = plan_ranges(
            settings.tick_topic, kafka.offsets(settings.tick_topic), committed, settings.max_batch_per_partition
        )
    else:
        planned = ranges_from_config(ranges)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    try:
        result = ingest_raw(kafka, table, planned, FileSchemaStore(), batch_id=f"chaos-worker-{os.getpid()}")
    except Exception as exc:
        Path(result_path).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise SystemExit(3) from exc
    out = result.outcome
    Path(result_path).write_text(
        json.dumps(
            {
                "outcome": {
                    "rows_appended": out.rows_appended,
                    "ranges_committed": len(out.ranges_committed),
                    "ranges_skipped": len(out.ranges_skipped),
                    "attempts": out.attempts,
                    "group_commit_error": result.group_commit_error,
                }
            }
        )
    )
