"""Prometheus metrics of K2.

Three sources feed one exposition (`k2 metrics serve`, 127.0.0.1):

1. FigureStore: counters, gauges and histograms that many processes add to (Dagster runs through a job hook, CLI
   and API queries). They live in one JSON file under K2_METRICS_DIR, updated under an exclusive file lock, so a
   figure recorded by a run that has long exited is still scraped. Names and types are declared in FIGURES.
2. In-process gauges of a long-lived query process (queries in flight, queue depth) in REGISTRY.
3. LakehouseCollector: read at scrape time from Kafka and Iceberg: consumer lag per partition, data files per
   partition, records and snapshots per table, last commit time.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
RUN_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
FRESHNESS_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class FigureDef:
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


# Counter names are given without the `_total` suffix the exposition adds.
FIGURES: dict[str, FigureDef] = {
    # Dagster runs (recorded by k2_assets.serving.hooks after every asset step)
    "k2_asset_runs": FigureDef("counter", "Asset materialisations by outcome (rate and errors)", ("asset", "outcome")),
    "k2_asset_duration_seconds": FigureDef("histogram", "Asset step duration", ("asset",), RUN_BUCKETS),
    "k2_asset_rows": FigureDef("counter", "Rows an asset wrote, by kind", ("asset", "kind")),
    "k2_asset_last_success_timestamp_seconds": FigureDef("gauge", "When the asset last succeeded", ("asset",)),
    "k2_asset_metadata_value": FigureDef("gauge", "Last numeric metadata value of an asset", ("asset", "key")),
    "k2_dq_rows": FigureDef(
        "counter", "Validated rows by outcome (passed, quarantined, duplicate)", ("table", "outcome")
    ),
    "k2_dq_failure_ratio": FigureDef("gauge", "Share of the last batch that failed validation", ("table",)),
    "k2_dq_quarantined_by_reason": FigureDef("counter", "Quarantined rows by reason code", ("reason",)),
    "k2_tick_to_queryable_seconds": FigureDef(
        "histogram", "Per tick: Kafka append time to the commit that made it queryable in ticks", (), FRESHNESS_BUCKETS
    ),
    # Queries (k2.query), from every process that runs them
    "k2_query_requests": FigureDef("counter", "Queries by action and outcome", ("action", "outcome")),
    "k2_query_duration_seconds": FigureDef("histogram", "Query latency", ("action",), LATENCY_BUCKETS),
    "k2_query_queue_wait_seconds": FigureDef("histogram", "Time a query waited for a slot", (), LATENCY_BUCKETS),
    "k2_query_rows_returned": FigureDef("counter", "Rows returned to callers", ("action",)),
    "k2_query_rejected": FigureDef("counter", "Queries stopped by a limit", ("reason",)),
    "k2_query_cache_requests": FigureDef("counter", "Cache lookups by cache and outcome", ("cache", "outcome")),
    "k2_query_source_rows": FigureDef("counter", "Rows read per source (iceberg, kafka)", ("source",)),
    "k2_audit_events": FigureDef("counter", "Audit log rows appended, by outcome", ("outcome",)),
}

REGISTRY = CollectorRegistry(auto_describe=True)
IN_FLIGHT = Gauge("k2_query_in_flight", "Queries running in this process", registry=REGISTRY)
QUEUE_DEPTH = Gauge("k2_query_queue_depth", "Queries waiting for a slot in this process", registry=REGISTRY)

LIVE_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "k2_component_up": ("Whether a component answered the last scrape (1) or not (0)", ("component",)),
    "k2_kafka_end_offset": ("Kafka log end offset", ("topic", "partition")),
    "k2_consumer_lag_records": (
        "Kafka records past the table's committed watermark",
        ("topic", "partition", "table"),
    ),
    "k2_table_records": ("Records in the current snapshot", ("table",)),
    "k2_table_data_files": ("Data files in the current snapshot", ("table",)),
    "k2_table_snapshots": ("Snapshots kept in the table metadata", ("table",)),
    "k2_table_last_commit_timestamp_seconds": ("Time of the current snapshot", ("table",)),
    "k2_partition_data_files": ("Data files per partition (compaction need)", ("table", "partition")),
    "k2_table_partition_files_max": ("Most data files in one partition of the table", ("table",)),
}


def _label_key(labels: dict[str, str], names: Sequence[str]) -> str:
    return json.dumps([str(labels.get(n, "")) for n in names])


class FigureStore:
    """Cross-process figures in `<directory>/figures.json`. Updates are buffered per process and merged under an
    exclusive flock at most every `flush_interval_s` (and by flush(), and at exit)."""

    def __init__(self, directory: Path, flush_interval_s: float = 1.0) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "figures.json"
        self.flush_interval_s = flush_interval_s
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str, dict[str, str], Any]] = []
        self._last_flush = 0.0

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self._add("inc", name, labels, float(value))

    def set(self, name: str, value: float, **labels: str) -> None:
        self._add("set", name, labels, float(value))

    def observe(self, name: str, values: float | Iterable[float] | np.ndarray, **labels: str) -> None:
        """Observe one value or many at once (vectorised: a whole batch of per-tick latencies)."""
        arr = np.atleast_1d(np.asarray(values if not isinstance(values, (int, float)) else [values], dtype=float))
        if arr.size == 0:
            return
        buckets = np.asarray(FIGURES[name].buckets, dtype=float)
        counts = np.bincount(np.searchsorted(buckets, arr, side="left"), minlength=len(buckets) + 1)
        self._add("observe", name, labels, (counts.tolist(), float(arr.sum()), int(arr.size)))

    def _add(self, op: str, name: str, labels: dict[str, str], value: Any) -> None:
        spec = FIGURES.get(name)
        if spec is None:
            raise KeyError(f"{name} is not declared in k2_resources.metrics.FIGURES")
        if set(labels) != set(spec.labels):
            raise KeyError(f"{name} takes labels {spec.labels}, got {sorted(labels)}")
        with self._lock:
            self._pending.append((op, name, labels, value))
            due = time.monotonic() - self._last_flush >= self.flush_interval_s
        if due:
            self.flush()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "figures.lock", "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
                yield state
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._last_flush = time.monotonic()
        if not pending:
            return
        with self._locked() as state:
            for op, name, labels, value in pending:
                series = state.setdefault(name, {})
                key = _label_key(labels, FIGURES[name].labels)
                if op == "inc":
                    series[key] = series.get(key, 0.0) + value
                elif op == "set":
                    series[key] = value
                else:
                    counts, total, n = value
                    cur = series.setdefault(key, {"counts": [0] * len(counts), "sum": 0.0, "count": 0})
                    cur["counts"] = [a + b for a, b in zip(cur["counts"], counts, strict=True)]
                    cur["sum"] += total
                    cur["count"] += n
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(self.path)

    def read(self) -> dict[str, Any]:
        self.flush()
        with self._locked() as state:
            return state


class FigureCollector(Collector):
    def __init__(self, store: FigureStore) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        state = self.store.read()
        for name, spec in FIGURES.items():
            series: dict[str, Any] = state.get(name, {})
            labels = list(spec.labels)
            family: Metric
            if spec.kind == "counter":
                family = CounterMetricFamily(name, spec.help, labels=labels)
                for key, value in series.items():
                    family.add_metric(json.loads(key), value)
            elif spec.kind == "gauge":
                family = GaugeMetricFamily(name, spec.help, labels=labels)
                for key, value in series.items():
                    family.add_metric(json.loads(key), value)
            else:
                family = HistogramMetricFamily(name, spec.help, labels=labels)
                for key, h in series.items():
                    cumulative = np.cumsum(h["counts"]).tolist()
                    bounds = [*(str(b) for b in spec.buckets), "+Inf"]
                    family.add_metric(json.loads(key), list(zip(bounds, cumulative, strict=True)), h["sum"])
            yield family


_stores: dict[Path, FigureStore] = {}
_stores_lock = threading.Lock()


def figure_store(directory: Path) -> FigureStore:
    """The process-wide store of a directory (flushed at interpreter exit)."""
    directory = Path(directory).resolve()
    with _stores_lock:
        store = _stores.get(directory)
        if store is None:
            store = _stores[directory] = FigureStore(directory)
        return store


def _flush_all() -> None:
    for store in list(_stores.values()):
        with contextlib.suppress(OSError):
            store.flush()


atexit.register(_flush_all)


class QueryMetrics:
    """What the query layer records: figures (cross-process) plus the in-process gauges."""

    def __init__(self, store: FigureStore | None) -> None:
        self.store = store

    def request(self, action: str, outcome: str, seconds: float, rows: int) -> None:
        if self.store is None:
            return
        self.store.inc("k2_query_requests", action=action, outcome=outcome)
        self.store.observe("k2_query_duration_seconds", seconds, action=action)
        if rows:
            self.store.inc("k2_query_rows_returned", rows, action=action)

    def queued(self, seconds: float) -> None:
        if self.store is not None:
            self.store.observe("k2_query_queue_wait_seconds", seconds)

    def rejected(self, reason: str) -> None:
        if self.store is not None:
            self.store.inc("k2_query_rejected", reason=reason)

    def cache(self, cache: str, hit: bool) -> None:
        if self.store is not None:
            self.store.inc("k2_query_cache_requests", cache=cache, outcome="hit" if hit else "miss")

    def source_rows(self, source: str, rows: int) -> None:
        if self.store is not None and rows:
            self.store.inc("k2_query_source_rows", rows, source=source)

    def audit(self, outcome: str) -> None:
        if self.store is not None:
            self.store.inc("k2_audit_events", outcome=outcome)

    @staticmethod
    def in_flight(n: int) -> None:
        IN_FLIGHT.set(n)

    @staticmethod
    def queue_depth(n: int) -> None:
        QUEUE_DEPTH.set(n)


def finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
