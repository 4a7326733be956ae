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

import polars as pl

from k2_assets.ticks.ordering import stable_group_order

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

    With a `_g` column (an integer code per exchange+symbol, as validate() provides) all per-row work is on that
    code; the symbol names are joined only to the few output rows."""
    state = empty_state() if state is None else state.select(list(STATE_SCHEMA)).cast(pl.Schema(STATE_SCHEMA))
    open_gaps = empty_gaps() if open_gaps is None else open_gaps.select(list(GAP_SCHEMA)).cast(pl.Schema(GAP_SCHEMA))
    if received.is_empty():
        return SequenceResult(empty_gaps(), empty_gaps(), state, 0)
    if "_g" not in received.columns:
        code = pl.concat_str([pl.col(c).cast(pl.String) for c in GROUP], separator="\x1f")
        received = received.with_columns(code.cast(pl.Categorical).to_physical().alias("_g"))
    names = received.select("_g", *GROUP).group_by("_g").first()
    names = names.with_columns([pl.col(c).cast(pl.String) for c in GROUP])
    before = state.select(
        *GROUP,
        pl.col("epoch").alias("_s_epoch"),
        pl.col("last_sequence").alias("_s_max"),
        pl.col("last_arrival_sequence").alias("_s_prev"),
        pl.col("last_arrival_ts").alias("_s_prev_ts"),
        pl.col("last_price").alias("_s_price"),
        pl.col("last_price_ts").alias("_s_price_ts"),
    )
    before = names.join(before, on=GROUP, how="left").drop(GROUP)
    in_arrival_order = received.select(
        "_g", "sequence", "exchange_ts", "trading_date", "price", "valid", "arrival"
    ).sort("arrival")
    by_symbol = in_arrival_order[stable_group_order(in_arrival_order["_g"])]  # arrival order inside each symbol
    rows = by_symbol.join(before, on="_g", how="left", maintain_order="left").with_columns(
        _group_start("_g").alias("_start")
    )
    prev_seq = pl.when(pl.col("_start")).then(pl.col("_s_prev")).otherwise(pl.col("sequence").shift(1))
    prev_ts = pl.when(pl.col("_start")).then(pl.col("_s_prev_ts")).otherwise(pl.col("exchange_ts").shift(1))
    rows = rows.with_columns(prev_seq.alias("_prev"), prev_ts.alias("_prev_ts")).with_columns(
        (
            pl.col("_prev").is_not_null()
            & (pl.col("sequence").cast(pl.Float64) < pl.col("_prev").cast(pl.Float64) * (1.0 - reset_drop))
            & (pl.col("exchange_ts") >= pl.col("_prev_ts"))
        ).alias("_reset")
    )
    # Resets so far within the symbol: a running count over the whole (symbol-sorted) column minus its value where
    # the symbol starts; no per-group window needed.
    running = pl.col("_reset").cast(pl.Int64).cum_sum()
    at_start = pl.when(pl.col("_start")).then(running - pl.col("_reset").cast(pl.Int64)).forward_fill()
    rows = rows.with_columns((pl.col("_s_epoch").fill_null(0) + running - at_start).alias("epoch")).with_columns(
        pl.when(pl.col("epoch") == pl.col("_s_epoch")).then(pl.col("_s_max")).otherwise(None).alias("_base")
    )
    stamp = [pl.lit(now_us, pl.Int64).alias("detected_at"), pl.lit(batch_id).alias("batch_id")]
    stamp.append(pl.lit(raw_snapshot_id, pl.Int64).alias("raw_snapshot_id"))

    resets = (
        _left_max(rows)
        .join(names, on="_g", how="left")
        .select(
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
    )

    # Distinct sequences per (symbol, epoch), sorted: a stable sort keeps the first arrival first among equals.
    distinct = (
        rows.select("_g", "epoch", "sequence", "trading_date", "_base")
        .sort("_g", "epoch", "sequence", maintain_order=True)
        .filter(_group_start("_g", "epoch", "sequence"))
    )
    above = distinct.filter(pl.col("_base").is_null() | (pl.col("sequence") > pl.col("_base")))
    above = above.with_columns(
        pl.when(_group_start("_g", "epoch"))
        .then(pl.col("_base"))
        .otherwise(pl.col("sequence").shift(1))
        .alias("_prev_seq")
    )
    gaps = (
        above.filter(pl.col("sequence") - pl.col("_prev_seq") > 1)
        .join(names, on="_g", how="left")
        .select(
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
    )
    opened = (
        pl.concat([gaps.select(list(GAP_SCHEMA)), resets.select(list(GAP_SCHEMA))])
        .cast(pl.Schema(GAP_SCHEMA))
        .sort(*GROUP, "epoch", "received")
    )

    below = distinct.filter(pl.col("_base").is_not_null() & (pl.col("sequence") < pl.col("_base")))
    filled, matched = _fills(below, open_gaps.join(names, on=GROUP, how="inner"), now_us)
    new_state = _next_state(rows, names, state, now_us, batch_id)
    return SequenceResult(opened, filled, new_state, below.height - matched)


def _left_max(rows: pl.DataFrame) -> pl.DataFrame:
    """The reset rows, each with the highest sequence of the epoch it leaves (from the batch, or from the state if
    that epoch started before it): windows over the few symbols that reset, not the whole batch."""
    resets = rows.filter(pl.col("_reset"))
    if resets.is_empty():
        return resets.with_columns(pl.lit(None, pl.Int64).alias("_left_max"))
    touched = rows.filter(pl.col("_g").is_in(resets["_g"].unique().implode()))
    return touched.with_columns(
        pl.max_horizontal(
            pl.col("sequence").cum_max().over("_g", "epoch").shift(1).over("_g"),
            pl.when(pl.col("epoch") - 1 == pl.col("_s_epoch")).then(pl.col("_s_max")),
        ).alias("_left_max")
    ).filter(pl.col("_reset"))


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
    rows: pl.DataFrame, names: pl.DataFrame, state: pl.DataFrame, now_us: int, batch_id: str
) -> pl.DataFrame:
    last_epoch = pl.col("epoch").last()
    per_symbol = rows.group_by("_g", maintain_order=True).agg(
        last_epoch.alias("epoch"),
        pl.col("trading_date").last(),
        pl.col("sequence").filter(pl.col("epoch") == last_epoch).max().alias("_batch_max"),
        pl.col("sequence").last().alias("last_arrival_sequence"),
        pl.col("exchange_ts").last().alias("last_arrival_ts"),
        pl.col("price").filter(pl.col("valid")).last().alias("_price"),
        pl.col("exchange_ts").filter(pl.col("valid")).last().alias("_price_ts"),
        pl.col("_s_epoch").first(),
        pl.col("_s_max").first(),
        pl.col("_s_price").first(),
        pl.col("_s_price_ts").first(),
    )
    updated = (
        per_symbol.join(names, on="_g", how="left")
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
            pl.when(pl.col("_price").is_not_null())
            .then(pl.col("_price"))
            .otherwise(pl.col("_s_price"))
            .alias("last_price"),
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
