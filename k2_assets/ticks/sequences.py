"""Sequence tracking per (exchange, symbol): gaps, fills and resets, across batches. polars and numpy, no I/O.

The state carried from one batch to the next (`symbol_state` table) is, per symbol: the current epoch (a counter
that a reset increments), the highest sequence of that epoch, the sequence and exchange time of the last arrival,
and the last valid price (the anomaly reference). Open gaps come from the `sequence_gaps` table.

* Reset: a sequence that drops by more than `reset_drop` (50%) below the previous arrival while its exchange time
  does not go back (a late tick carries its old exchange time; a reset starts afresh). It starts a new epoch and is
  recorded as a `reset`, never as a gap.
* Gap: within an epoch, the batch's distinct sequences above the highest sequence seen before, sorted; every hole
  between consecutive ones (starting from the previous highest) is a gap [first_missing, last_missing]. The order
  inside one micro-batch does not matter: a tick 3 seconds late in the same batch opens nothing.
* Fill: a sequence at or below the previous highest that falls in an open gap of the same epoch; a gap whose every
  missing sequence has arrived gets `filled_at`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from k2_assets.ticks.gaps import GAP, GAP_SCHEMA, RESET, SequenceRows, empty_gaps, fills, resets
from k2_assets.ticks.received import GROUP, Received

__all__ = [
    "GAP",
    "GAP_SCHEMA",
    "RESET",
    "STATE_SCHEMA",
    "Received",
    "SequenceResult",
    "empty_gaps",
    "empty_state",
    "track_sequences",
]

STATE_SCHEMA: dict[str, pl.DataType] = {
    "exchange": pl.String(),
    "symbol": pl.String(),
    "epoch": pl.Int64(),
    "trading_date": pl.Date(),
    "last_sequence": pl.Int64(),
    "last_arrival_sequence": pl.Int64(),
    "last_arrival_ts": pl.Int64(),
    "last_price": pl.Int64(),
    "last_price_ts": pl.Int64(),
    "updated_at": pl.Int64(),
    "batch_id": pl.String(),
}


@dataclass(frozen=True)
class SequenceResult:
    opened: pl.DataFrame  # GAP_SCHEMA rows: new gaps and resets
    filled: pl.DataFrame  # GAP_SCHEMA rows: open gaps that received fills, with their new filled_count/filled_at
    state: pl.DataFrame  # STATE_SCHEMA: the complete state after this batch (untouched symbols included)
    late_arrivals: int  # sequences at or below the previous highest that filled no open gap

    @property
    def gaps_opened(self) -> int:
        return self.opened.filter(pl.col("kind") == GAP).height

    @property
    def missing_sequences(self) -> int:
        return int(self.opened.filter(pl.col("kind") == GAP)["missing_count"].sum() or 0)

    @property
    def resets(self) -> int:
        return self.opened.filter(pl.col("kind") == RESET).height

    @property
    def gaps_closed(self) -> int:
        return self.filled.filter(pl.col("filled_at").is_not_null()).height


def empty_state() -> pl.DataFrame:
    return pl.DataFrame(schema=STATE_SCHEMA)


@dataclass(frozen=True)
class _Before:
    """The carried state of each group of the batch, as arrays indexed by group number (0.. in grouped order)."""

    names: pl.DataFrame  # _g (group number), exchange, symbol
    carried: pl.DataFrame  # _g, _s_epoch, _s_max: the state's epoch and its highest sequence (null: no state)
    known: np.ndarray  # the symbol has a state
    epoch: np.ndarray
    top: np.ndarray  # highest sequence of that epoch
    top_known: np.ndarray
    prev: np.ndarray  # sequence and exchange time of the last arrival
    prev_known: np.ndarray
    prev_ts: np.ndarray
    prev_ts_known: np.ndarray

    @classmethod
    def of(cls, received: Received, state: pl.DataFrame) -> _Before:
        names = received.names.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_g"))
        joined = names.join(state.drop("trading_date"), on=GROUP, how="left", maintain_order="left")

        def values(column: str) -> tuple[np.ndarray, np.ndarray]:
            series = joined[column]
            return series.fill_null(0).to_numpy(), series.is_not_null().to_numpy()

        epoch, known = values("epoch")
        top, top_known = values("last_sequence")
        prev, prev_known = values("last_arrival_sequence")
        prev_ts, prev_ts_known = values("last_arrival_ts")
        carried = joined.select("_g", pl.col("epoch").alias("_s_epoch"), pl.col("last_sequence").alias("_s_max"))
        return cls(names, carried, known, epoch, top, top_known, prev, prev_known, prev_ts, prev_ts_known)


def track_sequences(
    received: Received | pl.DataFrame,
    state: pl.DataFrame | None = None,
    open_gaps: pl.DataFrame | None = None,
    *,
    now_us: int,
    batch_id: str,
    raw_snapshot_id: int | None = None,
    reset_drop: float = 0.5,
) -> SequenceResult:
    """Gaps, fills, resets and the new state for one batch of received ticks (validate()'s `Received`, or a frame
    of RECEIVED_COLUMNS in any order), given the state and open gaps before it.

    Every per-row step is a shift, a running sum or one compiled walk over the rows grouped per symbol in arrival
    order; only the outputs (gaps, resets, fills, one state row per symbol) are built as frames."""
    state = empty_state() if state is None else state.select(list(STATE_SCHEMA)).cast(pl.Schema(STATE_SCHEMA))
    open_gaps = empty_gaps() if open_gaps is None else open_gaps.select(list(GAP_SCHEMA)).cast(pl.Schema(GAP_SCHEMA))
    if isinstance(received, pl.DataFrame):
        received = Received.of_frame(received)
    if not received.height:
        return SequenceResult(empty_gaps(), empty_gaps(), state, 0)
    starts = received.starts()
    group, seq = received.group, received.seq
    before = _Before.of(received, state)

    # Reset: a drop of more than reset_drop below the previous arrival while the exchange time does not go back.
    heads = np.flatnonzero(starts)  # the state arrays are indexed by group number, i.e. in head order
    prev, prev_known = np.empty_like(seq), np.ones(len(seq), dtype=bool)
    prev[1:], prev[heads], prev_known[heads] = seq[:-1], before.prev, before.prev_known
    reset = prev_known & (seq.astype(np.float64) < prev.astype(np.float64) * (1.0 - reset_drop))
    candidates = np.flatnonzero(reset)  # few: only these need the exchange times
    if len(candidates):
        ts = received.ts_at(candidates)
        previous = received.ts_at(np.maximum(candidates - 1, 0))
        prev_ts = previous.fill_null(0).to_numpy(writable=True)
        prev_ts_known = previous.is_not_null().to_numpy(writable=True)
        first = starts[candidates]
        prev_ts[first] = before.prev_ts[group[candidates[first]]]
        prev_ts_known[first] = before.prev_ts_known[group[candidates[first]]]
        reset[candidates] = ts.is_not_null().to_numpy() & prev_ts_known & (ts.fill_null(0).to_numpy() >= prev_ts)
    state_epoch = epoch = before.epoch[group]
    same_epoch: np.ndarray | bool = True
    if reset.any():  # each reset starts a new epoch for the rest of its symbol's rows
        running = np.cumsum(reset)
        epoch = state_epoch + running - (running - reset)[heads][group]
        same_epoch = epoch == state_epoch
    # The highest sequence carried from the state applies while the batch is still in the state's epoch.
    has_base = (before.known & before.top_known)[group] & same_epoch
    base = before.top[group]

    rows = SequenceRows(received, epoch, has_base, base)
    stamp = [pl.lit(now_us, pl.Int64).alias("detected_at"), pl.lit(batch_id).alias("batch_id")]
    stamp.append(pl.lit(raw_snapshot_id, pl.Int64).alias("raw_snapshot_id"))
    opened = (
        pl.concat(
            [
                part.select(list(GAP_SCHEMA))
                for part in (rows.gaps(before.names, stamp), resets(rows, reset, before.names, before.carried, stamp))
            ]
        )
        .cast(pl.Schema(GAP_SCHEMA))
        .sort(*GROUP, "epoch", "received")
    )
    below = rows.distinct_below()
    candidates_gaps = open_gaps.join(before.names, on=GROUP, how="inner")
    filled, matched = fills(below, candidates_gaps, now_us)
    new_state = _next_state(received, rows, reset, starts, before, state, now_us, batch_id)
    return SequenceResult(opened, filled, new_state, below.height - matched)


def _next_state(
    received: Received,
    rows: SequenceRows,
    reset: np.ndarray,
    starts: np.ndarray,
    before: _Before,
    state: pl.DataFrame,
    now_us: int,
    batch_id: str,
) -> pl.DataFrame:
    """The state after the batch: per symbol its last epoch, that epoch's highest sequence, the last arrival and
    the last valid price (each group's last row, or last valid row, of the grouped batch)."""
    n = len(rows.seq)
    heads = np.flatnonzero(starts)
    ends = np.append(heads[1:] - 1, n - 1)
    # Epochs only grow inside a symbol: the last epoch's rows are the group's last segment.
    segments = np.flatnonzero(starts | reset)
    highest = np.maximum.reduceat(rows.seq, segments)[np.searchsorted(segments, ends, side="right") - 1]
    valid_at = np.flatnonzero(received.valid)
    last_valid = np.concatenate(([-1], valid_at))[np.searchsorted(valid_at, ends, side="right")]
    has_valid = pl.Series(last_valid >= heads)
    at_valid = np.maximum(last_valid, 0)
    per_symbol = pl.DataFrame(
        {
            "_g": np.arange(len(heads)),
            "epoch": rows.epoch[ends],
            "trading_date": pl.Series(rows.day[ends], dtype=pl.Int32).cast(pl.Date),
            "_batch_max": highest,
            "last_arrival_sequence": rows.seq[ends],
            "last_arrival_ts": received.ts_at(ends),
            "_price": pl.select(pl.when(has_valid).then(received.price_at(at_valid))).to_series(),
            "_price_ts": pl.select(pl.when(has_valid).then(received.ts_at(at_valid))).to_series(),
        }
    )
    carried = state.select(
        *GROUP,
        pl.col("epoch").alias("_s_epoch"),
        pl.col("last_sequence").alias("_s_max"),
        pl.col("last_price").alias("_s_price"),
        pl.col("last_price_ts").alias("_s_price_ts"),
    )
    updated = (
        per_symbol.join(before.names, on="_g", how="left")
        .join(carried, on=GROUP, how="left")
        .select(
            *GROUP,
            "epoch",
            "trading_date",
            pl.when(pl.col("epoch") == pl.col("_s_epoch"))
            .then(pl.max_horizontal("_batch_max", "_s_max"))
            .otherwise(pl.col("_batch_max"))
            .alias("last_sequence"),
            "last_arrival_sequence",
            "last_arrival_ts",
            pl.coalesce("_price", "_s_price").alias("last_price"),
            pl.when(pl.col("_price").is_not_null())
            .then(pl.col("_price_ts"))
            .otherwise(pl.col("_s_price_ts"))
            .alias("last_price_ts"),
            pl.lit(now_us, pl.Int64).alias("updated_at"),
            pl.lit(batch_id).alias("batch_id"),
        )
        .cast(pl.Schema(STATE_SCHEMA))
    )
    untouched = state.join(updated.select(GROUP), on=GROUP, how="anti")
    return pl.concat([untouched, updated]).sort(GROUP)
