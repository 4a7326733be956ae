"""Compaction on a real SQLite Iceberg catalog: one atomic commit, same rows, sorted files, watermark carried
forward, and safe against writers that commit while it runs."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table
from pyiceberg.types import StringType

from k2.feed.simulator import generate
from k2_assets.maintenance.compaction import MAINTENANCE_PROPERTY, CompactionPolicy, compact_table
from k2_assets.maintenance.files import live_files
from k2_assets.maintenance.rewrite import read_files, sort_rows, sort_spec, write_sorted
from k2_resources.arrow_util import conform
from k2_resources.errors import ConfigurationError
from k2_resources.iceberg import WATERMARK_PROPERTY, encode_watermarks, read_watermarks
from k2_resources.tables import TICKS, TableDef
from tests.unit.test_maintenance_support import (
    SESSION,
    TOPIC,
    append_batches,
    canonical,
    catalog_in,
    tick_rows,
    ticks_table,
)

EAGER = CompactionPolicy(max_files_per_partition=2, min_avg_file_bytes=0)
SORT = [("symbol", "ascending"), ("exchange_ts", "ascending")]


def _read(path: str) -> pa.Table:
    return pq.ParquetFile(path.removeprefix("file://")).read(columns=["symbol", "exchange_ts"])


def test_compaction_replaces_small_files_with_one_sorted_file_per_partition_in_one_commit(tmp_path: Path) -> None:
    table, data = ticks_table(tmp_path)
    before = live_files(table)
    snapshots = len(table.snapshots())
    watermark = read_watermarks(table)
    crowded = {k for k, files in before.data.items() if len(files) > 2}
    assert crowded, "the fixture must produce partitions with several files"

    result = compact_table(table, EAGER)

    # One catalog commit: the overwrite, then an empty append that drops the manifest of replaced files.
    assert len(table.snapshots()) == snapshots + 2
    current = table.current_snapshot()
    rewrite = table.snapshot_by_id(current.parent_snapshot_id)
    assert (rewrite.summary.operation.value, current.summary.operation.value) == ("overwrite", "append")
    assert int(rewrite.summary["deleted-data-files"]) == result.files_rewritten
    assert all(m.deleted_files_count == 0 for m in current.manifests(table.io))
    assert result.partitions_compacted == len(crowded) and not result.given_up
    assert result.rows_rewritten == sum(int(f.record_count) for k in crowded for f in before.data[k])
    assert result.files_after == result.files_before - result.files_rewritten + result.files_written
    after = live_files(table)
    for key in crowded:
        (new_file,) = after.data[key]
        rows = _read(new_file.file_path)
        assert rows.equals(rows.sort_by(SORT))
        assert new_file.sort_order_id == table.sort_order().order_id
    for key in set(before.data) - crowded:
        assert after.data[key] == before.data[key]
    assert canonical(table.scan().to_arrow()).equals(canonical(data))
    for snap in (rewrite, current):
        props = snap.summary.additional_properties
        assert props[MAINTENANCE_PROPERTY] == "compaction"
        assert WATERMARK_PROPERTY in props
    assert read_watermarks(table) == watermark


def test_partitions_within_thresholds_are_left_alone(tmp_path: Path) -> None:
    table, _ = ticks_table(tmp_path)
    snapshots = len(table.snapshots())

    result = compact_table(table, CompactionPolicy(max_files_per_partition=100, min_avg_file_bytes=1))

    assert result.partitions_planned == 0 and result.rows_rewritten == 0
    assert len(table.snapshots()) == snapshots


def test_dry_run_plans_without_writing(tmp_path: Path) -> None:
    table, _ = ticks_table(tmp_path)
    snapshots = len(table.snapshots())

    result = compact_table(table, EAGER, dry_run=True)

    assert result.partitions_planned > 0 and result.planned
    assert len(table.snapshots()) == snapshots


def test_a_partition_larger_than_the_target_is_rewritten_into_several_files_near_it(tmp_path: Path) -> None:
    table, data = ticks_table(tmp_path, rows=40_000, batches=8, symbols=1)
    key, files = max(live_files(table).data.items(), key=lambda kv: len(kv[1]))
    total = sum(int(f.file_size_in_bytes) for f in files)
    target = int(total / 2.5)
    policy = CompactionPolicy(max_files_per_partition=2, min_avg_file_bytes=0, target_file_bytes=target)

    result = compact_table(table, policy)

    written = live_files(table).data[key]
    assert 2 <= len(written) < len(files)
    assert all(int(f.file_size_in_bytes) <= target for f in written)
    assert result.files_written >= len(written)
    assert canonical(table.scan().to_arrow()).equals(canonical(data))


def test_the_writer_rolls_to_a_new_file_at_the_target_size(tmp_path: Path) -> None:
    table, _ = ticks_table(tmp_path, rows=20_000, batches=2, symbols=1)
    files = live_files(table).data_files()
    spec = sort_spec(table)
    rows = sort_rows(read_files(table, files[:1]), spec)
    target = 32 * 1024

    written = write_sorted(table, rows, files[0], target_file_bytes=target, row_group_rows=500, sort_order_id=None)

    assert len(written) > 2
    assert all(int(f.file_size_in_bytes) >= target for f in written[:-1])
    assert sum(int(f.record_count) for f in written) == rows.num_rows
    back = pa.concat_tables([_read(f.file_path) for f in written])
    assert back.equals(rows.select(["symbol", "exchange_ts"]))


def test_an_ingest_commit_during_compaction_is_kept_and_its_watermark_carried(tmp_path: Path) -> None:
    table, data = ticks_table(tmp_path)
    late = tick_rows(table, 1_000, seed=99)
    other = catalog_in(tmp_path).load("ticks")  # another writer, as a concurrent ingest run would be
    landed: list[int] = []

    def ingest_meanwhile() -> None:
        if not landed:
            landed.extend(append_batches(other, late, 1, first_offset=data.num_rows))

    result = compact_table(table, EAGER, before_commit=ingest_meanwhile)

    assert result.commit_attempts == 2 and result.partitions_compacted > 0 and not result.given_up
    rewrite = table.snapshot_by_id(table.current_snapshot().parent_snapshot_id)
    assert rewrite.parent_snapshot_id == landed[0]
    assert read_watermarks(table) == {TOPIC: {0: data.num_rows + late.num_rows}}
    assert canonical(table.scan().to_arrow()).equals(canonical(pa.concat_tables([data, late])))


def test_a_partition_changed_by_another_writer_is_given_up_without_resurrecting_rows(tmp_path: Path) -> None:
    table, data = ticks_table(tmp_path)
    victim = max(live_files(table).data.items(), key=lambda kv: len(kv[1]))[0]
    symbol = victim[1][-1]
    other = catalog_in(tmp_path).load("ticks")
    deleted: list[bool] = []

    def delete_meanwhile() -> None:
        if not deleted:
            other.delete(EqualTo("symbol", symbol))
            deleted.append(True)

    result = compact_table(table, EAGER, before_commit=delete_meanwhile)

    labels = [label for label in result.given_up if label.endswith(f"symbol_trunc={symbol}")]
    assert labels and result.partitions_compacted > 0
    expected = data.filter(pc.not_equal(data["symbol"], symbol))
    assert canonical(table.scan().to_arrow()).equals(canonical(expected))
    leftovers = list((tmp_path / "warehouse").rglob(f"*symbol_trunc={symbol}/*compacted*"))
    assert leftovers == [], "files written for a given-up partition are removed"


def test_a_watermark_table_with_the_library_retry_on_is_refused(tmp_path: Path) -> None:
    unsafe = TableDef(
        name="ticks_unsafe",
        schema=TICKS.schema,
        partition_spec=TICKS.partition_spec,
        properties={**TICKS.properties, "commit.retry.num-retries": "4"},
    )
    table = catalog_in(tmp_path).ensure_table(unsafe)
    append_batches(table, tick_rows(table, 3_000), 3)

    with pytest.raises(ConfigurationError, match="num-retries"):
        compact_table(table, EAGER)


def test_an_append_only_table_is_never_rewritten(tmp_path: Path) -> None:
    audit_like = TableDef(
        name="audit_like",
        schema=TICKS.schema,
        partition_spec=TICKS.partition_spec,
        properties={**TICKS.properties, "k2.append-only": "true"},
    )
    table = catalog_in(tmp_path).ensure_table(audit_like)
    append_batches(table, tick_rows(table, 3_000), 3)
    snapshots = len(table.snapshots())

    result = compact_table(table, EAGER)

    assert "append-only" in result.skipped and result.rows_rewritten == 0
    assert len(table.snapshots()) == snapshots


def test_files_written_before_a_schema_change_are_compacted_onto_the_new_schema(tmp_path: Path) -> None:
    table, data = ticks_table(tmp_path, batches=3)
    with table.update_schema() as update:
        update.rename_column("side", "aggressor")
        update.add_column("venue", StringType())
    feed = generate(2_000, seed=8, symbols=3, day=SESSION).ticks
    feed = feed.rename({"side": "aggressor"}).with_columns(pl.lit("CHIA").alias("venue"))
    append_batches(table, conform(feed.to_arrow(), table.schema().as_arrow()), 2, first_offset=data.num_rows)
    expected = canonical(table.scan().to_arrow())

    result = compact_table(table, EAGER)

    assert result.partitions_compacted > 0
    assert canonical(table.scan().to_arrow()).equals(expected)
    assert expected["aggressor"].null_count == 0 and expected["venue"].null_count == data.num_rows


def _stage_on_branch(table: Table, rows: pa.Table, first_offset: int) -> int:
    """A write-audit-publish batch staged on branch `audit` cut from main, as validated ticks does."""
    table.manage_snapshots().create_branch(table.current_snapshot().snapshot_id, "audit").commit()
    watermark = encode_watermarks({TOPIC: {0: first_offset + rows.num_rows}})
    table.append(rows, branch="audit", snapshot_properties={WATERMARK_PROPERTY: watermark})
    return table.snapshot_by_name("audit").snapshot_id


def test_compaction_waits_for_a_staged_audit_batch_to_publish_then_commits_on_top(tmp_path: Path) -> None:
    table, data = ticks_table(tmp_path)
    late = tick_rows(table, 1_000, seed=99)
    writer = catalog_in(tmp_path).load("ticks")
    staged = _stage_on_branch(writer, late, data.num_rows)

    def publish_soon() -> None:
        time.sleep(1.0)
        writer.manage_snapshots().set_current_snapshot(snapshot_id=staged).commit()

    publisher = threading.Thread(target=publish_soon)
    publisher.start()
    result = compact_table(table, dataclasses.replace(EAGER, poll_s=0.1))
    publisher.join()

    assert result.waits > 0 and result.partitions_compacted > 0 and not result.given_up
    rewrite = table.snapshot_by_id(table.current_snapshot().parent_snapshot_id)
    assert rewrite.parent_snapshot_id == staged
    assert read_watermarks(table) == {TOPIC: {0: data.num_rows + late.num_rows}}
    assert canonical(table.scan().to_arrow()).equals(canonical(pa.concat_tables([data, late])))


def test_compaction_does_not_move_main_under_a_staged_batch_unless_it_was_abandoned(tmp_path: Path) -> None:
    table, data = ticks_table(tmp_path)
    _stage_on_branch(catalog_in(tmp_path).load("ticks"), tick_rows(table, 1_000, seed=99), data.num_rows)
    head = table.current_snapshot().snapshot_id

    result = compact_table(table, dataclasses.replace(EAGER, max_wait_s=0.5, poll_s=0.1))

    assert result.given_up and all("write-audit-publish" in why for why in result.given_up.values())
    assert table.current_snapshot().snapshot_id == head
    assert list((tmp_path / "warehouse").rglob("*compacted*")) == []

    abandoned = compact_table(table, dataclasses.replace(EAGER, stale_branch_s=0.0))

    assert abandoned.partitions_compacted > 0 and not abandoned.given_up
