from __future__ import annotations

import datetime as dt

import polars as pl

from k2_assets.bars.ohlcv import bars_1m

MIN = 60_000_000
T0 = 1_795_561_200_000_000  # 2026-11-24 23:00:00 UTC = 2026-11-25 10:00 Sydney


def test_one_minute_bar_matches_a_hand_computed_example() -> None:
    ticks = pl.DataFrame(
        {
            "exchange": ["ASX"] * 5,
            "symbol": ["BHP"] * 5,
            # Arrival order is shuffled: open/close follow exchange time, then sequence on a tie.
            "sequence": [3, 1, 2, 4, 5],
            "exchange_ts": [T0 + 30_000_000, T0 + 1_000_000, T0 + 30_000_000, T0 + 59_999_999, T0 + MIN],
            "price": [45_100_000, 45_000_000, 44_900_000, 45_200_000, 46_000_000],
            "volume": [100, 200, 300, 400, 10],
        }
    )
    bars = bars_1m(ticks, "Australia/Sydney")
    first = bars.row(0, named=True)
    assert first["window_start"] == T0
    assert (first["open"], first["high"], first["low"], first["close"]) == (
        45_000_000,
        45_200_000,
        44_900_000,
        45_200_000,
    )
    assert (first["volume"], first["trade_count"]) == (1_000, 4)
    # (45.0*200 + 44.9*300 + 45.1*100 + 45.2*400) / 1000 = 45.06
    assert first["vwap"] == 45_060_000
    assert (first["first_sequence"], first["last_sequence"]) == (1, 4)
    assert first["trading_date"] == dt.date(2026, 11, 25)
    second = bars.row(1, named=True)
    assert (second["window_start"], second["open"], second["close"], second["trade_count"]) == (
        T0 + MIN,
        46_000_000,
        46_000_000,
        1,
    )


def test_vwap_is_null_for_a_minute_with_zero_volume() -> None:
    ticks = pl.DataFrame(
        {
            "exchange": ["ASX"],
            "symbol": ["X"],
            "sequence": [1],
            "exchange_ts": [T0],
            "price": [1_000_000],
            "volume": [0],
        }
    )
    assert bars_1m(ticks, "Australia/Sydney")["vwap"].to_list() == [None]
