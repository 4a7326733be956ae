"""Price anomalies: |price / last valid price - 1| above a threshold, per (exchange, symbol), in arrival order.

"Last valid" is recursive: an anomalous tick is not valid, so the tick after a spike is compared with the price
before the spike, not with the spike. A left-to-right scan is inherently sequential; here it is a fixed point of
whole-column passes. Each pass compares every tick with the last tick the previous pass found valid. The first
position where a pass changes anything is exactly the first position that was still wrong, so every pass fixes
at least one more position per symbol, and a pass that changes nothing is the sequential answer. Isolated spikes
settle in three passes.

A symbol with no carried last valid price (first batch ever) starts from the median of its first prices in the
batch, so a spike in its very first tick is caught instead of becoming the reference. If `max_passes` is reached
(a long run of anomalies, e.g. a real level shift), every tick from the first unsettled one on is flagged: the
conservative choice, since flagged ticks wait for review (`k2 quarantine release`), while unflagged bad ticks
would be published.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from k2_assets.ticks.ordering import Grouped, dense_codes

FIRST_SEEN = 11  # prices whose median seeds the reference of a symbol with no carried last price
NO_REF = -(2**63)  # "no reference price"; no price is -2^63 millionths
_MAX_PRICE = np.iinfo(np.int64).max


def flag_anomalies(
    ticks: pl.DataFrame, last_prices: pl.DataFrame | None, threshold_bps: int, max_passes: int = 12
) -> pl.DataFrame:
    """(anomaly, reference) for every row of `ticks` (exchange, symbol, price, or _g, price where _g is a group code
    per (exchange, symbol); rows in arrival order). `last_prices` has the same key columns and last_price: the
    reference of each symbol's first tick; without one the median of the symbol's first prices in the batch is.
    A reference at or below zero (derivatives) disables the check for that tick."""
    if ticks.is_empty():
        return pl.DataFrame(schema={"anomaly": pl.Boolean, "reference": pl.Int64})
    on = ["_g"] if "_g" in ticks.columns else ["exchange", "symbol"]
    key = pl.col("_g") if on == ["_g"] else pl.concat_str(on, separator="\x1f", ignore_nulls=True)
    ids = ticks.select(key.cast(pl.Categorical).to_physical() if on != ["_g"] else key.cast(pl.Int64)).to_series()
    codes, _ = dense_codes(ids)
    rows = Grouped.of(codes)
    starts = rows.starts()
    heads = rows.order[starts]  # a row of each group, in group-code order
    carried = np.full(len(heads), NO_REF, dtype=np.int64)
    if last_prices is not None and not last_prices.is_empty():
        seeds = last_prices.select(*on, pl.col("last_price").cast(pl.Int64)).unique(on)
        found = ticks[heads].select(on).join(seeds, on=on, how="left", maintain_order="left")["last_price"]
        carried = found.fill_null(NO_REF).to_numpy()
    price = ticks["price"].cast(pl.Int64).to_numpy()[rows.order]
    anomaly, reference = flag_grouped(price, starts, carried, threshold_bps, max_passes)
    out_anomaly = np.empty_like(anomaly)
    out_reference = np.empty_like(reference)
    out_anomaly[rows.order] = anomaly
    out_reference[rows.order] = reference
    return pl.DataFrame(
        {"anomaly": out_anomaly, "reference": pl.Series(out_reference).replace(NO_REF, None)},
        schema={"anomaly": pl.Boolean, "reference": pl.Int64},
    )


def flag_grouped(
    price: np.ndarray, starts: np.ndarray, carried: np.ndarray, threshold_bps: int, max_passes: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly, reference) of ticks already grouped per symbol in arrival order (`starts` marks each group's first
    tick). `carried[k]` is group k's last valid price from earlier batches, or NO_REF; reference is NO_REF where a
    tick had none."""
    if not len(price):
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    seed = np.where(carried != NO_REF, carried, first_seen_medians(price, starts))
    anomaly, reference, changed, settled = _settle(price, starts, seed, threshold_bps, max_passes)
    if not settled:
        group = np.cumsum(starts) - 1
        unsettled = pl.DataFrame({"g": group, "c": changed}).select(pl.col("c").cum_max().over("g")).to_series()
        anomaly = anomaly | unsettled.to_numpy()
    return anomaly, reference


