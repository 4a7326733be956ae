"""The warehouse disk fills up while a batch is written: the run fails with a typed error and commits nothing;
once there is space, the next run completes. Injected (K2_FAULT_POINT ...:enospc) and on a real full tmpfs."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from k2_resources.broker import LocalKafkaBroker
from k2_resources.errors import WarehouseWriteError
from tests.chaos.harness import BATCH, ChaosMatrix, Lake, make_lake

pytestmark = pytest.mark.chaos

INJECTED = {
    "raw_ticks.during_write:enospc": "disk full while writing data files (injected ENOSPC)",
    "raw_ticks.before_commit:enospc": "disk full while writing the new metadata (injected ENOSPC)",
}
TMPFS_BYTES = 32 * 1024 * 1024


@pytest.mark.parametrize("fault", list(INJECTED))
def test_a_write_failing_with_enospc_commits_nothing_and_the_next_run_completes(
    lake: Lake, fault: str, rep: int, chaos_matrix: ChaosMatrix, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake.produce()
    lake.ingest()
    snapshot = lake.snapshot_id()
    lake.produce()

    monkeypatch.setenv("K2_FAULT_POINT", fault)
    with pytest.raises(WarehouseWriteError, match="No space left on device"):
        lake.ingest()
    monkeypatch.delenv("K2_FAULT_POINT")
    assert lake.snapshot_id() == snapshot

    assert lake.ingest().outcome.rows_appended == BATCH
    verdict = lake.verdict()
    chaos_matrix.record(INJECTED[fault], rep, verdict)
    assert verdict.exactly_once, verdict


@pytest.fixture(scope="module")
def small_tmpfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 32 MB tmpfs for the warehouse (needs root; skipped where mounting is not allowed)."""
    mount = tmp_path_factory.mktemp("tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "k2-chaos", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@contextlib.contextmanager
def filled(directory: Path, leave_bytes: int) -> Iterator[None]:
    """Fill the file system of `directory` up to `leave_bytes` of free space, for the duration."""
    ballast = directory / "ballast"
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    with ballast.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, free - leave_bytes))
    try:
        yield
    finally:
        ballast.unlink()


def test_a_full_warehouse_file_system_fails_the_run_cleanly_and_the_next_run_completes(
    small_tmpfs: Path, tmp_path: Path, kafka_broker: LocalKafkaBroker, rep: int, chaos_matrix: ChaosMatrix
) -> None:
    warehouse = small_tmpfs / f"rep{rep}"
    lake = make_lake(tmp_path, kafka_broker.bootstrap, K2_WAREHOUSE=warehouse.as_uri())
    lake.produce()
    lake.ingest()
    snapshot = lake.snapshot_id()
    lake.produce()

    with filled(small_tmpfs, leave_bytes=8 * 1024), pytest.raises(WarehouseWriteError):
        lake.ingest()
    assert lake.snapshot_id() == snapshot

    assert lake.ingest().outcome.rows_appended == BATCH
    verdict = lake.verdict()
    chaos_matrix.record("disk full while writing (real full tmpfs)", rep, verdict)
    assert verdict.exactly_once, verdict
