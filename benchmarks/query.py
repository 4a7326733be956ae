"""Query latency through k2.query (RBAC, audit and limits included): prints tables, asserts nothing.

    .venv/bin/python benchmarks/query.py [--ticks 2000000] [--tail 20000] [--repeat 40] [--clients 20]

Setup: a day of simulated ticks for 50 ASX symbols written to `ticks` (with a Kafka watermark of 0), 1-minute
bars computed from them into `bars_1m`, and `--tail` further ticks produced to a throwaway Kafka broker (started
on free 127.0.0.1 ports and stopped at the end) that Iceberg has not seen: the router's Kafka tail.

1. point query       one symbol, one minute of ticks (Iceberg only, and through the router's Kafka check)
2. bars day          a trading day of 1-minute bars for 50 symbols, result cache cleared each time
3. tail merge        one symbol for the whole day: Iceberg + the Kafka tail merged at the watermark
4. cache             the same aggregation cold (cache cleared) and warm (result cache hit)
5. concurrency       --clients threads issuing point and bars queries against the 10-slot limit: throughput,
                     latency, time spent queued, the most queries running at once

Each latency is the wall time of one API call as a user sees it (authorisation, audit spool write, DuckDB over
Iceberg). The machine's load average is printed with the numbers: a shared 2-vCPU box is noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from k2.feed.producer import produce_feed
from k2.feed.simulator import Feed, generate
from k2.query import Client
from k2.query.engine import QueryLimits
from k2_resources.arrow_util import conform
from k2_resources.broker import LocalKafkaBroker
from k2_resources.env import Settings, load_settings
from k2_resources.errors import K2Error
from k2_resources.iceberg import WATERMARK_PROPERTY, IcebergResource, encode_watermarks
from k2_resources.kafka import KafkaResource
from k2_resources.local_process import free_port
from k2_resources.metrics import QueryMetrics
from k2_resources.schemas import FileSchemaStore
from k2_resources.tables import BARS_1M, TICKS

DAY = dt.date(2026, 11, 24)
PARTITIONS = 6
BARS_SQL = """
SELECT exchange, symbol, (timezone('Australia/Sydney', exchange_ts))::DATE AS trading_date,
       time_bucket(INTERVAL 1 MINUTE, exchange_ts) AS window_start,
       arg_min(price, (exchange_ts, sequence)) AS open, max(price) AS high, min(price) AS low,
       arg_max(price, (exchange_ts, sequence)) AS close, sum(volume)::BIGINT AS volume, count(*) AS trade_count,
       min(sequence) AS first_sequence, max(sequence) AS last_sequence, 0 AS revision
FROM ticks GROUP BY ALL
"""
ROWS: list[tuple[str, ...]] = []


class PeakMetrics(QueryMetrics):
    """Records the most queries running at once (the figures themselves are not needed here)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.peak = 0
        self.lock = threading.Lock()

    def in_flight(self, n: int) -> None:  # type: ignore[override]
        with self.lock:
            self.peak = max(self.peak, n)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def measure(label: str, fn: Callable[[], object], repeat: int, note: str = "") -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    ROWS.append((label, str(repeat), f"{pct(times, 50):.1f}", f"{pct(times, 99):.1f}", note))
    return times


def setup(settings: Settings, n: int, tail: int) -> tuple[Feed, list[str]]:
    feed = generate(n + tail, seed=11, symbols=50, day=DAY)
    ticks = feed.ticks.sort("exchange_ts")
    history, recent = ticks.slice(0, n), ticks.slice(n, tail)
    iceberg = IcebergResource.from_settings(settings)
    table = iceberg.ensure_table(TICKS)
    watermark = encode_watermarks({settings.tick_topic: dict.fromkeys(range(PARTITIONS), 0)})
    table.append(
        conform(history.to_arrow(), table.schema().as_arrow()), snapshot_properties={WATERMARK_PROPERTY: watermark}
    )
    client = Client(settings)
    bars = client.sql(BARS_SQL).arrow
    bars_table = iceberg.ensure_table(BARS_1M)
    bars_table.append(conform(bars, bars_table.schema().as_arrow()))
    kafka = KafkaResource.from_settings(settings)
    part = Feed(recent, feed.undecodable_rows[:0], feed.manifest)
    produce_feed(kafka, settings.tick_topic, part, FileSchemaStore(), PARTITIONS)
    return feed, sorted(set(ticks["symbol"].to_list()))


