"""Validation throughput and Great Expectations gate time: prints tables, asserts nothing.

    .venv/bin/python benchmarks/validation.py [--rows 1000000 5000000] [--ge-rows 1000000] [--repeat 3]
                                              [--default-malloc]

1. validation   one raw batch through the in-memory stages validated_ticks runs (polars, numpy and the compiled
   kernels): business rules and dedup (inside the batch and against keys an earlier batch published), anomaly flags
   against a carried last price, sequence gaps / resets / fills against a carried state, and the output frames.
   Best of --repeat runs; rows/s = raw rows in over wall time. No I/O: reading raw_ticks and writing the tables is
   benchmarks/ingest.py's business. The kernels are loaded before the clock starts, as ingest runs load them.
2. GE gate      the `ticks` and `ticks_batch` suites of quality_suites/ on the staged rows of one batch (pandas
   conversion included, Data Docs off and on), per --ge-rows rows. The first run pays GE's import (seconds);
   it is reported separately.

The batch is synthetic but shaped like a feed: 500 symbols with Zipf-like activity, per-symbol sequences and
exchange times within one ASX session, 1% duplicates (half of them of an earlier batch), 1% missing sequences,
0.5% bad prices, 0.5% negative volumes, 0.2% price spikes, 0.2% undecodable values.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from k2_assets.ticks.gate import BatchCounts, GateConfig, check_batch
from k2_assets.ticks.sequences import track_sequences
from k2_assets.ticks.validate import SOURCE_COLUMNS, Rules, validate
from k2_assets.ticks.warm import warm_kernels
from k2_resources.memory import retain_freed_memory

OPEN_US = 1_795_561_200_000_000  # 2026-11-24 23:00 UTC: the ASX open of trading date 2026-11-25
SESSION_US = 6 * 3_600_000_000
DAY = dt.date(2026, 11, 25)


def synthetic_batch(rows: int, seed: int = 1) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(raw batch, keys an earlier batch published, last prices, symbol state), integer space."""
    rng = np.random.default_rng(seed)
    symbols = np.array([f"S{i:03d}" for i in range(500)])
    weights = 1.0 / np.arange(1, 501) ** 0.8
    sym = rng.choice(500, size=rows, p=weights / weights.sum())
    ts = np.sort(rng.integers(OPEN_US, OPEN_US + SESSION_US, size=rows))
    frame = pl.DataFrame({"s": sym, "exchange_ts": ts}).with_columns(
        pl.int_range(pl.len()).over("s").cast(pl.Int64).alias("sequence") + 1_000
    )
    base_price = rng.uniform(2, 200, size=500)
    price = (base_price[sym] * (1 + rng.normal(0, 0.001, rows)) * 1_000_000).astype(np.int64)
    volume = rng.integers(1, 5_000, size=rows)
    spikes = rng.random(rows) < 0.002
    price = np.where(spikes, (price * 1.3).astype(np.int64), price)
    price = np.where(rng.random(rows) < 0.005, -price, price)
    volume = np.where(rng.random(rows) < 0.005, -volume, volume)
    keep = rng.random(rows) >= 0.01  # missing sequences
    raw = pl.DataFrame(
        {
            "exchange": "ASX",
            "symbol": symbols[sym],
            "sequence": frame["sequence"],
            "exchange_ts": ts,
            "ingest_ts": ts + 500,
            "price": price,
            "volume": volume,
            "trade_id": pl.Series(np.arange(rows)).cast(pl.String),
            "side": np.where(rng.random(rows) < 0.5, "BUY", "SELL"),
        }
    ).filter(pl.Series(keep))
    dups = raw.sample(fraction=0.01, seed=seed)
    raw = pl.concat([raw, dups]).sample(fraction=1.0, shuffle=True, seed=seed).sort("exchange_ts")
    n = raw.height
    undecodable = rng.random(n) < 0.002
    raw = raw.with_columns(
        pl.lit("market.ticks.asx").alias("kafka_topic"),
        pl.lit(0, pl.Int32).alias("kafka_partition"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("kafka_offset"),
        pl.col("symbol").alias("kafka_key"),
        pl.lit([], pl.List(pl.String)).alias("conditions"),
        pl.when(pl.Series(undecodable)).then(pl.lit("bad_avro: truncated")).alias("decode_error"),
        pl.when(pl.Series(undecodable)).then(pl.lit(b"\x00\x00\x00\x00\x01junk")).alias("raw_value"),
    )
    raw = raw.with_columns(
        [
            pl.when(pl.col("decode_error").is_null()).then(pl.col(c)).alias(c)
            for c in ("exchange", "symbol", "sequence", "price", "volume")
        ]
    )
    # An earlier batch published some of these keys (cross-batch duplicates) and left a state behind.
    seen = (
        raw.filter(pl.col("decode_error").is_null())
        .sample(fraction=0.005, seed=seed + 1)
        .select("exchange", "symbol", pl.lit(DAY).alias("trading_date"), "sequence")
    )
    # The previous batch's last valid price of each symbol: its typical price (not a spike, not negated).
    firsts = (
        raw.drop_nulls("symbol")
        .group_by("exchange", "symbol")
        .agg(pl.col("sequence").min(), pl.col("price").abs().median().cast(pl.Int64))
    )
    last_prices = firsts.select("exchange", "symbol", pl.col("price").abs().alias("last_price"))
    state = firsts.select(
        "exchange",
        "symbol",
        pl.lit(0, pl.Int64).alias("epoch"),
        pl.lit(DAY).alias("trading_date"),
        (pl.col("sequence") - 1).alias("last_sequence"),
        (pl.col("sequence") - 1).alias("last_arrival_sequence"),
        pl.lit(OPEN_US - 1, pl.Int64).alias("last_arrival_ts"),
        pl.col("price").abs().alias("last_price"),
        pl.lit(OPEN_US - 1, pl.Int64).alias("last_price_ts"),
        pl.lit(0, pl.Int64).alias("updated_at"),
        pl.lit("before").alias("batch_id"),
    )
    return raw.sort(SOURCE_COLUMNS), seen, last_prices, state


def best_of(repeat: int, fn):  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def validation_rows(rows: int, repeat: int) -> list[tuple[str, ...]]:
    raw, seen, last_prices, state = synthetic_batch(rows)
    now = OPEN_US + 2 * SESSION_US
    rules = Rules()
    t_validate, result = best_of(
        repeat, lambda: validate(raw, rules=rules, seen_keys=seen, last_prices=last_prices, now_us=now)
    )
    t_first, _ = best_of(repeat, lambda: validate(raw, rules=rules, now_us=now))
    t_gaps, seqs = best_of(
        repeat, lambda: track_sequences(result.received, state, None, now_us=now, batch_id="bench", raw_snapshot_id=1)
    )
    total = t_validate + t_gaps
    n = raw.height
    counts = (
        f"{result.ticks.height:,} ticks / {result.quarantine.height:,} quarantined / "
        f"{result.duplicates.height:,} dup / {seqs.gaps_opened:,} gaps"
    )
    return [
        (f"{n:,}", "validate, first batch (no carried state)", f"{t_first * 1e3:,.0f}", f"{n / t_first / 1e6:.2f}", ""),
        (
            f"{n:,}",
            "validate with carried keys + prices",
            f"{t_validate * 1e3:,.0f}",
            f"{n / t_validate / 1e6:.2f}",
            "",
        ),
        (f"{n:,}", "sequence gaps/resets/fills", f"{t_gaps * 1e3:,.0f}", f"{n / t_gaps / 1e6:.2f}", ""),
        (f"{n:,}", "validate + sequences (all of it)", f"{total * 1e3:,.0f}", f"{n / total / 1e6:.2f}", counts),
    ]


def ge_rows(rows: int, repeat: int) -> list[tuple[str, ...]]:
    raw, seen, last_prices, _ = synthetic_batch(rows, seed=2)
    result = validate(raw, seen_keys=seen, last_prices=last_prices, now_us=OPEN_US + 2 * SESSION_US)
    staged = result.ticks.drop(SOURCE_COLUMNS)
    counts = BatchCounts(
        raw.height, result.ticks.height, result.quarantine.height, result.duplicates.height, staged.height
    )
    out = []
    started = time.perf_counter()
    first = check_batch(staged, counts, GateConfig(quarantine_ceiling=0.1), run_name="bench-import")
    out.append(("first run (GE import + context)", f"{time.perf_counter() - started:.2f}", "", str(first.success)))
    with tempfile.TemporaryDirectory() as docs:
        for label, config in (
            ("ticks + ticks_batch suites, no Data Docs", GateConfig(quarantine_ceiling=0.1)),
            ("ticks + ticks_batch suites, Data Docs built", GateConfig(quarantine_ceiling=0.1, docs_dir=Path(docs))),
        ):
            seconds, gate = best_of(repeat, lambda config=config: check_batch(staged, counts, config, run_name="bench"))
            per_million = seconds / staged.height * 1_000_000
            out.append(
                (label, f"{seconds:.2f}", f"{per_million:.2f}", f"{gate.success} ({len(gate.expectations)} exp.)")
            )
    return out


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--ge-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's defaults (ingest runs retain freed memory)"
    )
    args = parser.parse_args()
    retained = not args.default_malloc and retain_freed_memory()
    warm_kernels()
    print(
        f"polars {pl.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
        f"freed memory {'retained for reuse, as in ingest runs' if retained else 'returned (glibc defaults)'}"
    )
    rows = [r for n in args.rows for r in validation_rows(n, args.repeat)]
    table(f"Validation (best of {args.repeat})", ("raw rows", "stage", "ms", "M rows/s", "outcome"), rows)
    table(
        f"Great Expectations gate on one staged batch (~{args.ge_rows:,} raw rows, best of {args.repeat})",
        ("run", "seconds", "s per 1M staged rows", "passed"),
        ge_rows(args.ge_rows, args.repeat),
    )
    print(f"\nload average afterwards {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
