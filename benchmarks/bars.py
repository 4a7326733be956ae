"""Bar throughput and latency: 1-minute bars from a big day of ticks, restating after late ticks, rollups.

    .venv/bin/python benchmarks/bars.py                 # 50M-tick day (needs ~6 GB RAM)
    .venv/bin/python benchmarks/bars.py --ticks 5000000 # quicker
    .venv/bin/python benchmarks/bars.py --repeat 5      # more runs of the 1m kernel and the restate

Prints a table; numbers, not pass/fail. Wall time is what a user waits; CPU time shows how much of the machine
the step got (a shared 2-vCPU box is noisy: compare ticks per CPU-second across runs). The 1m kernel and the
restate run `--repeat` times: the table shows the median run and the fastest, and the load average before and
after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k2_assets.bars.build import BarTables, update_live
from k2_assets.bars.ohlcv import bars_1m, rollup
from k2_resources.arrow_util import conform
from k2_resources.iceberg import IcebergResource

TZ = "Australia/Sydney"
OPEN_US = 1_795_561_200_000_000  # 2026-11-25 10:00 Sydney
SESSION_US = 6 * 3600 * 1_000_000
ROWS: list[tuple[str, str, str, str]] = []


def timed(fn):  # type: ignore[no-untyped-def]
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def ticks_day(n: int, symbols: int, seed: int = 7) -> pl.DataFrame:
    """A trading day of ticks in exchange-time order per symbol (as the feed and the ticks table hold them)."""
    rng = np.random.default_rng(seed)
    names = np.array([f"S{i:04d}" for i in range(symbols)])
    sym = rng.integers(0, symbols, n)
    ts = np.sort(rng.integers(OPEN_US, OPEN_US + SESSION_US, n))
    frame = pl.DataFrame(
        {
            "exchange": pl.Series(["ASX"], dtype=pl.String).extend_constant("ASX", n - 1),
            "symbol": pl.Series(names[sym]),
            "sequence": np.arange(1, n + 1, dtype=np.int64),
            "exchange_ts": ts,
            "price": rng.integers(1_000, 200_000, n).astype(np.int64) * 1_000,
            "volume": rng.integers(1, 2_000, n).astype(np.int64),
        }
    )
    return frame


def row(step: str, size: str, seconds: float, rate: str) -> None:
    ROWS.append((step, size, f"{seconds:.3f}", rate))


def bench_kernel(n: int, symbols: int, repeat: int) -> pl.DataFrame:
    ticks = ticks_day(n, symbols)  # a String symbol column, as the ticks table gives: conversion cost included
    runs = [timed(lambda t=ticks: bars_1m(t, TZ)) for _ in range(repeat)]  # type: ignore[misc]
    bars = runs[0][0]
    by_wall = sorted(runs, key=lambda r: r[1])
    for label, (_, wall, cpu) in (("median", by_wall[len(by_wall) // 2]), ("fastest", by_wall[0])):
        row(
            f"1m bars from ticks ({label} of {repeat})",
            f"{n:,} ticks, {symbols} symbols -> {bars.height:,} bars",
            wall,
            f"{n / wall / 1e6:.1f}M ticks/s wall, {n / cpu / 1e6:.1f}M ticks/CPU-s",
        )
    del ticks
    return bars


def bench_rollups(bars: pl.DataFrame, label: str) -> None:
    for interval in ("5m", "1h", "1d"):
        out, wall, _ = timed(lambda i=interval: rollup(bars, i, TZ))  # type: ignore[misc]
        row(f"rollup 1m -> {interval}", f"{bars.height:,} 1m bars ({label}) -> {out.height:,}", wall, "")


def big_bar_day(symbols: int) -> pl.DataFrame:
    """1m bar states of a liquid market: every symbol trades every minute of the session."""
    ticks = ticks_day(symbols * 360 * 3, symbols, seed=11)
    return bars_1m(ticks, TZ)


def bench_restate(day_ticks: int, symbols: int, late: int, repeat: int) -> None:
    ticks = ticks_day(day_ticks, symbols)
    late_rows = ticks.sample(late, seed=3)
    on_time = ticks.join(late_rows, on=["symbol", "sequence"], how="anti")
    initial, restates = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as home:
            iceberg = IcebergResource(catalog_uri=f"sqlite:///{home}/c.db", warehouse=f"file://{home}/w")
            tables = BarTables.open(iceberg)

            def publish(frame: pl.DataFrame, tables: BarTables = tables) -> None:
                with_ingest = frame.with_columns(pl.col("exchange_ts").alias("ingest_ts"))
                tables.ticks.append(conform(with_ingest.to_arrow(), tables.ticks.schema().as_arrow()))

            publish(on_time)
            initial.append(timed(lambda t=tables: update_live(t, run_id="bench-initial")))  # type: ignore[misc]
            publish(late_rows)
            restates.append(timed(lambda t=tables: update_live(t, run_id="bench-late")))  # type: ignore[misc]
    _, wall, _ = sorted(initial, key=lambda r: r[1])[len(initial) // 2]
    row(f"initial build (first live run, whole day; median of {repeat})", f"{on_time.height:,} ticks", wall, "")
    by_wall = sorted(restates, key=lambda r: r[1])
    result = by_wall[0][0]
    totals = result.totals("1m")
    for label, (_, wall, cpu) in (("median", by_wall[len(by_wall) // 2]), ("slowest", by_wall[-1])):
        row(
            f"restate after {late:,} late ticks spread over the day ({label} of {repeat})",
            f"{totals['bars_restated']:,} 1m bars restated, {result.corrections:,} corrections (all intervals)",
            wall,
            f"{cpu:.3f} CPU-s: read delta + merge + restate + commit 4 tables + 1 bar_corrections commit",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=50_000_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--late", type=int, default=1_000)
    parser.add_argument("--restate-day-ticks", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the 1m kernel and of the restate")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"bars benchmark {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z, polars {pl.__version__}, load {load}", flush=True)
    bars = bench_kernel(args.ticks, args.symbols, max(1, args.repeat))
    bench_rollups(bars, f"{args.symbols} symbols")
    bench_rollups(big_bar_day(2_000), "2,000 symbols, every minute")
    del bars
    bench_restate(args.restate_day_ticks, args.symbols, args.late, max(1, args.repeat))
    widths = [max(len(r[i]) for r in [("step", "size", "seconds", "rate"), *ROWS]) for i in range(4)]
    header = ("step", "size", "seconds", "rate")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in ROWS:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
