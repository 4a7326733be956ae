"""Job hooks that record what every asset step did into the shared metric figures (`k2 metrics serve` exposes them).

Attached to jobs in definitions.py; they run in the run's own process, in-process runs (`k2 run`) included. A hook
never fails a run: a figure that cannot be written is logged and skipped.
"""

import json
import time
from typing import Any

import dagster as dg
import numpy as np

from k2_assets.ticks.planning import ranges_from_config
from k2_resources.errors import K2Error
from k2_resources.iceberg import IcebergResource
from k2_resources.metrics import FigureStore
from k2_resources.offset_reads import read_offset_ranges

# Metadata keys (of the ingest assets) that count rows written, and the kind they are recorded as.
ROW_KEYS = {
    "rows_appended": "appended",
    "rows_published": "published",
    "rows_quarantined": "quarantined",
    "duplicates": "duplicate",
    "bars_written": "bars_written",
    "bars_restated": "bars_restated",
}


def numeric_metadata(context: dg.HookContext) -> tuple[dict[str, float], dict[str, Any]]:
    numbers: dict[str, float] = {}
    other: dict[str, Any] = {}
    for output in (context.op_output_metadata or {}).values():
        for key, value in output.items():
            raw = getattr(value, "value", value)
            if isinstance(raw, bool):
                continue
            if isinstance(raw, (int, float)):
                numbers[key] = float(raw)
            else:
                other[key] = getattr(value, "data", getattr(value, "text", raw))
    return numbers, other


def tick_to_queryable_seconds(iceberg: IcebergResource, ranges: list[dict[str, Any]], snapshot_id: int) -> np.ndarray:
    """Per tick of the batch: commit time of the ticks snapshot minus the tick's Kafka append time."""
    ticks = iceberg.load("ticks")
    snap = ticks.snapshot_by_id(snapshot_id)
    if snap is None or not ranges:
        return np.zeros(0)
    rows = read_offset_ranges(iceberg.load("raw_ticks"), ranges_from_config(ranges), ["kafka_ts"])
    kafka_us = rows["kafka_ts"].drop_nulls().dt.epoch("us").to_numpy()
    return np.maximum(0.0, (snap.timestamp_ms * 1000 - kafka_us) / 1e6)


def record_validation(store: FigureStore, numbers: dict[str, float], other: dict[str, Any]) -> None:
    rows_in = numbers.get("rows_in", 0.0)
    for key, outcome in (
        ("rows_published", "passed"),
        ("rows_quarantined", "quarantined"),
        ("duplicates", "duplicate"),
    ):
        if key in numbers:
            store.inc("k2_dq_rows", numbers[key], table="ticks", outcome=outcome)
    if rows_in > 0:
        store.set("k2_dq_failure_ratio", numbers.get("rows_quarantined", 0.0) / rows_in, table="ticks")
    reasons = other.get("quarantined_by_reason")
    if isinstance(reasons, str):
        reasons = json.loads(reasons)
    for reason, count in (reasons or {}).items():
        store.inc("k2_dq_quarantined_by_reason", float(count), reason=str(reason))


@dg.success_hook(required_resource_keys={"metrics", "iceberg"})
def record_asset_success(context: dg.HookContext) -> None:
    asset = context.op.name
    try:
        store: FigureStore = context.resources.metrics.store()
        numbers, other = numeric_metadata(context)
        store.inc("k2_asset_runs", asset=asset, outcome="success")
        store.set("k2_asset_last_success_timestamp_seconds", time.time(), asset=asset)
        if "seconds" in numbers:
            store.observe("k2_asset_duration_seconds", numbers["seconds"], asset=asset)
        for key, value in numbers.items():
            store.set("k2_asset_metadata_value", value, asset=asset, key=key)
            if key in ROW_KEYS and value:
                store.inc("k2_asset_rows", value, asset=asset, kind=ROW_KEYS[key])
        if asset == "validated_ticks":
            record_validation(store, numbers, other)
            snapshot = str(other.get("snapshot_id") or "")
            ranges = other.get("ranges") or []
            if snapshot.isdigit() and numbers.get("rows_published", 0) > 0:
                latencies = tick_to_queryable_seconds(context.resources.iceberg, list(ranges), int(snapshot))
                store.observe("k2_tick_to_queryable_seconds", latencies)
        store.flush()
    except (K2Error, OSError, ValueError, KeyError) as exc:
        context.log.warning(f"metrics for {asset} not recorded: {type(exc).__name__}: {exc}")


@dg.failure_hook(required_resource_keys={"metrics"})
def record_asset_failure(context: dg.HookContext) -> None:
    try:
        store: FigureStore = context.resources.metrics.store()
        store.inc("k2_asset_runs", asset=context.op.name, outcome="failure")
        store.flush()
    except (K2Error, OSError) as exc:
        context.log.warning(f"failure of {context.op.name} not recorded in metrics: {exc}")


METRIC_HOOKS = {record_asset_success, record_asset_failure}
