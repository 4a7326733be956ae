"""Revisions, finality and corrections: compare the stored bars of some partitions with their recomputation.

Windows close in event time, per symbol (the stream time of a keyed stream, as in Kafka Streams; ticks are keyed
by symbol, so a symbol's ticks arrive in one Kafka partition, in order): the watermark W of (exchange, symbol) on a
trading day is the exchange_ts of the latest tick K2 has built its bars from, i.e. max(last_ts) of its bars. A
window [start, end) is *open* while W < end + 10 s (allowed lateness; `is_final` = false: the bar may still change
and changes are not restatements) and *final* after. A per-exchange watermark would call every tick of a busy
Kafka partition late as soon as a quieter partition ran ahead. A tick that lands in a final window restates its
bar: revision + 1 and a row in bar_corrections with the old and new values and the ticks that caused it. The
real-time view may show a bar from W >= end + 5 s (grace). The last windows of a symbol's day become final when
the day is settled (a partition run after the close: `closed_days`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from k2_assets.bars.ohlcv import BAR_KEY, STATE_COLUMNS, VALUE_COLUMNS

ALLOWED_LATENESS_US = 10_000_000
GRACE_US = 5_000_000
STORED_EXTRA = ["revision", "computed_at", "source_snapshot_id", "is_final"]


@dataclass(frozen=True)
class Restated:
    rows: pl.DataFrame  # the partitions as they must be stored
    corrections: pl.DataFrame  # bar_corrections rows (without run_id / outbox_id)
    written: int  # bars whose stored row changed (new, restated, updated while open, finalised)
    restated: int  # final bars whose values changed (revision + 1)
    open_bars: int  # bars still open after this write


def stream_time(rows: pl.DataFrame) -> pl.DataFrame:
    """(exchange, symbol, trading_date) -> W: the latest tick time in these bars."""
    return rows.group_by("exchange", "symbol", "trading_date").agg(pl.col("last_ts").max().alias("_w"))


def restate(
    old: pl.DataFrame,
    new: pl.DataFrame,
    *,
    interval: str,
    closed_days: frozenset[tuple[str, dt.date]] = frozenset(),
    now_us: int,
    source_snapshot_id: int | None,
    causes: pl.DataFrame | None = None,
    late_inserts: bool = True,
) -> Restated:
    """`old`: stored rows of some partitions; `new`: the recomputed bar states of exactly those partitions.
    `causes` (exchange, symbol, window_start, sequence): the ticks whose arrival triggered this recomputation, or
    None for a rebuild. `closed_days`: (exchange, trading_date) whose session is over: all their bars are final.
    `late_inserts`: a bar that appears in an already final window is a correction (live path: its ticks came late);
    off for rebuilds, where a bar missing from the table is a backfill, not news."""
    prior = old.select(BAR_KEY + [c for c in STATE_COLUMNS if c not in BAR_KEY] + STORED_EXTRA).rename(
        {c: f"{c}_old" for c in STATE_COLUMNS + STORED_EXTRA if c not in BAR_KEY}
    )
    joined = new.select(STATE_COLUMNS).join(prior, on=BAR_KEY, how="full", coalesce=True)
    before = stream_time(old).rename({"trading_date": "_day", "_w": "_w_before"})
    after = stream_time(new).rename({"trading_date": "_day", "_w": "_w_after"})
    joined = (
        joined.with_columns(pl.coalesce(pl.col("trading_date"), pl.col("trading_date_old")).alias("_day"))
        .join(before, on=["exchange", "symbol", "_day"], how="left")
        .join(after, on=["exchange", "symbol", "_day"], how="left")
    )
    exists_old = pl.col("revision_old").is_not_null()
    exists_new = pl.col("trade_count").is_not_null()
    end = pl.coalesce(pl.col("window_end"), pl.col("window_end_old"))
    day = pl.coalesce(pl.col("trading_date"), pl.col("trading_date_old"))
    closed = pl.lit(False)
    for code, closed_day in closed_days:  # a handful of (exchange, day) pairs, not rows
        closed = closed | ((pl.col("exchange") == code) & (day == closed_day))
    was_final = pl.col("is_final_old").fill_null(False) | (end + ALLOWED_LATENESS_US <= pl.col("_w_before")).fill_null(
        False
    )
    changed = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_old")) for c in VALUE_COLUMNS])
    final_now = (end + ALLOWED_LATENESS_US <= pl.col("_w_after")).fill_null(False)
    is_final = exists_new & (pl.col("is_final_old").fill_null(False) | final_now | closed)
    restatement = was_final & (changed | ~exists_new | (~exists_old & pl.lit(late_inserts)))
    revision = (
        pl.when(~exists_old)
        .then(0)
        .when(changed & was_final)
        .then(pl.col("revision_old") + 1)
        .otherwise(pl.col("revision_old"))
        .cast(pl.Int32)
    )
    value_moved = changed | ~exists_old
    flagged = joined.with_columns(
        exists_old.alias("_exists_old"),
        exists_new.alias("_exists_new"),
        restatement.alias("_restatement"),
        (value_moved | (is_final != pl.col("is_final_old").fill_null(False))).alias("_written"),
        revision.alias("revision"),
        is_final.alias("is_final"),
        pl.when(value_moved).then(pl.lit(now_us)).otherwise(pl.col("computed_at_old")).alias("computed_at"),
        pl.when(value_moved)
        .then(pl.lit(source_snapshot_id, pl.Int64))
        .otherwise(pl.col("source_snapshot_id_old"))
        .alias("source_snapshot_id"),
    )
    rows = flagged.filter(pl.col("_exists_new")).select(STATE_COLUMNS + STORED_EXTRA).sort(BAR_KEY)
    corrections = _corrections(flagged.filter(pl.col("_restatement")), interval, now_us, source_snapshot_id, causes)
    return Restated(
        rows=rows,
        corrections=corrections,
        written=int(flagged["_written"].sum()),
        restated=int(flagged.filter(pl.col("_restatement") & pl.col("_exists_old") & pl.col("_exists_new")).height),
        open_bars=int(rows.filter(~pl.col("is_final")).height),
    )


def _corrections(
    rows: pl.DataFrame, interval: str, now_us: int, source_snapshot_id: int | None, causes: pl.DataFrame | None
) -> pl.DataFrame:
    out = rows.select(
        pl.lit(interval).alias("interval"),
        "exchange",
        "symbol",
        pl.coalesce(pl.col("trading_date"), pl.col("trading_date_old")).alias("trading_date"),
        "window_start",
        pl.col("revision_old").cast(pl.Int32).alias("old_revision"),
        pl.when(pl.col("_exists_new")).then(pl.col("revision")).otherwise(None).cast(pl.Int32).alias("new_revision"),
        *[pl.col(f"{c}_old").alias(f"old_{c}") for c in VALUE_COLUMNS],
        *[pl.col(c).alias(f"new_{c}") for c in VALUE_COLUMNS],
    )
    if causes is not None and not causes.is_empty():
        by_bar = causes.group_by(BAR_KEY).agg(pl.col("sequence").unique().sort().alias("caused_by_sequences"))
        out = out.join(by_bar, on=BAR_KEY, how="left").with_columns(
            pl.col("caused_by_sequences").list.len().cast(pl.Int64).alias("late_ticks"),
            pl.lit("late_ticks").alias("reason"),
        )
    else:
        out = out.with_columns(
            pl.lit(None, pl.List(pl.Int64)).alias("caused_by_sequences"),
            pl.lit(None, pl.Int64).alias("late_ticks"),
            pl.lit("rebuild").alias("reason"),
        )
    return out.with_columns(
        pl.lit(now_us, pl.Int64).alias("corrected_at"), pl.lit(source_snapshot_id, pl.Int64).alias("source_snapshot_id")
    ).sort(["interval", *BAR_KEY])
