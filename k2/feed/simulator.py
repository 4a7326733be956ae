"""A deterministic synthetic exchange feed with optional, precisely recorded faults.

Prices follow geometric Brownian motion per symbol inside the exchange session; everything is generated with numpy
and polars over whole columns. The fault manifest names exactly what was injected so tests can use it as ground
truth.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from k2_resources.exchanges import calendar

# Real ASX tickers with a plausible reference price (AUD) to start the random walk from.
ASX_SYMBOLS: dict[str, float] = {
    "BHP": 45.0,
    "CBA": 150.0,
    "CSL": 250.0,
    "NAB": 38.0,
    "WBC": 32.0,
    "ANZ": 29.0,
    "WES": 75.0,
    "MQG": 210.0,
    "WOW": 33.0,
    "TLS": 4.0,
    "RIO": 120.0,
    "FMG": 19.0,
    "GMG": 33.0,
    "TCL": 13.0,
    "WDS": 24.0,
    "ALL": 65.0,
    "COL": 20.0,
    "STO": 7.0,
    "REA": 240.0,
    "QBE": 20.0,
    "SUN": 19.0,
    "JHX": 40.0,
    "RMD": 37.0,
    "XRO": 160.0,
    "NST": 17.0,
    "ORG": 10.0,
    "BXB": 21.0,
    "IAG": 8.0,
    "S32": 3.2,
    "MIN": 30.0,
    "PLS": 2.5,
    "CPU": 40.0,
    "SHL": 30.0,
    "ASX": 62.0,
    "TWE": 11.0,
    "AMC": 14.0,
    "APA": 8.0,
    "QAN": 10.0,
    "EVN": 6.0,
    "SGP": 5.5,
    "CAR": 36.0,
    "MPL": 4.2,
    "ORI": 17.0,
    "AGL": 10.0,
    "LYC": 7.0,
    "NXT": 16.0,
    "SEK": 26.0,
    "WTC": 80.0,
    "DXS": 7.5,
    "VCX": 2.5,
}
PRICE_SCALE = 1_000_000
TICK_SIZE = 5_000  # 0.005 AUD in millionths
US = 1_000_000


@dataclass(frozen=True)
class FaultRates:
    """Fraction of ticks affected by each fault (0 disables it)."""

    duplicates: float = 0.0
    gaps: float = 0.0
    out_of_order: float = 0.0
    late: float = 0.0
    late_minutes: float = 5.0
    non_positive_price: float = 0.0
    negative_volume: float = 0.0
    jumps: float = 0.0
    undecodable: float = 0.0

    def any(self) -> bool:
        return any(v > 0 for k, v in self.__dict__.items() if k != "late_minutes")


@dataclass
class Feed:
    """Ticks in produce order (integer space) plus what was injected."""

    ticks: pl.DataFrame
    undecodable_rows: np.ndarray  # positions in `ticks` whose value must be replaced by garbage bytes
    manifest: dict[str, object] = field(default_factory=dict)


def session_bounds(exchange_code: str, day: dt.date | None) -> tuple[dt.date, int, int]:
    """The trading date and its session open/close in UTC microseconds (latest completed session by default)."""
    cal = calendar(exchange_code)
    if day is None:
        today = dt.datetime.now(dt.UTC).date()
        sessions = cal.sessions_in_range(today - dt.timedelta(days=14), today - dt.timedelta(days=1))
        session = sessions[-1]
    else:
        import pandas as pd

        session = pd.Timestamp(day)
        if not cal.is_session(session):
            raise ValueError(f"{day} is not a {cal.name} trading session; pick a trading day")
    open_ts = cal.session_open(session)
    close_ts = cal.session_close(session)
    return session.date(), int(open_ts.value // 1000), int(close_ts.value // 1000)


def generate(
    n_ticks: int,
    *,
    seed: int = 7,
    symbols: int = 50,
    exchange_code: str = "ASX",
    day: dt.date | None = None,
    faults: FaultRates = FaultRates(),
) -> Feed:
    rng = np.random.default_rng(seed)
    trading_day, open_us, close_us = session_bounds(exchange_code, day)
    names = np.array(list(ASX_SYMBOLS)[:symbols])
    ref_price = np.array([ASX_SYMBOLS[s] for s in names])
    # Zipf-ish activity: the big names trade more.
    weights = 1.0 / np.arange(1, len(names) + 1) ** 0.8
    sym_idx = rng.choice(len(names), size=n_ticks, p=weights / weights.sum())
    ts = np.sort(rng.integers(open_us, close_us, size=n_ticks))

    frame = pl.DataFrame({"sym_idx": sym_idx, "exchange_ts": ts}).with_row_index("row")
    frame = frame.with_columns(
        (pl.col("row").cum_count().over("sym_idx")).cast(pl.Int64).alias("sequence"),
    )
    # GBM: per-tick log-returns scaled by the time since the symbol's previous tick (annual vol ~30%).
    sigma_per_sqrt_us = 0.30 / np.sqrt(252 * 6 * 3600 * US)
    frame = frame.with_columns(
        pl.col("exchange_ts").diff().over("sym_idx").fill_null(0).alias("dt_us"),
        pl.Series("z", rng.standard_normal(n_ticks)),
    ).with_columns(
        (pl.col("z") * pl.col("dt_us").cast(pl.Float64).sqrt() * sigma_per_sqrt_us)
        .cum_sum()
        .over("sym_idx")
        .alias("logret")
    )
    price = ref_price[frame["sym_idx"].to_numpy()] * np.exp(frame["logret"].to_numpy())
    price_e6 = np.maximum(np.round(price * PRICE_SCALE / TICK_SIZE), 1).astype(np.int64) * TICK_SIZE
    volume = np.maximum(1, np.round(rng.lognormal(5.0, 1.2, n_ticks))).astype(np.int64)
    side = np.where(rng.random(n_ticks) < 0.5, "BUY", "SELL")
    latency = rng.integers(100, 2_000, n_ticks)
    ticks = frame.select(
        pl.lit(exchange_code).alias("exchange"),
        pl.Series("symbol", names[frame["sym_idx"].to_numpy()]),
        "sequence",
        "exchange_ts",
        (pl.col("exchange_ts") + pl.Series(latency)).alias("ingest_ts"),
        pl.Series("price", price_e6),
        pl.Series("volume", volume),
        pl.Series("side", side),
    ).with_columns(
        pl.concat_str([pl.col("symbol"), pl.lit("-"), pl.col("sequence").cast(pl.String)]).alias("trade_id"),
        pl.when(pl.Series(rng.random(n_ticks) < 0.05))
        .then(pl.lit(["XT"]))
        .otherwise(pl.lit([], pl.List(pl.String)))
        .alias("conditions"),
    )
    return inject(ticks, rng, faults, trading_day, seed)


def _pick(rng: np.random.Generator, n: int, rate: float, exclude: np.ndarray | None = None) -> np.ndarray:
    k = round(n * rate)
    if k == 0:
        return np.array([], dtype=np.int64)
    pool = np.setdiff1d(np.arange(n), exclude) if exclude is not None and len(exclude) else np.arange(n)
    return np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False))


def _keys(ticks: pl.DataFrame, rows: np.ndarray) -> list[dict[str, object]]:
    return ticks[rows].select("symbol", "sequence").to_dicts() if len(rows) else []


def inject(ticks: pl.DataFrame, rng: np.random.Generator, f: FaultRates, day: dt.date, seed: int) -> Feed:
    n = ticks.height
    manifest: dict[str, object] = {"trading_date": day.isoformat(), "seed": seed, "clean_ticks": n}
    # Value faults change fields of rows that stay in the feed.
    bad_price = _pick(rng, n, f.non_positive_price)
    bad_volume = _pick(rng, n, f.negative_volume, bad_price)
    jumps = _pick(rng, n, f.jumps, np.concatenate([bad_price, bad_volume]))
    price = ticks["price"].to_numpy().copy()
    volume = ticks["volume"].to_numpy().copy()
    price[bad_price] = -price[bad_price] * (np.arange(len(bad_price)) % 2)  # alternately 0 and negative
    volume[bad_volume] = -volume[bad_volume]
    price[jumps] = (price[jumps] * np.where(rng.random(len(jumps)) < 0.5, 1.25, 0.75)).astype(np.int64)
    ticks = ticks.with_columns(pl.Series("price", price), pl.Series("volume", volume))
    manifest["non_positive_price"] = _keys(ticks, bad_price)
    manifest["negative_volume"] = _keys(ticks, bad_volume)
    manifest["jumps"] = _keys(ticks, jumps)

    # Gaps: rows that never reach Kafka.
    gaps = _pick(rng, n, f.gaps, np.concatenate([bad_price, bad_volume, jumps]))
    manifest["gaps"] = _keys(ticks, gaps)
    keep = np.ones(n, dtype=bool)
    keep[gaps] = False

    # Produce order: exchange time, with late and out-of-order rows delayed.
    delay = np.zeros(n, dtype=np.int64)
    late = _pick(rng, n, f.late, gaps)
    ooo = _pick(rng, n, f.out_of_order, np.concatenate([gaps, late]))
    delay[late] = int(f.late_minutes * 60 * US)
    delay[ooo] = rng.integers(1 * US, 5 * US, len(ooo))
    manifest["late"] = _keys(ticks, late)
    manifest["out_of_order"] = _keys(ticks, ooo)
    dups = _pick(rng, n, f.duplicates, gaps)
    manifest["duplicates"] = _keys(ticks, dups)

    produce_at = ticks["exchange_ts"].to_numpy() + delay
    base = ticks.with_columns(pl.Series("_produce_at", produce_at))
    copies = base[dups].with_columns(pl.col("_produce_at") + rng.integers(1, 500_000, len(dups)))
    ordered = pl.concat([base.filter(pl.Series(keep)), copies]).sort("_produce_at", maintain_order=True)
    ordered = ordered.drop("_produce_at")
    undecodable = _pick(rng, ordered.height, f.undecodable)
    manifest["undecodable_count"] = len(undecodable)
    manifest["produced"] = ordered.height
    return Feed(ticks=ordered, undecodable_rows=undecodable, manifest=manifest)
