"""Ingest throughput and latency on a real broker: prints tables, asserts nothing.

    .venv/bin/python benchmarks/ingest.py [--ticks 1000000] [--latency-batches 10] [--latency-batch-size 2000]
                                          [--bootstrap HOST:PORT] [--home DIR] [--keep]

1. produce      the simulated session encoded (Avro, Confluent frame) and written to Kafka, acknowledged
2. the ingest job once over everything in Kafka, exactly as `k2 run` does (Dagster, in process); each step's
   time is the span between its STEP_START and STEP_SUCCESS events: Kafka -> raw_ticks, raw_ticks -> ticks
   (validation, quarantine), then the bars and check steps under their step keys. End to end is the whole run,
   planning and Dagster included.
3. latency      small batches, one after another: produce, run the job at once, poll DuckDB until the batch's
   last tick is in `ticks`. The sensor's polling interval (minimum_interval_seconds) comes on top in production.
4. files        data files, bytes and snapshots per table afterwards.

Without --bootstrap a throwaway broker is started on free ports and stopped at the end. The machine's load average
is printed with the numbers: on a shared 2-vCPU box they move with whatever else runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from k2.feed.producer import produce_feed
from k2.feed.simulator import generate
from k2.runner import run_until_caught_up
from k2_resources.broker import LocalKafkaBroker
from k2_resources.duckdb import connect
from k2_resources.env import Settings, load_settings
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka import KafkaResource
from k2_resources.local_process import free_port
from k2_resources.schemas import FileSchemaStore

SESSION = dt.date(2026, 11, 25)
# Labels for the job's steps; any other step (bars, checks, gates) is listed under its own step key.
STAGES = {
    "raw_ticks": "Kafka -> raw_ticks (read, decode, append)",
    "validated_ticks": "raw_ticks -> ticks (validate, WAP, GE gate, quarantine)",
}


@contextmanager
def broker_at(bootstrap: str | None, root: Path) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    broker = LocalKafkaBroker(root / "kafka", free_port(), controller_port=free_port())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop(timeout_s=10.0)


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Seconds between STEP_START and STEP_SUCCESS of each step of a run, from its event log."""
    started: dict[str, float] = {}
    spans: dict[str, float] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS" and event.step_key in started:
            spans[event.step_key] = record.timestamp - started[event.step_key]
    return spans


def validated_steps(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, float]:
    """validated_ticks' own timings (read, validate, stage, gate, commit: its `seconds_by_step` metadata), summed
    over the runs."""
    out: dict[str, float] = {}
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            materialization = record.asset_materialization
            if materialization is None or materialization.asset_key != dg.AssetKey("validated_ticks"):
                continue
            steps = materialization.metadata.get("seconds_by_step")
            for step, seconds in (getattr(steps, "data", None) or {}).items():
                out[step] = out.get(step, 0.0) + float(seconds)
    return out


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "-"


def throughput(settings: Settings, ticks: int, instance: dg.DagsterInstance) -> list[tuple[str, int, float]]:
    kafka = KafkaResource.from_settings(settings)
    feed = generate(ticks, seed=7, day=SESSION, exchange_code=settings.exchange)
    produced = produce_feed(kafka, settings.tick_topic, feed, FileSchemaStore(), settings.topic_partitions)
    rows = [("produce (encode + Kafka, acknowledged)", ticks, produced.seconds)]
    started = time.perf_counter()
    summary = run_until_caught_up(settings, instance=instance)
    wall = time.perf_counter() - started
    spans: dict[str, float] = {}
    for run_id in summary.run_ids:
        for step, seconds in step_seconds(instance, run_id).items():
            spans[step] = spans.get(step, 0.0) + seconds
    ordered = sorted(spans, key=lambda step: (step not in STAGES, list(STAGES).index(step) if step in STAGES else 0))
    rows += [(STAGES.get(step, f"step {step}"), ticks, spans[step]) for step in ordered]
    inner = validated_steps(instance, list(summary.run_ids))
    rows += [(f"validated_ticks: {step}", ticks, seconds) for step, seconds in inner.items()]
    rows.append((f"end to end: Kafka -> bars queryable ({summary.batches} job run(s), `k2 run`)", ticks, wall))
    return rows


