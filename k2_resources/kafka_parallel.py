"""Reading and decoding a large Kafka batch in worker processes, one group of partitions each.

Consuming is Python-bound (confluent-kafka builds a Message object per record while holding the GIL) and so is the
columnar Avro decode: in one process a million ticks take ~4 s of one core, and threads do not help. Worker
processes split the partitions and use every core; each returns its decoded rows as an Arrow IPC file the caller
memory-maps. The workers are long-lived `python -m k2_resources.kafka_parallel` processes that import only this
module (no Dagster, no pyiceberg; multiprocessing would import the parent's __main__ in each), started once per
process. On a 2-vCPU box 1M ticks take ~3 s this way instead of ~4.8 s in process.

Nothing here commits anything: the caller checks that every planned offset came back exactly once and commits
through the exactly-once writer as before. A worker that fails raises its own error in the caller; one that dies
raises IngestWorkerError. Either way the batch is not committed and a re-run is safe.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from k2_resources.avro import decode_column
from k2_resources.errors import BatchFailedError
from k2_resources.kafka_read import read_records
from k2_resources.offsets import OffsetRange
from k2_resources.schemas import SchemaStore

# Below this many records the in-process read wins: a worker round trip costs tens of milliseconds.
PARALLEL_MIN_RECORDS = 200_000


class IngestWorkerError(BatchFailedError):
    """A Kafka read worker process died; nothing was committed, re-run the batch."""


def decode_records(records: pa.Table, store: SchemaStore, landed_ts_us: int) -> pa.Table:
    """Kafka records -> raw_ticks rows (integer space). Undecodable values keep their bytes and the reason."""
    decoded, error_col = decode_column(records["value"], store)
    raw_value = pc.if_else(pc.is_valid(error_col), records["value"], pa.nulls(records.num_rows, pa.binary()))
    base = pl.from_arrow(records.drop_columns(["value"]))
    assert isinstance(base, pl.DataFrame)
    frame = base.hstack(decoded).with_columns(
        pl.lit(landed_ts_us, pl.Int64).alias("landed_ts"),
        pl.Series("decode_error", error_col),
        pl.Series("raw_value", raw_value),
    )
    return frame.to_arrow()


def _read_and_decode(
    bootstrap: str,
    group: str,
    ranges: list[OffsetRange],
    timeout_s: float,
    store: SchemaStore,
    landed_ts_us: int,
    spool: str,
) -> str:
    """In a worker: the decoded rows of `ranges`, written to an Arrow IPC file in `spool`; returns its path."""
    rows = decode_records(read_records(bootstrap, group, ranges, timeout_s), store, landed_ts_us)
    fd, path = tempfile.mkstemp(suffix=".arrow", dir=spool)
    os.close(fd)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
        writer.write_table(rows)
    return path


class _Worker:
    """One long-lived `python -m k2_resources.kafka_parallel` process speaking pickles over its stdin/stdout.
    Plain subprocesses, not multiprocessing: that would import the parent's __main__ (Dagster, seconds) in each."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "k2_resources.kafka_parallel"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def send(self, request: tuple[Any, ...]) -> None:
        assert self.proc.stdin is not None
        pickle.dump(request, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.flush()

    def receive(self) -> Any:
        assert self.proc.stdout is not None
        return pickle.load(self.proc.stdout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)
        if self.proc.poll() is None:
            self.proc.kill()


_WORKERS: list[_Worker] = []
_LOCK = threading.Lock()


def worker_count() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def _workers(n: int) -> list[_Worker]:
    """`n` running workers, started on first use and kept for the life of this process."""
    alive = [w for w in _WORKERS if w.proc.poll() is None]
    _WORKERS[:] = alive + [_Worker() for _ in range(n - len(alive))]
    return _WORKERS[:n]


def prestart() -> None:
    """Start the workers now (they take ~0.5 s to import), so a large batch read soon after finds them ready."""
    with _LOCK:
        _workers(worker_count())


@atexit.register
def _stop_workers() -> None:
    for worker in _WORKERS:
        worker.close()
    _WORKERS.clear()


def split_ranges(ranges: Sequence[OffsetRange], parts: int) -> list[list[OffsetRange]]:
    """Up to `parts` groups of whole partitions, contiguous in (topic, partition) order and of similar size, so
    concatenating the groups' results keeps the (topic, partition, offset) order of a single read."""
    todo = sorted(
        (r for r in ranges if r.size > 0),
        key=lambda r: (r.topic, r.partition, r.start),
    )
    total = sum(r.size for r in todo)
    groups: list[list[OffsetRange]] = []
    done = 0
    for r in todo:
        # Start a new group once this one has its share of the records.
        if not groups or (len(groups) < parts and done >= total * len(groups) / parts):
            groups.append([])
        groups[-1].append(r)
        done += r.size
    return groups


def read_decoded(
    bootstrap: str,
    group: str,
    ranges: Sequence[OffsetRange],
    timeout_s: float,
    store: SchemaStore,
    landed_ts_us: int,
) -> pa.Table:
    """decode_records(read of `ranges`), computed by the worker processes, in (topic, partition, offset) order."""
    groups = split_ranges(ranges, worker_count())
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    spool = tempfile.mkdtemp(prefix="k2-ingest-", dir=base)
    try:
        with _LOCK:
            workers = _workers(len(groups))
            try:
                for worker, g in zip(workers, groups, strict=True):
                    worker.send((bootstrap, group, g, timeout_s, store, landed_ts_us, spool))
                replies = [worker.receive() for worker in workers]
            except (EOFError, OSError, pickle.UnpicklingError) as exc:
                _stop_workers()
                raise IngestWorkerError(
                    f"a Kafka read worker process died ({type(exc).__name__}: {exc}); nothing was committed: "
                    "re-run the batch"
                ) from exc
        failed = [value for ok, value in replies if not ok]
        if failed:
            raise failed[0]
        # Memory-mapped: the rows stay readable after the files are removed below.
        tables = [pa.ipc.open_file(pa.memory_map(path)).read_all() for _, path in replies]
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    if not tables:
        return decode_records(read_records(bootstrap, group, [], timeout_s), store, landed_ts_us)
    return pa.concat_tables(tables, promote_options="permissive")


def _serve() -> None:
    """Worker main loop: one request per pickle on stdin, one (ok, path | exception) reply per pickle on stdout."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the reply stream
    requests = sys.stdin.buffer
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, _read_and_decode(*request))
        except Exception as exc:  # noqa: BLE001 - sent back and raised by the caller with its own type
            try:
                pickle.dumps(exc)
                reply = (False, exc)
            except Exception:  # noqa: BLE001
                reply = (False, IngestWorkerError(f"{type(exc).__name__}: {exc}"))
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


if __name__ == "__main__":
    _serve()
