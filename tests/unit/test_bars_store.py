"""Replacing whole trading days of a bar table: one snapshot, exactly the named days, other days untouched."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from k2_assets.bars.ohlcv import bars_1m
from k2_assets.bars.store import overwrite_days, read_days
from tests.unit.bars_support import MIN, T0, bar_tables

TZ = "Australia/Sydney"
DAY_US = 1440 * MIN
D1, D2, D3 = (("ASX", dt.date(2026, 11, d)) for d in (25, 26, 27))


def day_bars(day_offset: int, price: int) -> pl.DataFrame:
    ticks = pl.DataFrame(
        {
            "exchange": ["ASX"] * 4,
            "symbol": ["BHP", "BHP", "CBA", "CBA"],
            "sequence": [1, 2, 3, 4],
            "exchange_ts": [T0 + day_offset * DAY_US + k * MIN for k in range(4)],
            "price": [price] * 4,
            "volume": [10] * 4,
        }
    )
    return bars_1m(ticks, TZ).with_columns(
        pl.lit(0, pl.Int32).alias("revision"),
        pl.lit(T0, pl.Int64).alias("computed_at"),
        pl.lit(None, pl.Int64).alias("source_snapshot_id"),
        pl.lit(True).alias("is_final"),
    )


def test_overwriting_days_replaces_exactly_those_days_in_one_snapshot(tmp_path: Path) -> None:
    tables = bar_tables(tmp_path)
    table = tables.bars["1m"]
    overwrite_days(table, pl.concat([day_bars(0, 1_000_000), day_bars(1, 2_000_000)]), [D1, D2], {"k": "1"})
    table.refresh()
    snapshots = len(table.snapshots())

    # Replace D2 and add D3; D1 stays as it was.
    overwrite_days(table, pl.concat([day_bars(1, 3_000_000), day_bars(2, 4_000_000)]), [D2, D3], {"k": "2"})
    table.refresh()
    assert len(table.snapshots()) == snapshots + 1
    assert table.current_snapshot().summary.additional_properties["k"] == "2"  # type: ignore[union-attr]
    prices = {d[1]: read_days(table, [d])["open"].unique().to_list() for d in (D1, D2, D3)}
    assert prices == {D1[1]: [1_000_000], D2[1]: [3_000_000], D3[1]: [4_000_000]}
    assert read_days(table, [D1, D2, D3]).height == 12

    # Emptying a day removes its rows and still records the properties.
    overwrite_days(table, day_bars(0, 1).head(0), [D2], {"k": "3"})
    table.refresh()
    assert read_days(table, [D2]).is_empty()
    assert read_days(table, [D1, D3]).height == 8
    assert table.current_snapshot().summary.additional_properties["k"] == "3"  # type: ignore[union-attr]