def latency(settings: Settings, batches: int, size: int, instance: dg.DagsterInstance) -> list[float]:
    kafka = KafkaResource.from_settings(settings)
    iceberg = IcebergResource.from_settings(settings)
    seconds = []
    for i in range(batches):
        feed = generate(size, seed=1_000 + i, day=SESSION, exchange_code=settings.exchange)
        last = feed.ticks.row(feed.ticks.height - 1, named=True)
        started = time.perf_counter()
        produce_feed(kafka, settings.tick_topic, feed, FileSchemaStore(), settings.topic_partitions)
        run_until_caught_up(settings, instance=instance)
        sql = (
            f"SELECT count(*) FROM ticks WHERE symbol = '{last['symbol']}' AND sequence = {int(last['sequence'])} "
            f"AND trade_id = '{last['trade_id']}'"
        )
        while True:
            con = connect(iceberg)
            found = con.sql(sql).fetchone()
            con.close()
            if found and found[0] > 0:
                break
            if time.perf_counter() - started > 120:
                raise SystemExit(f"batch {i}: its last tick was not queryable after 120 s")
        seconds.append(time.perf_counter() - started)
    return seconds


def file_counts(settings: Settings) -> list[tuple[str, int, int, int]]:
    iceberg = IcebergResource.from_settings(settings)
    out = []
    for name in ("raw_ticks", "ticks", "quarantine", "bars_1m"):
        try:
            table = iceberg.load(name)
        except Exception:  # noqa: BLE001 - a table the pipeline did not create is reported as absent
            continue
        files = [task.file for task in table.scan().plan_files()] if table.current_snapshot() else []
        size = sum(f.file_size_in_bytes for f in files)
        out.append((name, len(files), size, len(table.metadata.snapshots)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--latency-batches", type=int, default=10)
    parser.add_argument("--latency-batch-size", type=int, default=2_000)
    parser.add_argument("--bootstrap", help="use this broker instead of starting a throwaway one")
    parser.add_argument("--home", type=Path, help="state directory (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the state directory")
    args = parser.parse_args()

    root = args.home or Path(tempfile.mkdtemp(prefix="k2-bench-"))
    load_before = os.getloadavg()
    try:
        with broker_at(args.bootstrap, root) as bootstrap, dg.DagsterInstance.ephemeral() as instance:
            settings = load_settings(
                {
                    "K2_HOME": str(root / "lake"),
                    "K2_KAFKA_BOOTSTRAP": bootstrap,
                    "K2_TICK_TOPIC": f"bench.ticks.{time.time_ns()}",
                    "K2_TOPIC_PARTITIONS": str(args.partitions),
                }
            )
            stages = throughput(settings, args.ticks, instance)
            waits = latency(settings, args.latency_batches, args.latency_batch_size, instance)
            files = file_counts(settings)
    finally:
        if not args.keep and args.home is None:
            shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()

    print(f"\nK2 ingest benchmark: {args.ticks:,} ticks, {args.partitions} partitions, {os.cpu_count()} CPUs")
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min)\n")
    print("| stage | ticks | seconds | ticks/s |")
    print("|---|---:|---:|---:|")
    for label, n, seconds in stages:
        print(f"| {label} | {n:,} | {seconds:.2f} | {rate(n, seconds)} |")
    p50, p99 = np.percentile(waits, [50, 99])
    print(
        f"\nlatency, produced -> queryable in `ticks` (DuckDB), {len(waits)} batches of "
        f"{args.latency_batch_size:,}: p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(waits):.2f} s "
        "(plus the sensor interval when the sensor launches the runs)\n"
    )
    print("| table | data files | MB | snapshots |")
    print("|---|---:|---:|---:|")
    for name, count, size, snapshots in files:
        print(f"| {name} | {count} | {size / 1e6:.1f} | {snapshots} |")


if __name__ == "__main__":
    main()
