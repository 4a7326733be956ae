"""Gaps, resets and fills of one batch's sequences, over the rows grouped per symbol in arrival order (see
sequences.py for the definitions)."""

from __future__ import annotations

import numpy as np
import polars as pl

from k2_assets.ticks.kernels import sequence_steps
from k2_assets.ticks.received import GROUP, Received

GAP = "gap"
RESET = "reset"

GAP_SCHEMA: dict[str, pl.DataType] = {
    "gap_id": pl.String(),
    "kind": pl.String(),
    "exchange": pl.String(),
    "symbol": pl.String(),
    "epoch": pl.Int64(),
    "trading_date": pl.Date(),
    "expected": pl.Int64(),
    "received": pl.Int64(),
    "first_missing": pl.Int64(),
    "last_missing": pl.Int64(),
    "missing_count": pl.Int64(),
    "filled_count": pl.Int64(),
    "detected_at": pl.Int64(),
    "filled_at": pl.Int64(),
    "batch_id": pl.String(),
    "raw_snapshot_id": pl.Int64(),
}


def empty_gaps() -> pl.DataFrame:
    return pl.DataFrame(schema=GAP_SCHEMA)


def gap_id(last: pl.Expr) -> pl.Expr:
    """Stable id of a gap or reset: the same batch recomputed gives the same ids."""
    parts = [pl.col("exchange"), pl.col("symbol"), pl.col("trading_date"), pl.col("epoch"), last]
    return pl.concat_str([p.cast(pl.String) for p in parts], separator="|")


class SequenceRows:
    """The received rows (grouped per symbol in arrival order), each with its epoch and the highest sequence carried
    from the state for that epoch (`base`, where `has_base`), and what one walk over their distinct keys in
    ascending order finds (kernels.sequence_steps): the rows that open a gap and the late arrivals."""

    def __init__(self, received: Received, epoch: np.ndarray, has_base: np.ndarray, base: np.ndarray) -> None:
        self.group, self.seq, self.day, self.epoch = received.group, received.seq, received.day, epoch
        group, seq, n = self.group, self.seq, received.height
        # Feeds deliver sequences ascending, so the grouped rows usually are sorted already: checked, and only the
        # (symbol, epoch) segments with a late arrival are sorted.
        segment_start = np.ones(n, dtype=bool)
        segment_start[1:] = (group[1:] != group[:-1]) | (epoch[1:] != epoch[:-1])
        drops = np.flatnonzero((seq[1:] < seq[:-1]) & ~segment_start[1:]) + 1
        order = np.arange(n) if not len(drops) else _sorted_segments(segment_start, seq, drops)
        self.gap_at, self.gap_prev, self.below_at = sequence_steps(group, epoch, seq, has_base, base, order)

    def gaps(self, names: pl.DataFrame, stamp: list[pl.Expr]) -> pl.DataFrame:
        """Within an epoch, every hole between consecutive distinct sequences above the carried highest one."""
        at = self.gap_at
        frame = pl.DataFrame(
            {
                "_g": self.group[at],
                "epoch": self.epoch[at],
                "trading_date": pl.Series(self.day[at], dtype=pl.Int32).cast(pl.Date),
                "_prev_seq": self.gap_prev,
                "sequence": self.seq[at],
            }
        )
        return frame.join(names, on="_g", how="left").select(
            gap_id(pl.col("_prev_seq") + 1).alias("gap_id"),
            pl.lit(GAP).alias("kind"),
            *GROUP,
            "epoch",
            "trading_date",
            (pl.col("_prev_seq") + 1).alias("expected"),
            pl.col("sequence").alias("received"),
            (pl.col("_prev_seq") + 1).alias("first_missing"),
            (pl.col("sequence") - 1).alias("last_missing"),
            (pl.col("sequence") - pl.col("_prev_seq") - 1).alias("missing_count"),
            pl.lit(0, pl.Int64).alias("filled_count"),
            *stamp,
            pl.lit(None, pl.Int64).alias("filled_at"),
        )

    def distinct_below(self) -> pl.DataFrame:
        """(_g, epoch, sequence) of distinct sequences below the carried highest one: candidates to fill a gap."""
        at = self.below_at
        return pl.DataFrame({"_g": self.group[at], "epoch": self.epoch[at], "sequence": self.seq[at]})


