"""Orphan-file removal on a real SQLite Iceberg catalog: only unreferenced files past the safety window go."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest
from pyiceberg.table import Table

from k2_assets.maintenance.compaction import CompactionPolicy, compact_table
from k2_assets.maintenance.expiry import ExpiryPolicy, expire_table
from k2_assets.maintenance.orphans import remove_orphans
from k2_resources.errors import ConfigurationError
from tests.unit.test_maintenance_support import canonical, ticks_table

EAGER = CompactionPolicy(max_files_per_partition=2, min_avg_file_bytes=0)
TEN_DAYS = 10 * 24 * 3600


def _table_dir(table: Table) -> Path:
    return Path(table.location().removeprefix("file://"))


def _age_everything(root: Path, seconds: int = TEN_DAYS) -> None:
    old = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def _snapshot_rows(table: Table) -> dict[int, int]:
    return {s.snapshot_id: table.scan(snapshot_id=s.snapshot_id).to_arrow().num_rows for s in table.snapshots()}


def test_only_unreferenced_files_past_the_window_are_orphans_and_dry_run_deletes_nothing(tmp_path: Path) -> None:
    table, data = ticks_table(tmp_path)
    compact_table(table, EAGER)  # old small files stay referenced by earlier snapshots
    root = _table_dir(table)
    partition_dir = next(p.parent for p in (root / "data").rglob("*.parquet"))
    stray_data = partition_dir / "00000-0-crashed-writer.parquet"
    stray_meta = root / "metadata" / "abandoned-manifest.avro"
    stray_data.write_bytes(b"PAR1 left by a writer that died before its commit")
    stray_meta.write_bytes(b"Obj manifest of a commit that lost its race")
    _age_everything(root)  # every file is old: only references can protect them
    in_flight = partition_dir / "00001-0-in-flight.parquet"
    in_flight.write_bytes(b"PAR1 written a moment ago, commit pending")
    rows_before = _snapshot_rows(table)

    listed = remove_orphans(table, dry_run=True)

    assert sorted(o.path for o in listed.orphans) == sorted(f"file://{p}" for p in (stray_data, stray_meta))
    assert listed.too_young == 1 and listed.deleted == 0
    assert stray_data.exists() and stray_meta.exists()

    sizes = stray_data.stat().st_size + stray_meta.stat().st_size

    removed = remove_orphans(table, dry_run=False)

    assert removed.deleted == 2 and removed.bytes_deleted == sizes
    assert not stray_data.exists() and not stray_meta.exists() and in_flight.exists()
    assert _snapshot_rows(table) == rows_before
    assert canonical(table.scan().to_arrow()).equals(canonical(data))


def test_expiry_leaves_nothing_for_orphan_removal(tmp_path: Path) -> None:
    table, _ = ticks_table(tmp_path)
    compact_table(table, EAGER)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    expired = expire_table(table, ExpiryPolicy(older_than=dt.timedelta(hours=1), retain_last=1), now=later)
    assert expired.data_files_deleted > 0
    _age_everything(_table_dir(table))

    result = remove_orphans(table, dry_run=True)

    assert result.orphans == [] and result.files_referenced == result.files_listed


def test_a_safety_window_under_an_hour_is_refused(tmp_path: Path) -> None:
    table, _ = ticks_table(tmp_path, batches=2)

    with pytest.raises(ConfigurationError, match="in flight"):
        remove_orphans(table, older_than=dt.timedelta(minutes=5), dry_run=False)
