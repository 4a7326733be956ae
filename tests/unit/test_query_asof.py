"""ASOF joins for backtests: each trade sees the last tick at or before it, and only bars that had closed."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import polars as pl

from k2.query import Client
from k2_resources.env import Settings
from tests.unit.query_seed import DAY, seed


def test_trades_join_the_last_closed_bar_and_the_last_tick_known_at_their_time(offline_lakehouse: Settings) -> None:
    seed(offline_lakehouse, n=200)
    trades = pl.DataFrame(
        {
            "symbol": ["BHP", "BHP", "CBA"],
            "ts": [DAY + dt.timedelta(seconds=30), DAY + dt.timedelta(seconds=90), DAY + dt.timedelta(seconds=5.5)],
            'qty "lots"': [1, 2, 3],
        }
    )
    c = Client(offline_lakehouse)
    bars = c.asof_join(trades, "bars_1m").pl()  # ordered by trade time
    # 00:05 and 00:30 are inside the first minute: no bar had closed. 01:30 sees the 23:00 bar (closed at 23:01).
    assert bars["bar_window_start"].to_list() == [None, None, DAY]
    assert bars['qty "lots"'].to_list() == [3, 1, 2]
    ticks = c.asof_join(trades.to_pandas(), "ticks").pl().sort("ts")
    # One tick per second per symbol from 23:00:00 (CBA 1 ms later): 5.5 s sees sequence 6, 30 s sequence 31.
    assert ticks.select("symbol", "tick_sequence").rows() == [("CBA", 6), ("BHP", 31), ("BHP", 91)]
    assert ticks["tick_price"][0] == Decimal("11.06")