def first_seen_medians(price: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per group: the median of its first FIRST_SEEN prices (the upper one of the middle two for an even count,
    as polars' quantile(0.5, "nearest")). One small [groups x FIRST_SEEN] matrix, no per-group loop."""
    heads = np.flatnonzero(starts)
    ends = np.append(heads[1:], len(price))
    at = heads[:, None] + np.arange(FIRST_SEEN)[None, :]
    inside = at < ends[:, None]
    values = np.where(inside, price[np.minimum(at, len(price) - 1)], _MAX_PRICE)
    values.sort(axis=1)
    return values[np.arange(len(heads)), inside.sum(axis=1) // 2]


def _judge(price: np.ndarray, reference: np.ndarray, threshold_bps: int) -> np.ndarray:
    """Anomaly flags of ticks against their references (no check where the reference is missing or <= 0)."""
    usable = (reference != NO_REF) & (reference > 0)
    base = np.where(usable, reference, price)  # no arithmetic on the no-reference marker
    return usable & (np.abs(price - base) * 10_000 > base * threshold_bps)


def _settle(
    price: np.ndarray, starts: np.ndarray, seed: np.ndarray, threshold_bps: int, max_passes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The fixed point of the passes (module docstring) over ticks grouped by symbol (`starts` marks each group's
    first tick, `seed` holds each group's reference): (anomaly, reference, changed by the last pass, settled).

    The first pass takes every tick as valid, so each tick's reference is its predecessor (the seed for a group's
    first): one pass over every tick. A later pass can only change the ticks right after an invalid one (`moved`):
    they get the last valid tick before them as reference, found from the runs of invalid ticks. Invalid ticks are
    few, so later passes cost that, not the batch size."""
    n = len(price)
    heads = np.flatnonzero(starts)
    reference = np.empty(n, dtype=np.int64)
    reference[1:] = price[:-1]
    reference[heads] = seed
    first_anomaly = _judge(price, reference, threshold_bps)
    if max_passes < 2 or not first_anomaly.any():
        return first_anomaly, reference, first_anomaly, not first_anomaly.any()
    anomaly = first_anomaly.copy()
    changed = first_anomaly.copy()  # what the first pass changed (from "all valid")
    empty = np.zeros(0, dtype=np.int64)
    moved, moved_reference = empty, empty
    for _ in range(max_passes - 1):
        previous = moved
        invalid = np.flatnonzero(anomaly)
        moved = invalid + 1
        moved = moved[moved < n]
        moved = moved[~starts[moved]]  # a group's first tick keeps its seed
        # The last valid tick before `moved` is the one before the first tick of the invalid run ending at moved-1.
        head = np.ones(len(invalid), dtype=bool)
        head[1:] = invalid[1:] != invalid[:-1] + 1
        run_first = invalid[np.maximum.accumulate(np.where(head, np.arange(len(invalid)), 0))]
        last_valid = run_first[np.searchsorted(invalid, moved - 1)] - 1
        group = np.searchsorted(heads, moved, side="right") - 1
        in_group = last_valid >= heads[group]
        moved_reference = np.where(in_group, price[np.maximum(last_valid, 0)], seed[group])
        # This pass's flags differ from the first pass's only at `moved`; the previous pass's only at `previous`.
        touched = np.union1d(previous, moved)
        proposed = first_anomaly[touched]
        proposed[np.searchsorted(touched, moved)] = _judge(price[moved], moved_reference, threshold_bps)
        differs = touched[proposed != anomaly[touched]]
        if not len(differs):
            reference[moved] = moved_reference
            return anomaly, reference, np.zeros(n, dtype=bool), True
        anomaly[touched] = proposed
        changed = np.zeros(n, dtype=bool)
        changed[differs] = True
    reference[moved] = moved_reference
    return anomaly, reference, changed, False
