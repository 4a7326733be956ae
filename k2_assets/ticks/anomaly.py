"""Price anomalies: |price / last valid price - 1| above a threshold, per (exchange, symbol), in arrival order.

"Last valid" is recursive: an anomalous tick is not valid, so the tick after a spike is compared with the price
before the spike, not with the spike. That is one sequential pass per symbol (kernels.flag_jumps, compiled).

A symbol with no carried last valid price (first batch ever) starts from the median of its first prices in the
batch, so a spike in its very first tick is caught instead of becoming the reference. A real level shift stays
flagged until a reviewer releases it (`k2 quarantine release`): flagged ticks wait for review, while unflagged bad
ticks would be published.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from k2_assets.ticks.kernels import NO_REF, flag_jumps
from k2_assets.ticks.ordering import Grouped, group_codes

FIRST_SEEN = 11  # prices whose median seeds the reference of a symbol with no carried last price
_MAX_PRICE = np.iinfo(np.int64).max


def flag_anomalies(ticks: pl.DataFrame, last_prices: pl.DataFrame | None, threshold_bps: int) -> pl.DataFrame:
    """(anomaly, reference) for every row of `ticks` (exchange, symbol, price, or _g, price where _g is a group code
    per (exchange, symbol); rows in arrival order). `last_prices` has the same key columns and last_price: the
    reference of each symbol's first tick; without one the median of the symbol's first prices in the batch is.
    A reference at or below zero (derivatives) disables the check for that tick."""
    if ticks.is_empty():
        return pl.DataFrame(schema={"anomaly": pl.Boolean, "reference": pl.Int64})
    on = ["_g"] if "_g" in ticks.columns else ["exchange", "symbol"]
    key = pl.col("_g") if on == ["_g"] else pl.concat_str(on, separator="\x1f", ignore_nulls=True)
    rows = Grouped.of(group_codes(ticks, key))
    starts = rows.starts()
    heads = rows.order[starts]  # a row of each group, in group-code order
    carried = np.full(len(heads), NO_REF, dtype=np.int64)
    if last_prices is not None and not last_prices.is_empty():
        seeds = last_prices.select(*on, pl.col("last_price").cast(pl.Int64)).unique(on)
        found = ticks[heads].select(on).join(seeds, on=on, how="left", maintain_order="left")["last_price"]
        carried = found.fill_null(NO_REF).to_numpy()
    price = ticks["price"].cast(pl.Int64).to_numpy()[rows.order]
    anomaly, reference = flag_grouped(price, starts, carried, threshold_bps)
    out_anomaly = np.empty_like(anomaly)
    out_reference = np.empty_like(reference)
    out_anomaly[rows.order] = anomaly
    out_reference[rows.order] = reference
    return pl.DataFrame(
        {"anomaly": out_anomaly, "reference": pl.Series(out_reference).replace(NO_REF, None)},
        schema={"anomaly": pl.Boolean, "reference": pl.Int64},
    )


def flag_grouped(
    price: np.ndarray, starts: np.ndarray, carried: np.ndarray, threshold_bps: int
) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly, reference) of ticks already grouped per symbol in arrival order (`starts` marks each group's first
    tick). `carried[k]` is group k's last valid price from earlier batches, or NO_REF; reference is NO_REF where a
    tick had none."""
    if not len(price):
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    seed = np.where(carried != NO_REF, carried, first_seen_medians(price, starts))
    return flag_jumps(price, starts, seed, threshold_bps)


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
