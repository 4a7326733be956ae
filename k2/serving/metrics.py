"""`k2 metrics serve`: one Prometheus endpoint on 127.0.0.1 for everything K2 measures.

It exposes the figures Dagster runs and queries recorded (k2_resources.metrics.FigureStore), this process's
in-flight gauges, and what it reads from Kafka and Iceberg at scrape time (LakehouseCollector): consumer lag per
partition, files per partition, records, snapshots and last commit per table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Annotated, Any

import typer
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rich.console import Console

from k2_resources.env import Settings, load_settings
from k2_resources.metrics import LIVE_METRICS, REGISTRY, FigureCollector, figure_store

INGEST_TABLES = ("raw_ticks", "ticks")


def _family(name: str) -> GaugeMetricFamily:
    help_text, labels = LIVE_METRICS[name]
    return GaugeMetricFamily(name, help_text, labels=list(labels))


def _partition_label(partition: dict[str, Any] | None) -> str:
    return "/".join(f"{k}={v}" for k, v in (partition or {}).items()) or "unpartitioned"


class LakehouseCollector(Collector):
    """Kafka and Iceberg state read at scrape time (cached for `cache_s` so frequent scrapes stay cheap)."""

    def __init__(self, settings: Settings, cache_s: float = 10.0, kafka_timeout_s: float = 3.0) -> None:
        self.settings = settings
        self.cache_s = cache_s
        self.kafka_timeout_s = kafka_timeout_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > self.cache_s:
                self._cached = (time.monotonic(), self._gather())
            return list(self._cached[1])

    def _gather(self) -> list[Metric]:
        from k2_resources.iceberg import IcebergResource, read_watermarks

        fams = {name: _family(name) for name in LIVE_METRICS}
        watermarks: dict[str, dict[int, int]] = {}
        try:
            iceberg = IcebergResource.from_settings(self.settings)
            catalog = iceberg.catalog()
            for ident in sorted(catalog.list_tables(iceberg.namespace)):
                name = ident[-1]
                table = catalog.load_table(ident)
                if name in INGEST_TABLES:
                    watermarks[name] = read_watermarks(table).get(self.settings.tick_topic, {})
                fams["k2_table_snapshots"].add_metric([name], len(table.snapshots()))
                snap = table.current_snapshot()
                if snap is None:
                    continue
                props = snap.summary.additional_properties if snap.summary is not None else {}
                fams["k2_table_records"].add_metric([name], float(props.get("total-records", 0)))
                fams["k2_table_data_files"].add_metric([name], float(props.get("total-data-files", 0)))
                fams["k2_table_last_commit_timestamp_seconds"].add_metric([name], snap.timestamp_ms / 1000)
                partitions = table.inspect.partitions()
                if "partition" in partitions.column_names:
                    parts = partitions.select(["partition", "file_count"]).to_pylist()
                else:  # unpartitioned, or no data file yet
                    parts = [
                        {"partition": None, "file_count": row} for row in partitions.column("file_count").to_pylist()
                    ]
                most = 0
                for row in parts:
                    fams["k2_partition_data_files"].add_metric(
                        [name, _partition_label(row["partition"])], row["file_count"]
                    )
                    most = max(most, int(row["file_count"]))
                fams["k2_table_partition_files_max"].add_metric([name], most)
            fams["k2_component_up"].add_metric(["catalog"], 1)
        except Exception:  # noqa: BLE001 - a scrape reports the catalog as down instead of failing
            fams["k2_component_up"].add_metric(["catalog"], 0)
        try:
            from k2.query.router import KafkaOffsetProbe

            topic = self.settings.tick_topic
            offsets = KafkaOffsetProbe(self.settings.kafka_bootstrap, self.kafka_timeout_s).offsets(topic)
            for partition, (low, high) in sorted(offsets.items()):
                fams["k2_kafka_end_offset"].add_metric([topic, str(partition)], high)
                for ingest_table in INGEST_TABLES:
                    committed = watermarks.get(ingest_table, {}).get(partition, low)
                    lag = max(0, high - committed)
                    fams["k2_consumer_lag_records"].add_metric([topic, str(partition), ingest_table], lag)
            fams["k2_component_up"].add_metric(["kafka"], 1)
        except Exception:  # noqa: BLE001 - a scrape reports Kafka as down instead of failing
            fams["k2_component_up"].add_metric(["kafka"], 0)
        return list(fams.values())


class _InProcess(Collector):
    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def build_registry(settings: Settings, live: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    metrics_dir = settings.serving.metrics_dir or settings.home / "metrics"
    registry.register(FigureCollector(figure_store(metrics_dir)))
    registry.register(_InProcess())
    if live:
        registry.register(LakehouseCollector(settings))
    return registry


def exposition(settings: Settings, live: bool = True) -> str:
    return generate_latest(build_registry(settings, live)).decode()


def serve(settings: Settings, port: int, seconds: float | None = None) -> None:
    """Serve /metrics on 127.0.0.1:`port` until interrupted (or for `seconds`)."""
    server, thread = start_http_server(port, addr="127.0.0.1", registry=build_registry(settings))
    deadline = time.monotonic() + seconds if seconds is not None else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


metrics_app = typer.Typer(help="Prometheus metrics of ingestion, storage and queries.", no_args_is_help=True)


@metrics_app.command("serve")
def serve_cmd(
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default K2_METRICS_PORT, 9464)")] = None,
    for_seconds: Annotated[float | None, typer.Option(help="Stop after this long (default: until Ctrl-C)")] = None,
) -> None:
    """Serve /metrics for Prometheus (infra/prometheus/prometheus.yml scrapes it)."""
    settings = load_settings()
    chosen = port or settings.serving.metrics_port
    Console(stderr=True).print(f"serving K2 metrics on http://127.0.0.1:{chosen}/metrics")
    serve(settings, chosen, for_seconds)


@metrics_app.command("show")
def show_cmd(live: Annotated[bool, typer.Option(help="Also read Kafka and Iceberg")] = True) -> None:
    """Print the current exposition once."""
    typer.echo(exposition(load_settings(), live), nl=False)
