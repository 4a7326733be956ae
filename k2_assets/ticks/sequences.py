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

from k2_assets.ticks.gaps import GAP, GAP_SCHEMA, GROUP, RESET, SequenceRows, empty_gaps, fills, resets
from k2_assets.ticks.ordering import Grouped, dense_codes

__all__ = [
    "GAP",
    "GAP_SCHEMA",
    "RESET",
    "STATE_SCHEMA",
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


def _grouped(received: pl.DataFrame) -> Grouped:
    """The rows grouped per (exchange, symbol) in arrival order. validate() delivers them so (then this is a check);
    other callers' rows are sorted here."""
    if "_g" in received.columns:
        codes = received["_g"].cast(pl.Int64).to_numpy()
    else:
        key = pl.concat_str([pl.col(c).cast(pl.String) for c in GROUP], separator="\x1f")
        codes = dense_codes(received.select(key.cast(pl.Categorical).to_physical()).to_series())[0]
    arrival = received["arrival"].cast(pl.Int64).to_numpy()
    rows = Grouped.already(codes)
    if rows is not None and bool((np.diff(arrival)[rows.codes[1:] == rows.codes[:-1]] > 0).all()):
        return rows
    by_arrival = np.argsort(arrival, kind="stable")
    regroup = Grouped.of(codes[by_arrival])
    return Grouped(by_arrival[regroup.order], regroup.codes)


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
    def of(cls, received: pl.DataFrame, heads: np.ndarray, state: pl.DataFrame) -> _Before:
        names = received.select(GROUP)[heads].cast(dict.fromkeys(GROUP, pl.String))
        names = names.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_g"))
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
    received: pl.DataFrame,
    state: pl.DataFrame | None = None,
    open_gaps: pl.DataFrame | None = None,
    *,
    now_us: int,
    batch_id: str,
    raw_snapshot_id: int | None = None,
    reset_drop: float = 0.5,
) -> SequenceResult:
    """Gaps, fills, resets and the new state for one batch of `received` ticks (exchange, symbol, sequence,
    exchange_ts, trading_date, price, valid, arrival), given the state and open gaps before it.

    Every per-row step is a shift or a running sum over the rows grouped per symbol in arrival order; only the
    outputs (gaps, resets, fills, one state row per symbol) are built as frames."""
    state = empty_state() if state is None else state.select(list(STATE_SCHEMA)).cast(pl.Schema(STATE_SCHEMA))
    open_gaps = empty_gaps() if open_gaps is None else open_gaps.select(list(GAP_SCHEMA)).cast(pl.Schema(GAP_SCHEMA))
    if received.is_empty():
        return SequenceResult(empty_gaps(), empty_gaps(), state, 0)
    grouped = _grouped(received)
    starts = grouped.starts()
    group = np.cumsum(starts) - 1  # group number of each grouped row
    before = _Before.of(received, grouped.order[starts], state)
    seq = grouped.take(received["sequence"].cast(pl.Int64).to_numpy())
    ts_column = received["exchange_ts"].cast(pl.Int64)
    ts, ts_known = grouped.take(ts_column.fill_null(0).to_numpy()), grouped.take(ts_column.is_not_null().to_numpy())

    # Reset: a drop of more than reset_drop below the previous arrival while the exchange time does not go back.
    heads = np.flatnonzero(starts)  # the state arrays are indexed by group number, i.e. in head order
    prev, prev_known = np.empty_like(seq), np.ones(len(seq), dtype=bool)
    prev[1:], prev[heads], prev_known[heads] = seq[:-1], before.prev, before.prev_known
    prev_ts, prev_ts_known = np.empty_like(ts), np.empty_like(ts_known)
    prev_ts[1:], prev_ts_known[1:] = ts[:-1], ts_known[:-1]
    prev_ts[heads], prev_ts_known[heads] = before.prev_ts, before.prev_ts_known
    reset = prev_known & (seq.astype(np.float64) < prev.astype(np.float64) * (1.0 - reset_drop))
    reset &= ts_known & prev_ts_known & (ts >= prev_ts)
    state_epoch = epoch = before.epoch[group]
    same_epoch: np.ndarray | bool = True
    if reset.any():  # each reset starts a new epoch for the rest of its symbol's rows
        running = np.cumsum(reset)
        epoch = state_epoch + running - (running - reset)[heads][group]
        same_epoch = epoch == state_epoch
    # The highest sequence carried from the state applies while the batch is still in the state's epoch.
    has_base = (before.known & before.top_known)[group] & same_epoch
    base = before.top[group]

    rows = SequenceRows(received, grouped, group, seq, epoch, has_base, base)
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
    candidates = open_gaps.join(before.names, on=GROUP, how="inner")
    filled, matched = fills(below, candidates, now_us)
    new_state = _next_state(rows, reset, starts, before, state, now_us, batch_id)
    return SequenceResult(opened, filled, new_state, below.height - matched)


def _next_state(
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
    valid = rows.grouped.take(rows.received["valid"].fill_null(False).to_numpy())
    valid_at = np.flatnonzero(valid)
    last_valid = np.concatenate(([-1], valid_at))[np.searchsorted(valid_at, ends, side="right")]
    has_valid = pl.Series(last_valid >= heads)
    ts, price = rows.received["exchange_ts"].cast(pl.Int64), rows.received["price"].cast(pl.Int64)
    at_valid = rows.grouped.order[np.maximum(last_valid, 0)]
    per_symbol = pl.DataFrame(
        {
            "_g": np.arange(len(heads)),
            "epoch": rows.epoch[ends],
            "trading_date": pl.Series(rows.day[ends]).cast(pl.Date),
            "_batch_max": highest,
            "last_arrival_sequence": rows.seq[ends],
            "last_arrival_ts": ts.gather(rows.grouped.order[ends]),
            "_price": pl.select(pl.when(has_valid).then(price.gather(at_valid))).to_series(),
            "_price_ts": pl.select(pl.when(has_valid).then(ts.gather(at_valid))).to_series(),
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
