"""Compaction benchmark: rows/s rewritten, point-query latency (symbol x hour) before and after, file counts.

Builds a `ticks` table of --ticks synthetic ticks over several ASX sessions directly in Iceberg, in --batches
time-ordered micro-batches through the exactly-once writer (each batch writes one small file per symbol partition,
as ingest does), then measures point queries (one symbol x one hour), compacts with the default policy (>100 files
or <50 MB average -> ~512 MB files sorted by symbol, exchange_ts), and measures again.

Point queries are measured two ways:
- the product path (authorisation, the durable audit-spool write, the engine's file-list fast path): the aggregate
  `POINT_QUERY` with literals through `k2.query.Client.sql` (`k2 query "SELECT ..."`), result cache cleared, and
  every row of the symbol-hour through `Client.ticks(..., route="iceberg")` (`k2 query ticks`);
- for reference, the aggregate `POINT_QUERY` over a plain DuckDB view on `iceberg_scan` (k2_resources.duckdb),
  which decodes every manifest entry of the table on every query.

    .venv/bin/python benchmarks/maintenance.py              # 20M ticks, 400 micro-batches
    .venv/bin/python benchmarks/maintenance.py --quick      # 2M ticks, 100 micro-batches
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from k2.feed.simulator import generate
from k2.query import Client
from k2.query.api import _scan_filter
from k2.query.engine import QueryLimits
from k2.query.sqlcheck import where_bounds
from k2_assets.maintenance.compaction import CompactionPolicy, compact_table
from k2_assets.maintenance.files import live_files
from k2_resources.arrow_util import conform
from k2_resources.duckdb import connect
from k2_resources.env import load_settings
from k2_resources.exchanges import calendar
from k2_resources.iceberg import IcebergResource, OffsetRange, commit_offset_ranges
from k2_resources.tables import TICKS

TOPIC = "market.ticks.asx"
# Column metrics only where point queries prune (symbol, exchange_ts, sequence): smaller manifest entries, which
# DuckDB's iceberg_scan decodes for every file on every query.
LEAN_METRICS = {
    "write.metadata.metrics.default": "counts",
    "write.metadata.metrics.column.symbol": "truncate(16)",
    "write.metadata.metrics.column.exchange_ts": "full",
    "write.metadata.metrics.column.sequence": "full",
}
POINT_QUERY = (
    "SELECT count(*), sum(volume), min(price), max(price) FROM ticks "
    "WHERE symbol = $symbol AND exchange_ts >= $start AND exchange_ts < $stop"
)


def sessions(n: int) -> list[dt.date]:
    cal = calendar("ASX")
    days = cal.sessions_in_range("2026-10-01", "2026-12-31")
    return [d.date() for d in days[:n]]


def load(
    iceberg: IcebergResource, ticks: int, batches: int, days: int, lean: bool
) -> tuple[int, float, list[tuple[str, int]]]:
    """Append `ticks` over `days` sessions in `batches` micro-batches; returns (rows, seconds, (symbol, hour) list)."""
    table_def = dataclasses.replace(TICKS, properties={**TICKS.properties, **LEAN_METRICS}) if lean else TICKS
    table = iceberg.ensure_table(table_def)
    schema = table.schema().as_arrow()
    per_day = ticks // days
    batches_per_day = max(1, batches // days)
    offset = 0
    seconds = 0.0
    hours: set[tuple[str, int]] = set()
    for i, day in enumerate(sessions(days)):
        frame = generate(per_day, seed=100 + i, day=day).ticks
        hours |= set(
            frame.select(pl.col("symbol"), (pl.col("exchange_ts") // 3_600_000_000).alias("h")).unique().iter_rows()
        )
        rows = conform(frame.to_arrow(), schema)
        step = -(-rows.num_rows // batches_per_day)
        started = time.perf_counter()
        for b in range(batches_per_day):
            part = rows.slice(b * step, step)
            rng = OffsetRange(TOPIC, 0, offset, offset + part.num_rows)
            commit_offset_ranges(table, [rng], lambda _todo, p=part: p, batch_id=f"bench-{offset}")
            offset += part.num_rows
        seconds += time.perf_counter() - started
        print(f"  session {day}: {rows.num_rows:,} ticks in {batches_per_day} batches", flush=True)
    return offset, seconds, sorted(hours)


def iceberg_scan_queries(
    iceberg: IcebergResource, probes: list[tuple[str, int]], warmup: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Reference: (wall ms, CPU ms) of POINT_QUERY over a DuckDB view on iceberg_scan. DuckDB runs in this process
    with one thread, so CPU time is the query's own work and wall - CPU is time spent waiting for a core."""
    con = connect(iceberg, threads=1)
    walls, cpus = [], []
    for i, (symbol, hour) in enumerate(probes):
        start = dt.datetime.fromtimestamp(hour * 3600, dt.UTC)
        params = {"symbol": symbol, "start": start, "stop": start + dt.timedelta(hours=1)}
        w0, c0 = time.perf_counter(), time.process_time()
        con.execute(POINT_QUERY, params).fetchall()
        if i >= warmup:
            walls.append((time.perf_counter() - w0) * 1000)
            cpus.append((time.process_time() - c0) * 1000)
    con.close()
    return np.array(walls), np.array(cpus)


