"""Duplicate keys (group code, trading date, sequence) over rows grouped per symbol in arrival order (ordering.
Grouped): inside the batch (keep the first arrival) and against keys an earlier batch published.

Hashing a million keys costs ~60 ms. Feeds deliver each symbol's sequences mostly ascending, so one compiled pass
that keeps each symbol's record key proves almost every row a first arrival by a single comparison
(kernels.first_arrivals); published keys are merged with each symbol's rows, both sorted (kernels.keys_in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from k2_assets.ticks.kernels import first_arrivals, keys_in


@dataclass(frozen=True)
class Keys:
    """The keys of rows grouped per symbol (group codes non-decreasing), arrival order inside a group."""

    group: np.ndarray
    day: np.ndarray
    seq: np.ndarray

    def first_occurrences(self) -> np.ndarray:
        """True for the first arrival of each key."""
        first, undecided = first_arrivals(self.group, self.day, self.seq)
        # A late key equal to no record-setting key of its symbol: a repeat only of another such key (few rows).
        at = np.flatnonzero(undecided)
        if len(at):
            late = pl.DataFrame({"g": self.group[at], "d": self.day[at], "s": self.seq[at]})
            first[at] = late.select(pl.struct("g", "d", "s").is_first_distinct()).to_series().to_numpy()
        return first

    def published_before(self, at: np.ndarray, seen: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """For the rows at positions `at` (ascending): True where the key is one of `seen` (group, day, sequence
        arrays of keys already published, any order)."""
        if not len(at) or not len(seen[0]):
            return np.zeros(len(at), dtype=bool)
        group, day, seq = (
            np.asarray(k, dtype=mine.dtype) for k, mine in zip(seen, (self.group, self.day, self.seq), strict=True)
        )
        order = np.lexsort((seq, day, group))
        return keys_in(self.group, self.day, self.seq, at, group[order], day[order], seq[order])
