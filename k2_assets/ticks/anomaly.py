"""Price anomalies: |price / last valid price - 1| above a threshold, per (exchange, symbol), in arrival order.

"Last valid" is recursive: an anomalous tick is not valid, so the tick after a spike is compared with the price
before the spike, not with the spike. A left-to-right scan is inherently sequential; here it is a fixed point of
whole-column passes. Each pass compares every tick with the last tick the previous pass found valid. The first
position where a pass changes anything is exactly the first position that was still wrong, so every pass fixes
at least one more position per symbol, and a pass that changes nothing is the sequential answer. Isolated spikes
settle in three passes.

A symbol with no carried last valid price (first batch ever) starts from the median of its first prices in the
batch, so a spike in its very first tick is caught instead of becoming the reference. If `max_passes` is reached (a long run of anomalies, e.g. a real level shift), every tick
from the first unsettled one on is flagged: the conservative choice, since flagged ticks wait for review
(`k2 quarantine release`), while unflagged bad ticks would be published.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from k2_assets.ticks.ordering import stable_group_order

_FIRST_SEEN = 11  # prices whose median seeds the reference of a symbol with no carried last price
_NO_REF = -(2**63)  # marks "no reference price yet" through a forward fill; no price is -2^63 millionths


def flag_anomalies(
    ticks: pl.DataFrame, last_prices: pl.DataFrame | None, threshold_bps: int, max_passes: int = 12
) -> pl.DataFrame:
    """(anomaly, reference) for every row of `ticks` (exchange, symbol, price, or _g, price where _g is a group code
    per (exchange, symbol); rows in arrival order). `last_prices` has the same key columns and last_price.

    `last_prices` (exchange, symbol, last_price) seeds the reference of each symbol's first tick; without one the
    median of the symbol's first prices in the batch does. A reference at or below zero (derivatives) disables the check for that tick.
    """
    if ticks.is_empty():
        return pl.DataFrame(schema={"anomaly": pl.Boolean, "reference": pl.Int64})
    # One integer code per (exchange, symbol) (`_g`, if the caller has one): grouping and sorting on it is much
    # cheaper than on the strings.
    if "_g" in ticks.columns:
        frame = ticks.select("_g", "price").with_row_index("_pos")
    else:
        key = pl.concat_str(["exchange", "symbol"], separator="\x1f", ignore_nulls=True)
        frame = ticks.select(key.cast(pl.Categorical).to_physical().alias("_g"), "price", "exchange", "symbol")
        frame = frame.with_row_index("_pos")
    groups = frame.group_by("_g").agg(
        *([pl.col("exchange").first(), pl.col("symbol").first()] if "symbol" in frame.columns else []),
        # A symbol seen for the first time has no reference: the median of its first few prices is one, robust to
        # a spike in its very first tick (which would otherwise become the reference and flag every tick after).
        pl.col("price").head(_FIRST_SEEN).quantile(0.5, interpolation="nearest").cast(pl.Int64).alias("_median"),
    )
    if last_prices is not None and not last_prices.is_empty():
        on = ["_g"] if "_g" in last_prices.columns else ["exchange", "symbol"]
        seeds = last_prices.select(*on, pl.col("last_price").cast(pl.Int64).alias("_carried")).unique(on)
        groups = groups.join(seeds, on=on, how="left")
    else:
        groups = groups.with_columns(pl.lit(None, pl.Int64).alias("_carried"))
    groups = groups.select("_g", pl.coalesce("_carried", "_median").alias("_seed"))
    # Rows of a symbol together, in arrival order inside the group (a stable argsort of the group code), and each
    # row's seed looked up in a table indexed by the code.
    codes = frame["_g"].cast(pl.Int64).fill_null(-1).to_numpy() + 1  # 0: no group (never in validated rows)
    order = stable_group_order(pl.Series(codes))
    table = np.full(int(codes.max()) + 1, _NO_REF, dtype=np.int64)
    seeds = groups.filter(pl.col("_seed").is_not_null())
    table[seeds["_g"].cast(pl.Int64).to_numpy() + 1] = seeds["_seed"].to_numpy()
    sorted_codes = codes[order]
    price = frame["price"].to_numpy()[order]
    seed = table[sorted_codes]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = sorted_codes[1:] != sorted_codes[:-1]
    anomaly, reference, changed, settled = _settle(price, starts, seed, threshold_bps, max_passes)
    if not settled:
        group = np.cumsum(starts)
        unsettled = pl.DataFrame({"g": group, "c": changed}).select(pl.col("c").cum_max().over("g")).to_series()
        anomaly = anomaly | unsettled.to_numpy()
    # Back to the callers' row order.
    position = order
    out_anomaly = np.empty_like(anomaly)
    out_reference = np.empty_like(reference)
    out_anomaly[position] = anomaly
    out_reference[position] = reference
    return pl.DataFrame(
        {"anomaly": out_anomaly, "reference": pl.Series(out_reference).replace(_NO_REF, None)},
        schema={"anomaly": pl.Boolean, "reference": pl.Int64},
    )


def _judge(price: np.ndarray, reference: np.ndarray, threshold_bps: int) -> np.ndarray:
    """Anomaly flags of ticks against their references (no check where the reference is missing or <= 0)."""
    usable = (reference != _NO_REF) & (reference > 0)
    base = np.where(usable, reference, price)  # no arithmetic on the no-reference marker
    return usable & (np.abs(price - base) * 10_000 > base * threshold_bps)


def _settle(
    price: np.ndarray, starts: np.ndarray, seed: np.ndarray, threshold_bps: int, max_passes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The fixed point of the passes (module docstring) over ticks grouped by symbol (`starts` marks each group's
    first tick, `seed` its reference): (anomaly, reference, changed by the last pass, settled).

    The first pass takes every tick as valid, so each tick's reference is its predecessor (the seed for a group's
    first). Later passes only differ for ticks right after an invalid one: just those few get a new reference, the
    last valid tick before them (a binary search over the valid positions), so a pass costs a few linear scans
    instead of a full recomputation."""
    n = len(price)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    first_reference = np.empty(n, dtype=np.int64)
    first_reference[1:] = price[:-1]
    first_reference[starts] = seed[starts]
    first_anomaly = _judge(price, first_reference, threshold_bps)
    valid = np.ones(n, dtype=bool)
    anomaly, reference, changed = first_anomaly, first_reference, ~valid
    for pass_number in range(max_passes):
        if pass_number:
            after_invalid = np.flatnonzero(~valid[:-1]) + 1
            moved = after_invalid[~starts[after_invalid]]  # a group's first tick keeps its seed
            valid_positions = np.concatenate(([-1], np.flatnonzero(valid)))  # -1: no valid tick before
            last_valid = valid_positions[np.searchsorted(valid_positions, moved) - 1]
            in_group = last_valid >= group_start[moved]
            new_reference = np.where(in_group, price[np.maximum(last_valid, 0)], seed[moved])
            reference = first_reference.copy()
            reference[moved] = new_reference
            anomaly = first_anomaly.copy()
            anomaly[moved] = _judge(price[moved], new_reference, threshold_bps)
        if np.array_equal(~anomaly, valid):
            return anomaly, reference, changed, True
        changed = ~anomaly != valid
        valid = ~anomaly
    return anomaly, reference, changed, False