def api_queries(
    home: Path, probes: list[tuple[str, int]], warmup: int = 3
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """The product path, per kind of call: (wall ms, CPU ms) per call, and the wall ms of the first call (a fresh
    process: DuckDB extensions loaded and the snapshot's file list decoded from its manifests). One DuckDB thread,
    so CPU time is the call's own work. Kinds:
    - sql: POINT_QUERY with the symbol and hour as literals through Client.sql (`k2 query "SELECT ..."`), the
      result cache cleared before each call;
    - ticks: Client.ticks([symbol], start, end, route="iceberg") (`k2 query ticks`), every row of the hour;
    - engine: the same SQL as `sql` straight to the client's QueryEngine with the file filter Client.sql derives
      from it, no authorisation or audit write: the query layer's own share of a call."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("K2_")}
    settings = load_settings({**environ, "K2_HOME": str(home), "K2_ENV": "local"})
    client = Client(settings, limits=QueryLimits(threads=1))
    out: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for kind in ("sql", "ticks", "engine"):
        walls, cpus = [], []
        first = 0.0
        rows = 0
        for i, (symbol, hour) in enumerate(probes):
            start = dt.datetime.fromtimestamp(hour * 3600, dt.UTC)
            stop = start + dt.timedelta(hours=1)
            client.engine.result_cache.clear()
            w0, c0 = time.perf_counter(), time.process_time()
            sql = (
                POINT_QUERY.replace("$symbol", f"'{symbol}'")
                .replace("$start", f"TIMESTAMPTZ '{start.isoformat()}'")
                .replace("$stop", f"TIMESTAMPTZ '{stop.isoformat()}'")
            )
            if kind == "sql":
                rows += int(client.sql(sql).arrow.column(0)[0].as_py())
            elif kind == "engine":
                tables = client.engine.tables()
                bounds = where_bounds(sql, settings.namespace)["ticks"]
                scan = {"ticks": f} if (f := _scan_filter(tables["ticks"], bounds)) else None
                done = client.engine.execute(sql, reads=["ticks"], tables=tables, scan=scan, qualified=())
                rows += int(done.table.column(0)[0].as_py())
            else:
                rows += client.ticks([symbol], start, stop, route="iceberg").num_rows
            if i == 0:
                first = (time.perf_counter() - w0) * 1000
            if i >= warmup:
                walls.append((time.perf_counter() - w0) * 1000)
                cpus.append((time.process_time() - c0) * 1000)
        assert rows > 0
        out[kind] = (np.array(walls), np.array(cpus), first)
    client.engine.close()
    return out


def file_stats(iceberg: IcebergResource) -> tuple[int, int, int]:
    live = live_files(iceberg.load("ticks"))
    files = live.data_files()
    return len(files), len(live.data), sum(int(f.file_size_in_bytes) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=20_000_000)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--days", type=int, default=10, help="ASX sessions the ticks are spread over")
    parser.add_argument("--queries", type=int, default=200, help="point queries after compaction")
    parser.add_argument("--queries-before", type=int, default=50, help="point queries before (they are slow)")
    parser.add_argument("--quick", action="store_true", help="2M ticks, 100 batches, 5 sessions")
    parser.add_argument("--home", type=Path, default=None, help="directory for the catalog (default: a temp dir)")
    parser.add_argument("--lean-metrics", action="store_true", help="column metrics only on symbol, time, sequence")
    args = parser.parse_args()
    if args.quick:
        args.ticks, args.batches, args.days = 2_000_000, 100, 5
    home = args.home or Path(tempfile.mkdtemp(prefix="k2-bench-maint-"))
    iceberg = IcebergResource(catalog_uri=f"sqlite:///{home}/catalog.db", warehouse=(home / "warehouse").as_uri())
    metrics = "lean column metrics" if args.lean_metrics else "default column metrics"
    print(
        f"loading {args.ticks:,} ticks in {args.batches} micro-batches over {args.days} sessions ({metrics}) into {home}"
    )
    rows, load_s, hours = load(iceberg, args.ticks, args.batches, args.days, args.lean_metrics)
    rng = np.random.default_rng(7)
    probes = [hours[i] for i in rng.choice(len(hours), size=max(args.queries, args.queries_before) + 3)]

    files_before, partitions, bytes_before = file_stats(iceberg)
    print(f"  {rows:,} rows appended at {rows / load_s:,.0f} rows/s; {files_before:,} files in {partitions} partitions")
    before_api = api_queries(home, probes[: args.queries_before + 3])
    before, before_cpu, before_first = before_api["sql"]
    print(f"  before: p50 {np.percentile(before, 50):.1f} ms over {len(before)} point queries (API)", flush=True)
    ref_before, _ = iceberg_scan_queries(iceberg, probes[: args.queries_before + 3])
    print(f"  before: p50 {np.percentile(ref_before, 50):.1f} ms (iceberg_scan reference)", flush=True)

    table = iceberg.load("ticks")
    cpu0 = time.process_time()
    result = compact_table(table, CompactionPolicy())
    compaction_cpu = time.process_time() - cpu0
    files_after, _, bytes_after = file_stats(iceberg)
    after_api = api_queries(home, probes[: args.queries + 3])
    after, after_cpu, after_first = after_api["sql"]
    ref_after, _ = iceberg_scan_queries(iceberg, probes[: args.queries + 3])

    def pct(a: np.ndarray, q: float) -> str:
        return f"{np.percentile(a, q):.1f}"

    table_rows = [
        ("ticks in table", f"{rows:,}", f"{rows:,}", ""),
        ("data files", f"{files_before:,}", f"{files_after:,}", f"{partitions} partitions"),
        (
            "avg file size (KB)",
            f"{bytes_before / files_before / 1024:,.0f}",
            f"{bytes_after / files_after / 1024:,.0f}",
            "",
        ),
        ("point query p50 (ms)", pct(before, 50), pct(after, 50), 'Client.sql: k2 query "SELECT ..."'),
        ("point query p95 (ms)", pct(before, 95), pct(after, 95), ""),
        ("point query p99 (ms)", pct(before, 99), pct(after, 99), "target <= 15 after"),
        (
            "point query CPU p50 / p99 (ms)",
            f"{pct(before_cpu, 50)} / {pct(before_cpu, 99)}",
            f"{pct(after_cpu, 50)} / {pct(after_cpu, 99)}",
            "1 DuckDB thread; auth + audit included",
        ),
        (
            "engine only p50 / p99 (ms)",
            f"{pct(before_api['engine'][0], 50)} / {pct(before_api['engine'][0], 99)}",
            f"{pct(after_api['engine'][0], 50)} / {pct(after_api['engine'][0], 99)}",
            "same SQL, QueryEngine, no auth/audit",
        ),
        (
            "ticks read p50 / p99 (ms)",
            f"{pct(before_api['ticks'][0], 50)} / {pct(before_api['ticks'][0], 99)}",
            f"{pct(after_api['ticks'][0], 50)} / {pct(after_api['ticks'][0], 99)}",
            "Client.ticks (k2 query ticks): all rows",
        ),
        (
            "ticks read CPU p50 / p99 (ms)",
            f"{pct(before_api['ticks'][1], 50)} / {pct(before_api['ticks'][1], 99)}",
            f"{pct(after_api['ticks'][1], 50)} / {pct(after_api['ticks'][1], 99)}",
            "",
        ),
        ("point queries", str(len(before)), str(len(after)), "symbol x hour"),
        ("first query of a process (ms)", f"{before_first:.0f}", f"{after_first:.0f}", "extensions + file list"),
        (
            "iceberg_scan reference p50 / p99 (ms)",
            f"{pct(ref_before, 50)} / {pct(ref_before, 99)}",
            f"{pct(ref_after, 50)} / {pct(ref_after, 99)}",
            "aggregate over a plain DuckDB view",
        ),
        ("rows rewritten", "", f"{result.rows_rewritten:,}", f"{result.partitions_compacted} partitions"),
        (
            "MB rewritten -> written",
            "",
            f"{result.bytes_rewritten / 2**20:,.0f} -> {result.bytes_written / 2**20:,.0f}",
            "",
        ),
        (
            "rewrite rows/s (read+sort+write)",
            "",
            f"{result.rows_rewritten / result.rewrite_seconds:,.0f}",
            "target >= 1M",
        ),
        (
            "rewrite rows per CPU-second",
            "",
            f"{result.rows_rewritten / max(result.rewrite_cpu_seconds, 1e-9):,.0f}",
            f"{result.rewrite_cpu_seconds:.1f} CPU-s: what a free core would do",
        ),
        ("compaction rows/s (end to end)", "", f"{result.rows_per_second:,.0f}", f"{result.seconds:.1f} s"),
        (
            "compaction rows per CPU-second",
            "",
            f"{result.rows_rewritten / compaction_cpu:,.0f}",
            f"{compaction_cpu:.1f} CPU-s, 2 threads",
        ),
        ("commit seconds", "", f"{result.commit_seconds:.1f}", f"{result.commit_attempts} attempt(s)"),
        ("ingest append rows/s (setup)", f"{rows / load_s:,.0f}", "", f"{args.batches} commits"),
    ]
    width = [max(len(r[i]) for r in [*table_rows, ("metric", "before", "after", "note")]) for i in range(4)]
    line = " | ".join
    print()
    print(line(h.ljust(w) for h, w in zip(("metric", "before", "after", "note"), width, strict=True)))
    print("-+-".join("-" * w for w in width))
    for r in table_rows:
        print(line(c.ljust(w) for c, w in zip(r, width, strict=True)))
    load_avg = os.getloadavg()[0]
    print(
        f"\nmachine: {pa.cpu_count()} CPUs, load average {load_avg:.1f} at the end; catalog and warehouse under {home}"
    )


if __name__ == "__main__":
    main()
