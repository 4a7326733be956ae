"""Sequence gaps, fills and resets per (exchange, symbol), with the state carried from batch to batch."""

from __future__ import annotations

import datetime as dt

import polars as pl

from k2_assets.ticks.sequences import GAP, RESET, SequenceResult, track_sequences

DAY = dt.date(2026, 11, 25)
SECOND = 1_000_000


def received(sequences: list[int], *, symbol: str = "BHP", ts: list[int] | None = None) -> pl.DataFrame:
    """Ticks in arrival order; by default each tick's exchange time is its sequence in seconds (a normal feed)."""
    n = len(sequences)
    return pl.DataFrame(
        {
            "exchange": ["ASX"] * n,
            "symbol": [symbol] * n,
            "sequence": sequences,
            "exchange_ts": ts if ts is not None else [s * SECOND for s in sequences],
            "trading_date": [DAY] * n,
            "price": [45_000_000] * n,
            "valid": [True] * n,
            "arrival": list(range(n)),
        }
    )


def run(
    batch: pl.DataFrame, before: SequenceResult | None = None, open_gaps: pl.DataFrame | None = None
) -> SequenceResult:
    state = before.state if before is not None else None
    gaps = open_gaps if open_gaps is not None else (before.opened if before is not None else None)
    return track_sequences(batch, state, gaps, now_us=99, batch_id="b")


def gap_ranges(result: SequenceResult) -> list[tuple[int, int]]:
    gaps = result.opened.filter(pl.col("kind") == GAP)
    return list(zip(gaps["first_missing"].to_list(), gaps["last_missing"].to_list(), strict=True))


def test_a_gap_records_expected_received_and_the_missing_range() -> None:
    result = run(received([1, 2, 3, 7, 8]))
    gap = result.opened.row(0, named=True)
    assert (gap["kind"], gap["expected"], gap["received"]) == (GAP, 4, 7)
    assert (gap["first_missing"], gap["last_missing"], gap["missing_count"]) == (4, 6, 3)
    assert gap["filled_at"] is None and gap["filled_count"] == 0
    assert result.gaps_opened == 1 and result.missing_sequences == 3 and result.resets == 0


def test_out_of_order_inside_one_batch_opens_no_gap() -> None:
    result = run(received([1, 3, 2, 5, 4, 6], ts=[1, 3, 2, 5, 4, 6]))
    assert result.opened.is_empty()


def test_the_highest_sequence_carries_across_batches() -> None:
    first = run(received([1, 2, 3]))
    second = run(received([4, 5, 9]), first)
    assert gap_ranges(second) == [(6, 8)]
    assert second.state["last_sequence"].to_list() == [9]


def test_a_late_arrival_in_a_later_batch_closes_the_gap() -> None:
    first = run(received([1, 2, 5, 6]))
    assert gap_ranges(first) == [(3, 4)]
    second = run(received([7, 3, 4, 8]), first)
    assert second.opened.is_empty()
    filled = second.filled.row(0, named=True)
    assert filled["gap_id"] == first.opened["gap_id"][0]
    assert (filled["filled_count"], filled["filled_at"]) == (2, 99)
    assert second.gaps_closed == 1


def test_a_partial_fill_counts_but_leaves_the_gap_open() -> None:
    first = run(received([1, 5]))
    second = run(received([3, 6]), first)
    filled = second.filled.row(0, named=True)
    assert (filled["filled_count"], filled["filled_at"]) == (1, None)
    assert second.gaps_closed == 0


def test_a_drop_by_more_than_half_is_a_reset_not_a_gap() -> None:
    first = run(received([100, 101, 102]))
    # The market reopens: sequence restarts at 1 with a later exchange time.
    second = run(received([1, 2, 3], ts=[200 * SECOND, 201 * SECOND, 202 * SECOND]), first)
    assert second.resets == 1 and second.gaps_opened == 0
    reset = second.opened.row(0, named=True)
    assert (reset["kind"], reset["expected"], reset["received"], reset["epoch"]) == (RESET, 103, 1, 1)
    assert second.state.select("epoch", "last_sequence").row(0) == (1, 3)
    # After the reset, holes are measured within the new epoch.
    third = run(received([4, 8], ts=[203 * SECOND, 208 * SECOND]), second)
    assert gap_ranges(third) == [(5, 7)]


def test_a_drop_of_half_or_less_is_not_a_reset() -> None:
    result = run(received([10, 11, 12, 6], ts=[10, 11, 12, 13]))
    assert result.resets == 0


def test_a_late_tick_with_its_old_exchange_time_is_not_a_reset() -> None:
    first = run(received([1, 2, 4, 5, 6, 7, 8, 9, 10]))
    # Sequence 3 arrives late: far below half of 10, but stamped before 10 by the exchange.
    second = run(received([3, 11]), first)
    assert second.resets == 0
    assert second.gaps_closed == 1


def test_gaps_of_an_old_epoch_are_not_filled_by_the_new_one() -> None:
    first = run(received([10, 11, 15]))
    second = run(received([1, 2, 12], ts=[100 * SECOND, 101 * SECOND, 102 * SECOND]), first)
    assert second.resets == 1
    assert second.filled.is_empty()


def test_symbols_are_tracked_independently_and_untouched_state_is_kept() -> None:
    first = run(pl.concat([received([1, 2], symbol="BHP"), received([1, 3], symbol="CBA")]))
    assert first.opened["symbol"].to_list() == ["CBA"]
    second = run(received([3], symbol="BHP"), first)
    assert second.state.sort("symbol")["symbol"].to_list() == ["BHP", "CBA"]
    assert second.state.filter(pl.col("symbol") == "CBA")["last_sequence"].to_list() == [3]


def test_the_last_valid_price_is_carried_for_the_anomaly_check() -> None:
    batch = received([1, 2, 3]).with_columns(
        pl.Series("price", [45_000_000, 46_000_000, 60_000_000]), pl.Series("valid", [True, True, False])
    )
    state = run(batch).state.row(0, named=True)
    assert state["last_price"] == 46_000_000 and state["last_price_ts"] == 2 * SECOND


def test_recomputing_a_batch_gives_the_same_gap_ids() -> None:
    batch = received([1, 4, 9])
    assert run(batch).opened["gap_id"].to_list() == run(batch).opened["gap_id"].to_list()
    assert run(batch).opened["gap_id"].n_unique() == 2
