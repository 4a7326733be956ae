"""Sequence tracking per (exchange, symbol): gaps, fills and resets, across batches. Pure polars, no I/O.

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

from k2_assets.ticks.ordering import Grouped, dense_codes

GAP = "gap"
RESET = "reset"
GROUP = ["exchange", "symbol"]

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


def empty_gaps() -> pl.DataFrame:
    return pl.DataFrame(schema=GAP_SCHEMA)


def empty_state() -> pl.DataFrame:
    return pl.DataFrame(schema=STATE_SCHEMA)


def _gap_id(last: pl.Expr) -> pl.Expr:
    """Stable id of a gap or reset: the same batch recomputed gives the same ids."""
    parts = [pl.col("exchange"), pl.col("symbol"), pl.col("trading_date"), pl.col("epoch"), last]
    return pl.concat_str([p.cast(pl.String) for p in parts], separator="|")


def _group_start(*columns: str) -> pl.Expr:
    return pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in columns]).fill_null(True)


def _grouped(received: pl.DataFrame) -> tuple[Grouped, np.ndarray]:
    """The rows grouped per (exchange, symbol) in arrival order, and the group id of every input row. validate()
    delivers them so (then this is a check); other callers' rows are sorted here."""
    if "_g" in received.columns:
        codes = received["_g"].cast(pl.Int64).to_numpy()
    else:
        key = pl.concat_str([pl.col(c).cast(pl.String) for c in GROUP], separator="\x1f")
        codes = dense_codes(received.select(key.cast(pl.Categorical).to_physical()).to_series())[0]
    arrival = received["arrival"].cast(pl.Int64).to_numpy()
    rows = Grouped.already(codes)
    if rows is not None and bool((np.diff(arrival)[rows.codes[1:] == rows.codes[:-1]] > 0).all()):
        return rows, codes
    by_arrival = np.argsort(arrival, kind="stable")
    regroup = Grouped.of(codes[by_arrival])
    return Grouped(by_arrival[regroup.order], regroup.codes), codes


@dataclass(frozen=True)
class _Before:
    """The carried state of each group of the batch, as arrays indexed by group number (0.. in grouped order)."""

    names: pl.DataFrame  # _g (group number), exchange, symbol
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
        return cls(names, known, epoch, top, top_known, prev, prev_known, prev_ts, prev_ts_known)


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
    grouped, _ = _grouped(received)
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

    rows = _Rows(received, grouped, group, seq, epoch, has_base, base)
    stamp = [pl.lit(now_us, pl.Int64).alias("detected_at"), pl.lit(batch_id).alias("batch_id")]
    stamp.append(pl.lit(raw_snapshot_id, pl.Int64).alias("raw_snapshot_id"))
    opened = (
        pl.concat(
            [
                part.select(list(GAP_SCHEMA))
                for part in (rows.gaps(before.names, stamp), _resets(rows, reset, before, stamp))
            ]
        )
        .cast(pl.Schema(GAP_SCHEMA))
        .sort(*GROUP, "epoch", "received")
    )
    below = rows.distinct_below()
    candidates = open_gaps.join(before.names, on=GROUP, how="inner")
    filled, matched = _fills(below, candidates, now_us)
    new_state = _next_state(rows, reset, starts, before, state, now_us, batch_id)
    return SequenceResult(opened, filled, new_state, below.height - matched)