def resets(
    rows: SequenceRows, reset: np.ndarray, names: pl.DataFrame, carried: pl.DataFrame, stamp: list[pl.Expr]
) -> pl.DataFrame:
    """The reset rows, each with the highest sequence of the epoch it leaves (from the batch, or from the state if
    that epoch started before it): windows over the rows of the few symbols that reset, not the whole batch.
    `carried` has the state's epoch and highest sequence per group (_g, _s_epoch, _s_max)."""
    hit = np.zeros(len(names), dtype=bool)
    hit[rows.group[reset]] = True
    touched = hit[rows.group]
    frame = pl.DataFrame(
        {
            "_g": rows.group[touched],
            "epoch": rows.epoch[touched],
            "sequence": rows.seq[touched],
            "trading_date": pl.Series(rows.day[touched], dtype=pl.Int32).cast(pl.Date),
            "_reset": reset[touched],
        }
    ).join(carried, on="_g", how="left", maintain_order="left")
    left = frame.with_columns(
        pl.max_horizontal(
            pl.col("sequence").cum_max().over("_g", "epoch").shift(1).over("_g"),
            pl.when(pl.col("epoch") - 1 == pl.col("_s_epoch")).then(pl.col("_s_max")),
        ).alias("_left_max")
    ).filter(pl.col("_reset"))
    return left.join(names, on="_g", how="left").select(
        gap_id(pl.lit(RESET)).alias("gap_id"),
        pl.lit(RESET).alias("kind"),
        *GROUP,
        "epoch",
        "trading_date",
        (pl.col("_left_max") + 1).alias("expected"),
        pl.col("sequence").alias("received"),
        pl.lit(None, pl.Int64).alias("first_missing"),
        pl.lit(None, pl.Int64).alias("last_missing"),
        pl.lit(0, pl.Int64).alias("missing_count"),
        pl.lit(0, pl.Int64).alias("filled_count"),
        *stamp,
        pl.lit(None, pl.Int64).alias("filled_at"),
    )


def fills(candidates: pl.DataFrame, open_gaps: pl.DataFrame, now_us: int) -> tuple[pl.DataFrame, int]:
    """Open gaps hit by late sequences, with their filled_count and filled_at updated; and how many hit one."""
    gaps = open_gaps.filter((pl.col("kind") == GAP) & pl.col("filled_at").is_null())
    if candidates.is_empty() or gaps.is_empty():
        return empty_gaps(), 0
    # Gaps of one symbol and epoch never overlap, so the gap holding a sequence is the one with the greatest
    # first_missing at or below it (an as-of join), if the sequence is also at or below its last_missing.
    matched = (
        candidates.select("_g", "epoch", "sequence")
        .sort("sequence")
        .join_asof(
            gaps.select("_g", "epoch", "first_missing", "last_missing", "gap_id").sort("first_missing"),
            left_on="sequence",
            right_on="first_missing",
            by=["_g", "epoch"],
            strategy="backward",
            check_sortedness=False,  # sorted by first_missing within every `by` group, as the join needs
        )
        .filter(pl.col("gap_id").is_not_null() & (pl.col("sequence") <= pl.col("last_missing")))
    )
    counts = matched.group_by("gap_id").agg(pl.col("sequence").n_unique().cast(pl.Int64).alias("_new"))
    updated = (
        gaps.join(counts, on="gap_id", how="inner")
        .with_columns(
            pl.min_horizontal(pl.col("filled_count") + pl.col("_new"), pl.col("missing_count")).alias("filled_count")
        )
        .with_columns(
            pl.when(pl.col("filled_count") >= pl.col("missing_count"))
            .then(pl.lit(now_us, pl.Int64))
            .otherwise(None)
            .alias("filled_at")
        )
        .select(list(GAP_SCHEMA))
        .sort(*GROUP, "epoch", "first_missing")
    )
    return updated, matched.height


def _sorted_segments(segment_start: np.ndarray, seq: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """An order of the rows that sorts each segment holding a drop (`drops`: positions whose sequence is below its
    predecessor's in the same segment) by sequence, stably, and leaves every other row where it is. Segments are
    contiguous, so sorting the affected rows by (segment, sequence) keeps each inside its own block."""
    segment = np.cumsum(segment_start) - 1
    affected = np.zeros(int(segment[-1]) + 1, dtype=bool)
    affected[segment[drops]] = True
    rows = np.flatnonzero(affected[segment])
    keys = pl.DataFrame({"segment": segment[rows], "seq": seq[rows]})
    within = keys.select(pl.arg_sort_by("segment", "seq", maintain_order=True)).to_series().to_numpy()
    order = np.arange(len(seq))
    order[rows] = rows[within]
    return order