def concurrency(settings: Settings, clients: int, per_client: int, symbols: list[str], t0: dt.datetime) -> None:
    limits = QueryLimits.from_settings(settings)
    metrics = PeakMetrics()
    from k2.query.engine import QueryEngine

    engine = QueryEngine(IcebergResource.from_settings(settings), limits, metrics)
    latencies: list[float] = []
    queued: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    original = engine.execute

    def execute(*args, **kwargs):  # type: ignore[no-untyped-def]
        done = original(*args, **kwargs)
        with lock:
            queued.append(done.queued_s)
        return done

    engine.execute = execute  # type: ignore[method-assign]

    def worker(i: int) -> None:
        c = Client(settings, engine=engine)
        rng = random.Random(i)
        for j in range(per_client):
            started = time.perf_counter()
            try:
                if j % 4 == 3:
                    c.bars("1m", rng.sample(symbols, 5), t0, t0 + dt.timedelta(hours=6))
                    c.engine.result_cache.clear()
                else:
                    start = t0 + dt.timedelta(minutes=rng.randrange(0, 350))
                    c.ticks([rng.choice(symbols)], start, start + dt.timedelta(minutes=1), route="iceberg")
            except K2Error as exc:
                with lock:
                    failures.append(type(exc).__name__)
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    waited = [q for q in queued if q > 0.001]
    ROWS.append(
        (
            f"{clients} clients x {per_client} (3 point : 1 bars)",
            str(len(latencies)),
            f"{pct(latencies, 50):.1f}",
            f"{pct(latencies, 99):.1f}",
            f"{len(latencies) / wall:.1f} q/s; limit {limits.max_concurrent}, peak running {metrics.peak}; "
            f"{len(waited)} queued, wait p50 {pct(waited, 50):.0f} / p99 {pct(waited, 99):.0f} ms; "
            f"{len(failures)} failed {sorted(set(failures))}",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=2_000_000)
    parser.add_argument("--tail", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=8)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="k2-bench-query-"))
    broker = LocalKafkaBroker(home / "kafka", free_port(), controller_port=free_port())
    try:
        broker.start()
        settings = load_settings(
            {**os.environ, "K2_HOME": str(home), "K2_KAFKA_BOOTSTRAP": broker.bootstrap, "K2_TOPIC_PARTITIONS": "6"}
        )
        started = time.perf_counter()
        feed, symbols = setup(settings, args.ticks, args.tail)
        ts = feed.ticks["exchange_ts"]
        t0 = dt.datetime.fromtimestamp(int(ts.min()) / 1e6, dt.UTC)  # type: ignore[arg-type]
        t_end = dt.datetime.fromtimestamp(int(ts.max()) / 1e6 + 1, dt.UTC)  # type: ignore[arg-type]
        print(
            f"setup: {args.ticks:,} ticks in Iceberg + {args.tail:,} in Kafka, 50 symbols, {time.perf_counter() - started:.1f}s"
        )

        c = Client(settings)
        rng = random.Random(1)

        def point(route: str) -> Callable[[], object]:
            def run() -> object:
                start = t0 + dt.timedelta(minutes=rng.randrange(0, 350))
                return c.ticks([rng.choice(symbols)], start, start + dt.timedelta(minutes=1), route=route)

            return run

        point("iceberg")()  # first query of the process: loads the DuckDB extensions into a slot
        measure("point query: 1 symbol x 1 minute (Iceberg)", point("iceberg"), args.repeat)
        measure("point query, router checks Kafka (tail cached)", point("auto"), args.repeat, "offset probe + merge")

        def bars_day() -> object:
            c.engine.result_cache.clear()
            result = c.bars("1m", symbols, t0, t_end)
            assert result.num_rows > 0
            return result

        rows = c.bars("1m", symbols, t0, t_end).num_rows
        measure("bars: 1 day x 50 symbols of 1m bars", bars_day, args.repeat, f"{rows:,} bars, cache cleared")

        merged = c.ticks([symbols[0]], t0, t_end)
        parts = {p.source: p.rows for p in merged.freshness.parts}
        assert merged.freshness.route == "hybrid", merged.freshness
        measure(
            "tail merge: 1 symbol x day, Iceberg + Kafka tail",
            lambda: c.ticks([symbols[0]], t0, t_end),
            args.repeat,
            f"{parts.get('iceberg', 0):,} + {parts.get('kafka', 0):,} rows, {merged.freshness.lag_records:,} in tail",
        )
        fresh = Client(settings, log=KafkaResource.from_settings(settings))  # a new tail reader: reads all of it
        measure("tail merge, first read of the tail (cold)", lambda: fresh.ticks([symbols[0]], t0, t_end), 1)

        agg = "SELECT symbol, count(*) AS n, avg(price) AS p, sum(volume) AS v FROM ticks GROUP BY symbol"

        def cold() -> object:
            c.engine.result_cache.clear()
            return c.sql(agg)

        cold_t = measure("aggregation over all ticks, cold", cold, args.repeat)
        c.sql(agg)
        warm_t = measure("aggregation, result cache hit", lambda: c.sql(agg), args.repeat)
        ROWS.append(
            ("cache-hit speed-up (p50 cold / p50 warm)", "", "", "", f"{pct(cold_t, 50) / pct(warm_t, 50):.1f}x")
        )

        concurrency(settings, args.clients, args.per_client, symbols, t0)

        width = max(len(r[0]) for r in ROWS)
        print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; latencies in ms\n")
        print(f"{'query':<{width}}  {'n':>4}  {'p50':>8}  {'p99':>8}  notes")
        print("-" * (width + 40))
        for label, n, p50, p99, note in ROWS:
            print(f"{label:<{width}}  {n:>4}  {p50:>8}  {p99:>8}  {note}")
        print("\n" + ", ".join(f"{k}={v}" for k, v in _audit_summary(c).items()))
    finally:
        broker.stop(timeout_s=5.0)
        shutil.rmtree(home, ignore_errors=True)


def _audit_summary(c: Client) -> dict[str, int]:
    pending = c.audit_log.pending()
    moved = c.audit_log.flush()
    total = c.sql("SELECT count(*) AS n FROM audit_log").pl()["n"][0]
    return {"audit events committed": int(total), "moved by the last flush": moved, "pending before it": pending}


if __name__ == "__main__":
    pl.Config.set_tbl_rows(50)
    main()