class _Rows:
    """The batch grouped per symbol in arrival order (numpy arrays), each row with its epoch and the highest
    sequence carried from the state for that epoch, and the distinct (symbol, epoch, sequence) in ascending order."""

    def __init__(
        self,
        received: pl.DataFrame,
        grouped: Grouped,
        group: np.ndarray,
        seq: np.ndarray,
        epoch: np.ndarray,
        has_base: np.ndarray,
        base: np.ndarray,
    ) -> None:
        self.received, self.grouped, self.group, self.seq, self.epoch = received, grouped, group, seq, epoch
        self.at = grouped.order
        self.has_base, self.base = has_base, base
        self.day = grouped.take(received["trading_date"].cast(pl.Int32).to_numpy())
        n = len(seq)
        # Feeds deliver sequences ascending, so the grouped rows usually are sorted already: checked, not sorted.
        same_segment = (group[1:] == group[:-1]) & (epoch[1:] == epoch[:-1])
        if bool((seq[1:] >= seq[:-1])[same_segment].all()):
            g, e, s, order = group, epoch, seq, None
        else:
            keys = pl.DataFrame({"g": group, "e": epoch, "s": seq})
            order = keys.select(pl.arg_sort_by("g", "e", "s", maintain_order=True)).to_series().to_numpy()
            g, e, s = group[order], epoch[order], seq[order]
        distinct = np.ones(n, dtype=bool)
        distinct[1:] = (g[1:] != g[:-1]) | (e[1:] != e[:-1]) | (s[1:] != s[:-1])
        # The first arrival of each key, keys ascending (a slice, no copies, when that is every row in order).
        self.distinct: np.ndarray | slice = np.flatnonzero(distinct) if order is None else order[distinct]
        if order is None and bool(distinct.all()):
            self.distinct = slice(None)

    def _where(self, mask: np.ndarray) -> np.ndarray:
        """Positions (in the grouped rows) of the distinct keys where `mask` (over the distinct keys) holds."""
        return np.flatnonzero(mask) if isinstance(self.distinct, slice) else self.distinct[mask]

    def gaps(self, names: pl.DataFrame, stamp: list[pl.Expr]) -> pl.DataFrame:
        """Within an epoch, every hole between consecutive distinct sequences above the carried highest one."""
        d = self.distinct
        above = self._where(~self.has_base[d] | (self.seq[d] > self.base[d]))
        g, e, s = self.group[above], self.epoch[above], self.seq[above]
        segment_first = np.ones(len(above), dtype=bool)
        segment_first[1:] = (g[1:] != g[:-1]) | (e[1:] != e[:-1])
        prev, prev_known = np.empty_like(s), np.ones(len(s), dtype=bool)
        prev[1:] = s[:-1]
        prev[segment_first] = self.base[above][segment_first]
        prev_known[segment_first] = self.has_base[above][segment_first]
        gap = prev_known & (s - prev > 1)
        frame = pl.DataFrame(
            {
                "_g": g[gap],
                "epoch": e[gap],
                "trading_date": pl.Series(self.day[above][gap]).cast(pl.Date),
                "_prev_seq": prev[gap],
                "sequence": s[gap],
            }
        )
        return frame.join(names, on="_g", how="left").select(
            _gap_id(pl.col("_prev_seq") + 1).alias("gap_id"),
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
        d = self.distinct
        below = self._where(self.has_base[d] & (self.seq[d] < self.base[d]))
        return pl.DataFrame({"_g": self.group[below], "epoch": self.epoch[below], "sequence": self.seq[below]})


def _resets(rows: _Rows, reset: np.ndarray, before: _Before, stamp: list[pl.Expr]) -> pl.DataFrame:
    """The reset rows, each with the highest sequence of the epoch it leaves (from the batch, or from the state if
    that epoch started before it): windows over the rows of the few symbols that reset, not the whole batch."""
    hit = np.zeros(len(before.names), dtype=bool)
    hit[rows.group[reset]] = True
    touched = hit[rows.group]
    g = rows.group[touched]
    frame = pl.DataFrame(
        {
            "_g": g,
            "epoch": rows.epoch[touched],
            "sequence": rows.seq[touched],
            "trading_date": pl.Series(rows.day[touched]).cast(pl.Date),
            "_reset": reset[touched],
            "_s_epoch": pl.Series(before.epoch[g]).set(pl.Series(~before.known[g]), None),  # type: ignore[arg-type]
            "_s_max": pl.Series(before.top[g]).set(pl.Series(~before.top_known[g]), None),  # type: ignore[arg-type]
        }
    )
    left = frame.with_columns(
        pl.max_horizontal(
            pl.col("sequence").cum_max().over("_g", "epoch").shift(1).over("_g"),
            pl.when(pl.col("epoch") - 1 == pl.col("_s_epoch")).then(pl.col("_s_max")),
        ).alias("_left_max")
    ).filter(pl.col("_reset"))
    return left.join(before.names, on="_g", how="left").select(
        _gap_id(pl.lit(RESET)).alias("gap_id"),
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


def _fills(candidates: pl.DataFrame, open_gaps: pl.DataFrame, now_us: int) -> tuple[pl.DataFrame, int]:
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


def _next_state(
    rows: _Rows,
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
    at_valid = rows.at[np.maximum(last_valid, 0)]
    per_symbol = pl.DataFrame(
        {
            "_g": np.arange(len(heads)),
            "epoch": rows.epoch[ends],
            "trading_date": pl.Series(rows.day[ends]).cast(pl.Date),
            "_batch_max": highest,
            "last_arrival_sequence": rows.seq[ends],
            "last_arrival_ts": ts.gather(rows.at[ends]),
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
