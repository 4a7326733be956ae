"""The rows the sequence tracker sees, grouped per (exchange, symbol) in arrival order, as numpy arrays.

validate() hands them over from its own grouped arrays: no frame of a million rows, no symbol string per row (the
names of the few groups sit in a small table). Any other caller builds them from a frame (`Received.of_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from k2_assets.ticks.ordering import Grouped, group_codes

GROUP = ["exchange", "symbol"]
RECEIVED_COLUMNS = ["exchange", "symbol", "sequence", "exchange_ts", "trading_date", "price", "valid", "arrival"]


@dataclass(frozen=True)
class Received:
    """Every decoded row with a key that is not a duplicate, valid or not, grouped per symbol in arrival order."""

    names: pl.DataFrame  # exchange, symbol (strings): row k names group k
    group: np.ndarray  # group number of each row: 0, 0, ..., 1, ... (non-decreasing)
    seq: np.ndarray
    day: np.ndarray  # trading date: days since the epoch (int32)
    valid: np.ndarray
    arrival: np.ndarray  # position of the row in its batch's arrival order
    # Exchange time and price are read at a few rows per symbol only (resets, each symbol's last tick and last valid
    # one), so they stay where they are: `source` is each row's position in these two columns.
    source: np.ndarray
    source_ts: pl.Series
    source_price: pl.Series

    def ts_at(self, rows: np.ndarray) -> pl.Series:
        """exchange_ts of the given rows (null where unknown)."""
        return self.source_ts.gather(self.source[rows])

    def price_at(self, rows: np.ndarray) -> pl.Series:
        """price of the given rows (null where the tick had none)."""
        return self.source_price.gather(self.source[rows])

    @property
    def height(self) -> int:
        return len(self.seq)

    def starts(self) -> np.ndarray:
        """True at the first row of each group."""
        out = np.ones(self.height, dtype=bool)
        out[1:] = self.group[1:] != self.group[:-1]
        return out

    @classmethod
    def of_frame(cls, frame: pl.DataFrame) -> Received:
        """From a frame of RECEIVED_COLUMNS in any row order (rows without an exchange or a symbol: none)."""
        codes = group_codes(frame, pl.concat_str([pl.col(c).cast(pl.String) for c in GROUP], separator="\x1f"))
        by_arrival = np.argsort(frame["arrival"].cast(pl.Int64).to_numpy(), kind="stable")
        regroup = Grouped.of(codes[by_arrival])
        order = by_arrival[regroup.order]
        rows = frame[order]
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = regroup.codes[1:] != regroup.codes[:-1]
        return cls(
            names=rows.select(pl.col(GROUP).cast(pl.String)).filter(pl.Series(starts)),
            group=np.cumsum(starts) - 1,
            seq=rows["sequence"].cast(pl.Int64).to_numpy(),
            day=rows["trading_date"].cast(pl.Int32).fill_null(0).to_numpy(),
            valid=rows["valid"].fill_null(False).to_numpy(),
            arrival=rows["arrival"].cast(pl.Int64).to_numpy(),
            source=np.arange(len(order)),
            source_ts=rows["exchange_ts"].cast(pl.Int64),
            source_price=rows["price"].cast(pl.Int64),
        )

    def frame(self) -> pl.DataFrame:
        """RECEIVED_COLUMNS, one row per received tick in this (grouped) order: for reading, not for the tracker."""
        names = self.names[self.group]
        return pl.DataFrame(
            {
                "exchange": names["exchange"],
                "symbol": names["symbol"],
                "sequence": self.seq,
                "exchange_ts": self.ts_at(np.arange(self.height)),
                "trading_date": pl.Series(self.day, dtype=pl.Int32).cast(pl.Date),
                "price": self.price_at(np.arange(self.height)),
                "valid": self.valid,
                "arrival": self.arrival,
            }
        )
