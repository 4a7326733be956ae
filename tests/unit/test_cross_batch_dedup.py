"""Deduplication on (exchange, symbol, sequence) within a trading date, inside a batch and against ticks already
published by earlier batches."""

from __future__ import annotations

import datetime as dt

import polars as pl

from k2_assets.ticks.validate import NEGATIVE_VOLUME, empty_keys, validate
from tests.unit.test_validate import raw

# 2026-11-25 01:00 UTC is 12:00 in Sydney: trading date 2026-11-25.
NOON_SYDNEY = int(dt.datetime(2026, 11, 25, 1, 0, tzinfo=dt.UTC).timestamp() * 1_000_000)
DAY = dt.date(2026, 11, 25)


def batch(sequences: list[int], **overrides: list[object]) -> pl.DataFrame:
    n = len(sequences)
    return raw(sequence=sequences, exchange_ts=[NOON_SYDNEY + i * 1_000_000 for i in range(n)], **overrides)


def seen(sequences: list[int], day: dt.date = DAY, symbol: str = "BHP") -> pl.DataFrame:
    return pl.DataFrame(
        {"exchange": "ASX", "symbol": symbol, "trading_date": day, "sequence": sequences},
        schema=empty_keys().schema,
    )


def test_rows_already_published_by_an_earlier_batch_are_duplicates() -> None:
    result = validate(batch([3, 4, 5, 6]), seen_keys=seen([1, 2, 3, 4]))
    assert result.ticks["sequence"].to_list() == [5, 6]
    assert result.duplicates["kafka_offset"].to_list() == [0, 1]
    assert result.duplicates_by_kind == {"ticks": 2}


def test_inside_a_batch_the_lowest_offset_wins_and_counts_as_a_batch_duplicate() -> None:
    result = validate(batch([7, 7, 8], price=[45_000_000, 45_100_000, 45_000_000]), seen_keys=seen([1]))
    assert result.ticks.select("sequence", "kafka_offset").rows() == [(7, 0), (8, 2)]
    assert result.duplicates_by_kind == {"batch": 1}


def test_the_same_sequence_on_another_trading_date_is_not_a_duplicate() -> None:
    result = validate(batch([1, 2]), seen_keys=seen([1, 2], day=DAY - dt.timedelta(days=1)))
    assert result.ticks["sequence"].to_list() == [1, 2]
    assert result.duplicates.is_empty()


def test_another_symbols_keys_do_not_count() -> None:
    result = validate(batch([1, 2]), seen_keys=seen([1, 2], symbol="CBA"))
    assert result.duplicates.is_empty()


def test_a_quarantined_row_is_never_a_duplicate_of_a_published_one() -> None:
    # A corrupted retransmission is quarantined for what is wrong with it, not silently dropped as a duplicate.
    result = validate(batch([1, 2], volume=[100, -5]), seen_keys=seen([2]))
    assert result.quarantine["reasons"].to_list() == [[NEGATIVE_VOLUME]]
    assert result.duplicates.is_empty()


def test_every_raw_row_is_published_quarantined_or_a_counted_duplicate() -> None:
    frame = batch([1, 2, 2, 3, 4, 5, 6], volume=[100, 100, 100, -1, 100, 100, 100])
    result = validate(frame, seen_keys=seen([4, 5]))
    outcomes = (
        result.ticks["kafka_offset"].to_list()
        + result.quarantine["kafka_offset"].to_list()
        + result.duplicates["kafka_offset"].to_list()
    )
    assert sorted(outcomes) == frame["kafka_offset"].to_list()
    assert result.ticks["sequence"].to_list() == [1, 2, 6]
    assert result.duplicates_by_kind == {"batch": 1, "ticks": 2}


def test_published_keys_match_on_the_packed_and_the_fallback_path_alike() -> None:
    # 2**62 apart, the batch's sequences no longer pack next to the symbol code and date: the join path decides.
    # Published keys outside the batch's range (sequence 1, another day, another symbol) never match.
    for big in (50, 2**62):
        published = pl.concat([seen([1, 3, big]), seen([3], day=dt.date(2026, 11, 24)), seen([5], symbol="CBA")])
        result = validate(batch([3, 5, big]), seen_keys=published)
        assert result.ticks["sequence"].to_list() == [5], big
        assert result.duplicates["kafka_offset"].to_list() == [0, 2]
