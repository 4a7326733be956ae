"""Row orders over integer codes: sorting a million rows by (symbol, time) is ~5x cheaper on one packed int64 key
than on several columns, and ~10x cheaper than on the symbol strings."""

from __future__ import annotations

import numpy as np
import polars as pl

_INT63 = 2**63 - 1


def grouped_time_order(frame: pl.DataFrame, group: pl.Expr, ts: str, tiebreak: str) -> pl.Series:
    """Positions that put the rows of each `group` (a non-negative integer code) together, each group in (ts,
    tiebreak) order. Groups come in code order. One packed key `group * span + (ts - min)` when no value is null
    and it fits in 63 bits (any realistic batch), else a multi-column sort."""
    bounds = frame.select(
        group.max().cast(pl.Int64).alias("g"),
        pl.col(ts).min().alias("lo"),
        pl.col(ts).max().alias("hi"),
        (group.null_count() + pl.col(ts).null_count()).alias("nulls"),
    ).row(0, named=True)
    if frame.height and bounds["nulls"] == 0:
        span = bounds["hi"] - bounds["lo"] + 1
        if (bounds["g"] + 1) * span < _INT63:
            key = group.cast(pl.Int64) * span + (pl.col(ts) - bounds["lo"])
            return frame.select(pl.arg_sort_by(key, tiebreak)).to_series()
    return frame.select(pl.arg_sort_by(group, ts, tiebreak)).to_series()


def stable_group_order(codes: pl.Series) -> np.ndarray:
    """Positions that put equal non-negative integer codes together, keeping the input order among equals. numpy's
    stable sort is a radix sort on 16-bit keys: ~10x cheaper than a stable polars sort of a million rows."""
    values = codes.to_numpy()
    narrow = values.astype(np.uint16) if len(values) and values.max() < 2**16 else values
    return np.argsort(narrow, kind="stable")
