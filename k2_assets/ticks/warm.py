"""Have the compiled validation kernels (kernels.py) ready before a batch needs them.

numba compiles a kernel for each combination of argument types it meets (a read-only array from polars is another
type than a fresh numpy one) and keeps the machine code in its cache next to kernels.py. A tiny batch through
validate() and track_sequences() meets exactly the types a real batch does: run at install (`make install`, so
no run compiles) and in the background of raw_ticks (so validated_ticks does not wait for the cache to load).

    python -m k2_assets.ticks.warm
"""

import datetime as dt
import threading
import time

import polars as pl

from k2_assets.ticks.sequences import track_sequences
from k2_assets.ticks.validate import validate

_started: threading.Thread | None = None


def raw_rows(symbols: list[str], sequences: list[int], prices: list[int], exchange_ts: list[int]) -> pl.DataFrame:
    """Decoded raw_ticks rows of ASX in arrival order (offsets 0.. of one partition), volume 100, side BUY."""
    n = len(symbols)
    return pl.DataFrame(
        {
            "kafka_topic": ["market.ticks.asx"] * n,
            "kafka_partition": [0] * n,
            "kafka_offset": list(range(n)),
            "exchange": ["ASX"] * n,
            "symbol": symbols,
            "sequence": sequences,
            "exchange_ts": exchange_ts,
            "ingest_ts": exchange_ts,
            "price": prices,
            "volume": [100] * n,
            "trade_id": [str(i) for i in range(n)],
            "side": ["BUY"] * n,
            "conditions": [[] for _ in range(n)],
            "decode_error": [None] * n,
            "raw_value": [None] * n,
        },
        schema_overrides={"conditions": pl.List(pl.String), "raw_value": pl.Binary, "decode_error": pl.String},
    )


def tiny_batch() -> pl.DataFrame:
    """Six rows of two symbols in an ASX session: a duplicate, a late tick, a gap and a price jump, so every kernel
    runs."""
    open_us = 1_795_561_200_000_000
    return raw_rows(
        ["BHP", "CBA", "BHP", "BHP", "BHP", "CBA"],
        [1, 1, 4, 4, 2, 2],
        [45_000_000, 100_000_000, 45_100_000, 45_100_000, 90_000_000, 100_100_000],
        [open_us + i for i in range(6)],
    )


def warm_kernels() -> float:
    """Run the tiny batch through validation; the seconds it took (compiling, on a cold cache)."""
    started = time.perf_counter()
    batch = tiny_batch()
    seen = pl.DataFrame(
        {"exchange": ["ASX"], "symbol": ["BHP"], "trading_date": [dt.date(2026, 11, 25)], "sequence": [1]}
    )
    prices = batch.select("exchange", "symbol", pl.col("price").alias("last_price")).head(2)
    result = validate(batch, seen_keys=seen, last_prices=prices)
    track_sequences(result.received, now_us=0, batch_id="warm")
    return time.perf_counter() - started


def warm_kernels_in_background() -> None:
    """warm_kernels() in a daemon thread, once per process: the first kernel call of a process costs ~0.3 s (the
    cache loading), which a step can spend while it waits on I/O instead."""
    global _started
    if _started is None:
        _started = threading.Thread(target=warm_kernels, name="kernels-warm-up", daemon=True)
        _started.start()


if __name__ == "__main__":
    print(f"validation kernels ready in {warm_kernels():.1f} s")
