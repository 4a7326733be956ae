"""Table-health metrics for dashboards and the metrics endpoint: plain dicts of numbers, cheap to compute (metadata
only, no data file is opened).

    from k2_assets.maintenance.health import table_health
    table_health(iceberg.load("ticks"))  # {"data_files": 1234, "avg_file_bytes": ..., "snapshots": 57, ...}
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
from pyiceberg.table import Table

from k2_assets.maintenance.compaction import CompactionPolicy, plan_compaction
from k2_assets.maintenance.files import live_files
from k2_resources.iceberg import IcebergResource


def table_health(table: Table, policy: CompactionPolicy | None = None) -> dict[str, Any]:
    """Files per partition, average file size, snapshot count and what compaction would pick, for one table."""
    policy = policy or CompactionPolicy()
    table.refresh()
    live = live_files(table)
    files = live.data_files()
    frame = pl.DataFrame(
        {
            "partition": [repr(k) for k, fs in live.data.items() for _ in fs],
            "bytes": [int(f.file_size_in_bytes) for f in files],
            "rows": [int(f.record_count) for f in files],
        },
        schema={"partition": pl.String, "bytes": pl.Int64, "rows": pl.Int64},
    )
    per_partition = frame.group_by("partition").agg(pl.len().alias("files"))
    snapshots = table.snapshots()
    now_ms = dt.datetime.now(dt.UTC).timestamp() * 1000
    current = table.current_snapshot()
    refs = table.refs()
    total_bytes = int(frame["bytes"].sum() or 0)
    return {
        "table": ".".join(table.name()),
        "snapshots": len(snapshots),
        "oldest_snapshot_age_s": round((now_ms - min(s.timestamp_ms for s in snapshots)) / 1000, 1) if snapshots else 0,
        "current_snapshot_id": current.snapshot_id if current else None,
        "tags": sorted(n for n, r in refs.items() if r.snapshot_ref_type.value == "tag"),
        "data_files": len(files),
        "delete_files": sum(len(v) for v in live.deletes.values()),
        "rows": int(frame["rows"].sum() or 0),
        "total_bytes": total_bytes,
        "avg_file_bytes": round(total_bytes / len(files)) if files else 0,
        "partitions": per_partition.height,
        "files_per_partition_max": int(per_partition["files"].max() or 0) if per_partition.height else 0,  # type: ignore[arg-type]
        "files_per_partition_avg": round(len(files) / per_partition.height, 2) if per_partition.height else 0.0,
        "small_files": int((frame["bytes"] < policy.min_avg_file_bytes).sum()),
        "partitions_needing_compaction": len(plan_compaction(table, policy, live)),
    }


def lakehouse_health(iceberg: IcebergResource, policy: CompactionPolicy | None = None) -> list[dict[str, Any]]:
    """table_health of every table in the namespace."""
    catalog = iceberg.catalog()
    return [table_health(catalog.load_table(ident), policy) for ident in sorted(catalog.list_tables(iceberg.namespace))]
