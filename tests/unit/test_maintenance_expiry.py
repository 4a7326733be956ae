"""Snapshot expiry and time travel on a real SQLite Iceberg catalog: what is kept, what is deleted from disk, and
reads of retained vs expired snapshots."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from k2_assets.maintenance.compaction import CompactionPolicy, compact_table
from k2_assets.maintenance.expiry import ExpiryPolicy, expire_table
from k2_assets.maintenance.files import live_files, reachable
from k2_assets.maintenance.tags import create_tag
from k2_resources.errors import SnapshotNotFoundError
from k2_resources.iceberg import scan_as_of
from k2_resources.tables import TICKS
from tests.unit.test_maintenance_support import append_batches, canonical, catalog_in, tick_rows

EAGER = CompactionPolicy(max_files_per_partition=2, min_avg_file_bytes=0)
LATER = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)  # every snapshot of a test is "old" seen from here
ALL_OLD = ExpiryPolicy(older_than=dt.timedelta(hours=1), retain_last=3)


def _exists(path: str) -> bool:
    return Path(path.removeprefix("file://")).exists()


def _build(tmp_path: Path):  # type: ignore[no-untyped-def]
    """s1..s2, tag `bt` on s2, s3..s6, then compaction: its overwrite c1 and the append c2 on top."""
    iceberg = catalog_in(tmp_path)
    table = iceberg.ensure_table(TICKS)
    data = tick_rows(table, 6_000)
    third = data.num_rows // 3
    ids = append_batches(table, data.slice(0, third), 2)
    create_tag(iceberg, "bt", ["ticks"])
    ids += append_batches(table, data.slice(third), 4, first_offset=third)
    compact_table(table, EAGER)
    current = table.current_snapshot()
    ids += [current.parent_snapshot_id, current.snapshot_id]
    return iceberg, table, data, ids


def test_nothing_younger_than_the_retention_is_expired(tmp_path: Path) -> None:
    _, table, _, ids = _build(tmp_path)

    result = expire_table(table, ExpiryPolicy(older_than=dt.timedelta(days=90), retain_last=1))

    assert result.expired_ids == [] and [s.snapshot_id for s in table.snapshots()] == ids


def test_expiry_keeps_the_last_n_of_main_the_current_and_every_tagged_snapshot(tmp_path: Path) -> None:
    _, table, _, ids = _build(tmp_path)
    s1, s2, s3, s4, s5, s6, c1, c2 = ids

    result = expire_table(table, ALL_OLD, now=LATER)

    assert sorted(result.expired_ids) == sorted([s1, s3, s4, s5])
    assert {s.snapshot_id for s in table.snapshots()} == {s2, s6, c1, c2}
    assert table.current_snapshot().snapshot_id == c2
    assert result.snapshots_before == 8 and result.snapshots_after == 4


def test_expiry_deletes_exactly_the_files_only_expired_snapshots_referenced(tmp_path: Path) -> None:
    _, table, data, ids = _build(tmp_path)
    s2 = ids[1]
    every_file = reachable(table, table.snapshots()).all_paths()
    tagged = reachable(table, [table.snapshot_by_id(s2)]).all_paths()
    current = reachable(table, [table.current_snapshot()]).all_paths()

    result = expire_table(table, ExpiryPolicy(older_than=dt.timedelta(hours=1), retain_last=1), now=LATER)

    kept = tagged | current
    assert result.data_files_deleted > 0 and result.manifest_lists_deleted == len(result.expired_ids)
    assert all(_exists(p) for p in kept)
    assert not any(_exists(p) for p in every_file - kept)
    assert result.not_deleted == []
    assert canonical(table.scan().to_arrow()).equals(canonical(data))


def test_time_travel_to_retained_snapshots_is_unchanged_by_compaction_and_expiry(tmp_path: Path) -> None:
    iceberg = catalog_in(tmp_path)
    table = iceberg.ensure_table(TICKS)
    data = tick_rows(table, 6_000)
    half = data.num_rows // 2
    early = append_batches(table, data.slice(0, half), 3)
    create_tag(iceberg, "backtest", ["ticks"])
    late = append_batches(table, data.slice(half), 3, first_offset=half)
    at_tag = canonical(scan_as_of(table, tag="backtest").to_arrow())
    at_last_ingest = canonical(scan_as_of(table, snapshot_id=late[-1]).to_arrow())
    expired_id = late[0]
    expired_at = dt.datetime.fromtimestamp(table.snapshot_by_id(expired_id).timestamp_ms / 1000, dt.UTC)
    assert at_tag.num_rows == half and at_last_ingest.num_rows == data.num_rows

    compact_table(table, EAGER)
    assert canonical(scan_as_of(table, tag="backtest").to_arrow()).equals(at_tag)
    assert canonical(scan_as_of(table, snapshot_id=late[-1]).to_arrow()).equals(at_last_ingest)
    assert canonical(table.scan().to_arrow()).equals(at_last_ingest)

    result = expire_table(table, ExpiryPolicy(older_than=dt.timedelta(hours=1), retain_last=3), now=LATER)
    assert expired_id in result.expired_ids and early[0] in result.expired_ids

    assert canonical(scan_as_of(table, tag="backtest").to_arrow()).equals(at_tag)
    assert canonical(scan_as_of(table, snapshot_id=late[-1]).to_arrow()).equals(at_last_ingest)
    assert canonical(scan_as_of(table, as_of=dt.datetime.now(dt.UTC)).to_arrow()).equals(at_last_ingest)
    # pyiceberg alone plans no files for an expired snapshot (a count says 0 rows); the guard refuses the read.
    assert list(table.scan(snapshot_id=expired_id).plan_files()) == []
    assert table.scan(snapshot_id=expired_id).count() == 0
    with pytest.raises(SnapshotNotFoundError, match="expired"):
        scan_as_of(table, snapshot_id=expired_id)
    with pytest.raises(SnapshotNotFoundError, match="expired"):
        scan_as_of(table, as_of=expired_at)
    with pytest.raises(SnapshotNotFoundError, match="no tag"):
        scan_as_of(table, tag="never-made")


def test_compaction_leaves_the_previous_snapshot_readable_until_it_expires(tmp_path: Path) -> None:
    iceberg = catalog_in(tmp_path)
    table = iceberg.ensure_table(TICKS)
    data = tick_rows(table, 3_000)
    ids = append_batches(table, data, 3)
    small_files = {f.file_path for f in live_files(table).data_files()}

    compact_table(table, EAGER)

    assert all(_exists(p) for p in small_files)
    assert canonical(scan_as_of(table, snapshot_id=ids[-1]).to_arrow()).equals(canonical(data))


def test_a_table_asking_to_keep_more_snapshots_keeps_them(tmp_path: Path) -> None:
    _, table, _, ids = _build(tmp_path)
    with table.transaction() as tx:
        tx.set_properties({"history.expire.min-snapshots-to-keep": "5"})

    expire_table(table, ExpiryPolicy(older_than=dt.timedelta(hours=1), retain_last=1), now=LATER)

    assert {s.snapshot_id for s in table.snapshots()} == {ids[1], *ids[-5:]}
