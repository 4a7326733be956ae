"""Duplicate keys (group code, trading date, sequence) over rows grouped per symbol in arrival order (ordering.
Grouped): inside the batch (keep the first arrival) and against keys an earlier batch published.

A hash of a million keys costs ~60 ms. Feeds deliver each symbol's sequences mostly ascending, so a running maximum
over the grouped rows (one linear pass) already proves almost every row a first occurrence; only the few rows at
or below their group's running maximum, and the rows sharing their keys, are hashed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

_INT63 = 2**63


@dataclass(frozen=True)
class KeyPacker:
    """(group, day, sequence) as one int64, exact (no collisions) within the bounds of the rows it was made for.
    Packed keys increase with the group code: keys of a later group are all greater."""

    days: int
    seqs: int
    d0: int
    s0: int
    top: int  # highest group code

    @classmethod
    def of(cls, group: np.ndarray, day: np.ndarray, seq: np.ndarray) -> KeyPacker | None:
        """None when there are no rows or the ranges do not fit in 63 bits."""
        if not len(group):
            return None
        d0, d1, s0, s1 = int(day.min()), int(day.max()), int(seq.min()), int(seq.max())
        top, days, seqs = int(group.max()), d1 - d0 + 1, s1 - s0 + 1
        if (top + 1) * days * seqs >= _INT63:
            return None
        return cls(days, seqs, d0, s0, top)

    def pack(self, group: np.ndarray, day: np.ndarray, seq: np.ndarray) -> np.ndarray:
        return (group.astype(np.int64) * self.days + (day - self.d0)) * self.seqs + (seq - self.s0)

    def inside(self, group: np.ndarray, day: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """Rows (of another set of keys) that may be packed: within the bounds this packer was made for."""
        return (
            (group >= 0)
            & (group <= self.top)
            & (day >= self.d0)
            & (day < self.d0 + self.days)
            & (seq >= self.s0)
            & (seq < self.s0 + self.seqs)
        )


@dataclass(frozen=True)
class Keys:
    """The keys of rows grouped per symbol (codes non-decreasing), arrival order inside a group: packed into one
    int64 each when they fit, else kept as three columns (a slower, hashed path)."""

    group: np.ndarray
    day: np.ndarray
    seq: np.ndarray
    packer: KeyPacker | None
    packed: np.ndarray

    @classmethod
    def of(cls, group: np.ndarray, day: np.ndarray, seq: np.ndarray) -> Keys:
        packer = KeyPacker.of(group, day, seq)
        packed = packer.pack(group, day, seq) if packer is not None else np.zeros(0, dtype=np.int64)
        return cls(group, day, seq, packer, packed)

    def frame(self, at: np.ndarray | slice = slice(None)) -> pl.DataFrame:
        return pl.DataFrame({"g": self.group[at], "d": self.day[at], "s": self.seq[at]})

    def first_occurrences(self) -> np.ndarray:
        """True for the first arrival of each key."""
        if self.packer is None:
            return self.frame().select(pl.struct("g", "d", "s").is_first_distinct()).to_series().to_numpy()
        keys = self.packed
        first = np.ones(len(keys), dtype=bool)
        running = np.maximum.accumulate(keys)
        first[1:] = keys[1:] > running[:-1]  # above every earlier key of the group (earlier groups' keys are smaller)
        if first.all():
            return first
        # A row at or below the running maximum repeats an earlier key if that key set a new maximum (all of those
        # came before it, and they are ascending: a binary search finds them) or belongs to an earlier such row.
        suspects = np.flatnonzero(~first)
        maxima = keys[first]
        suspect_keys = keys[suspects]
        found = np.searchsorted(maxima, suspect_keys)
        repeats_maximum = maxima[np.minimum(found, len(maxima) - 1)] == suspect_keys
        first[suspects] = ~repeats_maximum & pl.Series(suspect_keys).is_first_distinct().to_numpy()
        return first

    def published_before(self, at: np.ndarray, seen: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """For the rows at positions `at`: True where the key is one of `seen` (group, day, sequence arrays of keys
        already published)."""
        if not len(at) or not len(seen[0]):
            return np.zeros(len(at), dtype=bool)
        if self.packer is None:
            known = pl.DataFrame({"g": seen[0], "d": seen[1], "s": seen[2]}).unique()
            hits = self.frame(at).with_row_index("_i").join(known, on=["g", "d", "s"], how="semi")["_i"].to_numpy()
            out = np.zeros(len(at), dtype=bool)
            out[hits] = True
            return out
        usable = self.packer.inside(*seen)
        wanted = self.packer.pack(seen[0][usable], seen[1][usable], seen[2][usable])
        return pl.Series(self.packed[at]).is_in(pl.Series(wanted).implode()).to_numpy()
