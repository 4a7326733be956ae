"""Validation of raw ticks: business rules, duplicates (inside the batch and against ticks already published),
price anomalies. polars and numpy, no I/O: the state carried across batches comes in as frames.

Every raw row ends in exactly one of: validated ticks, quarantine (with reason codes), or counted duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from k2_assets.bars.session import OUTSIDE_SESSION
from k2_assets.ticks.anomaly import flag_grouped
from k2_assets.ticks.dedup import Keys
from k2_assets.ticks.kernels import NO_REF, ascending_pairs
from k2_assets.ticks.ordering import Grouped, group_codes
from k2_assets.ticks.received import GROUP, Received
from k2_assets.ticks.sessions import exchange_codes, outside_session_mask, trading_dates

# Reason codes written to quarantine.reasons. Stable strings: compliance reports group by them.
UNDECODABLE = "undecodable"
MISSING_FIELD = "missing_field"
NON_POSITIVE_PRICE = "non_positive_price"
NEGATIVE_VOLUME = "negative_volume"
FUTURE_TIMESTAMP = "future_timestamp"
ANOMALY = "anomaly"
# OUTSIDE_SESSION: not in a session of the exchange calendar (k2_assets/bars/session.py)
REASONS = (UNDECODABLE, MISSING_FIELD, NON_POSITIVE_PRICE, NEGATIVE_VOLUME, FUTURE_TIMESTAMP, ANOMALY, OUTSIDE_SESSION)
# Reasons a reviewer may release back into ticks (`k2 quarantine release`); the others are broken data.
RELEASABLE = (ANOMALY,)

KEY = ["exchange", "symbol", "sequence"]
# Sequence numbers are unique per (exchange, symbol) within a trading session: feeds reset them at the open.
DEDUP_KEY = ["exchange", "symbol", "trading_date", "sequence"]
REQUIRED = ["exchange", "symbol", "sequence", "exchange_ts", "price", "volume"]
TICK_COLUMNS = [
    "exchange",
    "symbol",
    "sequence",
    "exchange_ts",
    "ingest_ts",
    "price",
    "volume",
    "trade_id",
    "side",
    "conditions",
]
SOURCE_COLUMNS = ["kafka_topic", "kafka_partition", "kafka_offset"]


@dataclass(frozen=True)
class Rules:
    """Row-level rules (ARCHITECTURE.md: price > 0 unless a derivative, volume >= 0, the >10% jump)."""

    derivative_symbols: frozenset[str] = frozenset()
    anomaly_bps: int = 1_000  # |price / last valid price - 1| above this many basis points is an anomaly
    future_tolerance_us: int = 5_000_000  # exchange_ts may lead the validator's clock by this much (clock skew)
    check_session: bool = True  # with now_us (live validation): quarantine ticks outside the exchange session


@dataclass(frozen=True)
class ValidationResult:
    ticks: pl.DataFrame  # TICK_COLUMNS + SOURCE_COLUMNS, in arrival order
    quarantine: pl.DataFrame  # SOURCE_COLUMNS + TICK_COLUMNS + reasons, detail, raw_value, kafka_key, decode_error
    duplicates: pl.DataFrame  # SOURCE_COLUMNS + duplicate_of ("batch" | "ticks") of rows dropped as duplicates
    received: Received  # what the sequence tracker sees

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        if self.quarantine.is_empty():
            return {}
        counts = self.quarantine.select(pl.col("reasons").explode()).group_by("reasons").len().sort("reasons")
        return {str(r): int(n) for r, n in counts.iter_rows()}

    @property
    def duplicates_by_kind(self) -> dict[str, int]:
        if self.duplicates.is_empty():
            return {}
        counts = self.duplicates.group_by("duplicate_of").len().sort("duplicate_of")
        return {str(k): int(n) for k, n in counts.iter_rows()}


def _reason(condition: pl.Expr, code: str) -> pl.Expr:
    return pl.when(condition).then(pl.lit(code)).otherwise(pl.lit(None, pl.String))


def _decimal(millionths: pl.Expr) -> pl.Expr:
    """Scaled-integer price as text for a human (display only)."""
    return (millionths / 1_000_000).round(6).cast(pl.String)


_SEP = "\x1f"


def empty_keys() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"exchange": pl.String, "symbol": pl.String, "trading_date": pl.Date, "sequence": pl.Int64}
    )


def _group_key(exchanges: list[str]) -> tuple[pl.Expr, pl.Expr]:
    """Each row's (exchange, symbol) as one value, and whether the row has both."""
    # One exchange per batch is the rule (a topic per exchange): then the symbol alone is the group.
    key = pl.col("symbol") if len(exchanges) <= 1 else pl.concat_str(["exchange", "symbol"], separator=_SEP)
    return key, pl.col("exchange").is_not_null() & pl.col("symbol").is_not_null()


def _narrow(raw: pl.DataFrame, derivatives: list[str], exchanges: list[str]) -> tuple[pl.DataFrame, bool]:
    """The columns the rules need, in arrival order (topic, partition, offset), with `_row` pointing back into `raw`
    and `_g` the group id (dense, rows without a group last); and whether that is raw's own row order (the usual
    case). All the logic runs on this; wide columns (strings, lists, bytes) are gathered once per output at the end.
    """
    derivative = pl.col("symbol").is_in(derivatives).fill_null(False) if derivatives else pl.lit(False)
    narrow = raw.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"),
        "exchange",
        "sequence",
        "exchange_ts",
        "price",
        "volume",
        pl.col("decode_error").is_null().alias("_decoded"),
        pl.any_horizontal([pl.col(c).is_null() for c in REQUIRED]).alias("_missing"),
        pl.all_horizontal([pl.col(c).is_not_null() for c in [*KEY, "exchange_ts"]]).alias("_keyed"),
        derivative.alias("_derivative"),
    )
    narrow = narrow.with_columns(pl.Series("_g", group_codes(raw, *_group_key(exchanges))))
    order = _arrival_order(raw)
    if order is not None:
        narrow = narrow[order]
    narrow = narrow.with_row_index("arrival")
    return narrow.with_columns(trading_dates(narrow, codes=exchanges)), order is None


def _arrival_order(raw: pl.DataFrame) -> pl.Series | None:
    """Positions that put `raw` in arrival order (topic, partition, offset); None when it already is (the usual
    case: raw_ticks is written and read in that order). Integer keys only when the batch has one topic."""
    one_topic = raw.is_empty() or (raw["kafka_topic"] == raw["kafka_topic"][0]).all()
    keys = SOURCE_COLUMNS[1:] if one_topic else SOURCE_COLUMNS
    if one_topic and ascending_pairs(raw["kafka_partition"].to_numpy(), raw["kafka_offset"].to_numpy()):
        return None
    return raw.select(pl.arg_sort_by(keys)).to_series()


def _rule_verdicts(narrow: pl.DataFrame, rules: Rules, now_us: int | None, exchanges: list[str]) -> pl.DataFrame:
    """One boolean column per row-level rule, named by its reason code; `_failing` (any rule) and `_keyed`
    (failing, but with a key the sequence tracker can use)."""
    decoded, missing = pl.col("_decoded"), pl.col("_missing")
    rules_by_reason = [
        (UNDECODABLE, ~decoded),
        (MISSING_FIELD, decoded & missing),
        (NON_POSITIVE_PRICE, decoded & (pl.col("price") <= 0) & ~pl.col("_derivative")),
        (NEGATIVE_VOLUME, decoded & (pl.col("volume") < 0)),
    ]
    if now_us is not None:
        rules_by_reason.append(
            (FUTURE_TIMESTAMP, decoded & (pl.col("exchange_ts") > now_us + rules.future_tolerance_us))
        )
    if now_us is not None and rules.check_session:
        rules_by_reason.append(
            (OUTSIDE_SESSION, decoded & ~missing & pl.lit(outside_session_mask(narrow, codes=exchanges)))
        )
    verdicts = narrow.select(*[cond.fill_null(False).alias(code) for code, cond in rules_by_reason], "_keyed")
    failing = pl.any_horizontal(pl.exclude("_keyed"))
    return verdicts.with_columns(failing.alias("_failing"), (failing & pl.col("_keyed")).alias("_keyed"))


def _reasons(verdicts: pl.DataFrame) -> pl.Series:
    """The list of reason codes of each (failing) row: rows share few distinct combinations, so each combination's
    list is built once and joined by its bit pattern."""
    codes = [c for c in verdicts.columns if not c.startswith("_")]
    bits = verdicts.select(pl.sum_horizontal([pl.col(c).cast(pl.Int64) * (1 << i) for i, c in enumerate(codes)]))
    patterns = bits.to_series().alias("_bits")
    distinct = patterns.unique().to_list()
    lists = pl.DataFrame(
        {"_bits": distinct, "reasons": [[c for i, c in enumerate(codes) if bit >> i & 1] for bit in distinct]},
        schema={"_bits": pl.Int64, "reasons": pl.List(pl.String)},
    )
    return patterns.to_frame().join(lists, on="_bits", how="left", maintain_order="left")["reasons"]


@dataclass(frozen=True)
class _Columns:
    """The columns of `narrow` the kernels use, as numpy arrays, in grouped order (rows of a symbol together, in
    arrival order): a null, only ever on a row failing a rule, as 0; the trading date as days since the epoch
    (int32, a Date's physical value)."""

    arrival: np.ndarray  # position in `narrow` (arrival order)
    row: np.ndarray  # position in `raw`
    group: np.ndarray  # group id, non-decreasing
    day: np.ndarray
    seq: np.ndarray
    price: np.ndarray

    @classmethod
    def grouped(cls, narrow: pl.DataFrame, rows: Grouped, in_raw_order: bool) -> _Columns:
        at = rows.order

        def ints(name: str) -> np.ndarray:
            return narrow[name].cast(pl.Int64).fill_null(0).to_numpy()[at]

        dates = narrow["trading_date"].cast(pl.Int32)
        first, last = dates.min(), dates.max()
        if first is not None and first == last and not dates.has_nulls():  # one trading date: nothing to gather
            day = np.full(len(at), first, dtype=np.int32)
        else:
            day = dates.fill_null(0).to_numpy()[at]
        row = at if in_raw_order else narrow["_row"].to_numpy()[at]
        return cls(at, row, rows.codes, day, ints("sequence"), ints("price"))


def _key_arrays(keys: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group id, day number, sequence) of key rows (no nulls)."""
    return (
        keys["_g"].cast(pl.Int64).to_numpy(),
        keys["trading_date"].cast(pl.Int32).cast(pl.Int64).to_numpy(),
        keys["sequence"].cast(pl.Int64).to_numpy(),
    )


def _group_names(raw: pl.DataFrame, cols: _Columns, rows: Grouped) -> pl.DataFrame:
    """(_g, exchange, symbol) of every group id in the batch: strings gathered for one row per group."""
    starts = rows.starts()
    names = raw.select("exchange", "symbol")[cols.row[starts]]
    named = names.with_columns(pl.Series("_g", rows.codes[starts]))
    return named.filter(pl.col("exchange").is_not_null() & pl.col("symbol").is_not_null())


def validate(
    raw: pl.DataFrame,
    derivative_symbols: frozenset[str] = frozenset(),
    *,
    rules: Rules | None = None,
    seen_keys: pl.DataFrame | None = None,
    last_prices: pl.DataFrame | None = None,
    now_us: int | None = None,
) -> ValidationResult:
    """Split a raw batch (integer space: price scaled by 1e6, timestamps in µs) into ticks, quarantine, duplicates.

    `seen_keys` (exchange, symbol, trading_date, sequence) are keys already published in ticks: a row matching one
    is a duplicate of an earlier batch. `last_prices` (exchange, symbol, last_price) is the last valid price of each
    symbol at the end of the previous batch, the reference of the first anomaly check. Duplicates inside the batch
    keep the lowest Kafka offset. Rows are processed in arrival order (topic, partition, offset).

    Dedup and anomalies run on the rows grouped per symbol in arrival order (one stable sort of the group codes),
    where "earlier tick of this symbol" is a neighbour: linear passes instead of hashes and windows.
    """
    rules = rules or Rules(derivative_symbols=derivative_symbols)
    derivatives = list(rules.derivative_symbols | derivative_symbols)
    exchanges = exchange_codes(raw["exchange"])
    narrow, in_raw_order = _narrow(raw, derivatives, exchanges)
    failing = _rule_verdicts(narrow, rules, now_us, exchanges)
    failed = narrow.filter(failing["_failing"]).select(
        "_row", "arrival", _reasons(failing.filter("_failing")), pl.lit(None, pl.String).alias("_detail")
    )

    # Rows grouped per symbol in arrival order (masks below are over them); rows passing the rules have every key
    # column set.
    rows = Grouped.of(narrow["_g"].to_numpy())
    cols = _Columns.grouped(narrow, rows, in_raw_order)
    groups = _group_names(raw, cols, rows)
    passing = ~failing["_failing"].to_numpy()[rows.order]
    keys = Keys(cols.group[passing], cols.day[passing], cols.seq[passing])
    first = keys.first_occurrences()
    table_dup = np.zeros(len(first), dtype=bool)
    if seen_keys is not None and not seen_keys.is_empty():
        seen = seen_keys.join(groups, on=["exchange", "symbol"], how="inner")
        at = np.flatnonzero(first)
        table_dup[at] = keys.published_before(at, _key_arrays(seen))
    kept = passing.copy()
    kept[passing] = first & ~table_dup

    carried = np.full(len(groups) + 1, NO_REF, dtype=np.int64)  # by group id (ids are dense)
    if last_prices is not None and not last_prices.is_empty():
        found = groups.join(last_prices, on=["exchange", "symbol"], how="inner")
        carried[found["_g"].to_numpy()] = found["last_price"].cast(pl.Int64).to_numpy()
    kept_group = cols.group[kept]
    starts = np.ones(len(kept_group), dtype=bool)
    starts[1:] = kept_group[1:] != kept_group[:-1]
    price = cols.price[kept]
    anomaly, reference = flag_grouped(price, starts, carried[kept_group[starts]], rules.anomaly_bps)
    # Derivatives are exempt: their prices may sit at or cross zero, where a relative jump means nothing.
    if derivatives:
        anomaly &= ~narrow["_derivative"].to_numpy()[cols.arrival[kept]]
    valid = np.zeros(len(kept), dtype=bool)
    valid[kept] = ~anomaly

    kept_at = cols.arrival[kept]
    flagged_at = kept_at[anomaly]
    anomalies = pl.DataFrame({"arrival": flagged_at, "price": price[anomaly], "_reference": reference[anomaly]}).select(
        pl.Series("_row", cols.row[kept][anomaly]),
        pl.col("arrival").cast(pl.UInt32),
        pl.lit([ANOMALY]).alias("reasons"),
        pl.format(
            "price {} vs last valid {} ({}%)",
            _decimal(pl.col("price")),
            _decimal(pl.col("_reference")),
            ((pl.col("price") - pl.col("_reference")) * 1000 // pl.col("_reference") / 10).round(1),
        ).alias("_detail"),
    )
    published = np.zeros(narrow.height, dtype=bool)
    published[kept_at[~anomaly]] = True
    flagged = pl.concat([failed, anomalies]).sort("arrival")
    passing_at = cols.arrival[passing]
    in_batch = np.sort(passing_at[~first])
    of_table = np.sort(passing_at[table_dup])
    raw_row = narrow["_row"].to_numpy()
    duplicates = pl.DataFrame(
        {
            "_row": raw_row[np.concatenate([in_batch, of_table])],
            "duplicate_of": ["batch"] * len(in_batch) + ["ticks"] * len(of_table),
        },
        schema={"_row": pl.Int64, "duplicate_of": pl.String},
    )
    wide = raw.select(TICK_COLUMNS + SOURCE_COLUMNS)
    return ValidationResult(
        # A mask filter is cheaper than a gather when raw is in arrival order already.
        ticks=wide.filter(pl.Series(published)) if in_raw_order else wide[raw_row[published]],
        quarantine=_quarantine(raw, flagged),
        duplicates=pl.concat(
            [raw.select(SOURCE_COLUMNS)[duplicates["_row"]], duplicates.select("duplicate_of")], how="horizontal"
        ),
        received=_received(narrow, cols, failing["_keyed"].to_numpy()[rows.order], kept, valid, groups),
    )


def _quarantine(raw: pl.DataFrame, flagged: pl.DataFrame) -> pl.DataFrame:
    """Quarantine rows: the raw row of each flagged `_row` with its reasons and detail."""
    extra = ["kafka_key"] if "kafka_key" in raw.columns else []
    wide = [*SOURCE_COLUMNS, *TICK_COLUMNS, "decode_error", "raw_value", *extra]
    quarantine = pl.concat([raw.select(wide)[flagged["_row"]], flagged.select("reasons", "_detail")], how="horizontal")
    return quarantine.with_columns(pl.coalesce("_detail", "decode_error").alias("detail")).select(
        *SOURCE_COLUMNS, *TICK_COLUMNS, "reasons", "detail", "raw_value", *extra
    )


def _received(
    narrow: pl.DataFrame,
    cols: _Columns,
    keyed_failing: np.ndarray,
    kept: np.ndarray,
    valid: np.ndarray,
    groups: pl.DataFrame,
) -> Received:
    """What the sequence tracker sees: every decoded row with a key that is not a duplicate (kept rows, and rows
    failing a rule that still have a key), valid or not, grouped per symbol in arrival order. Straight from the
    grouped arrays; the names of the groups come from the small group table."""
    tracked = keyed_failing | kept
    codes = cols.group[tracked]
    starts = np.ones(len(codes), dtype=bool)
    starts[1:] = codes[1:] != codes[:-1]
    names = pl.DataFrame({"_g": codes[starts]}).join(groups, on="_g", how="left", maintain_order="left")
    arrival = cols.arrival[tracked]
    return Received(
        names=names.select(GROUP),
        group=np.cumsum(starts) - 1,
        seq=cols.seq[tracked],
        day=cols.day[tracked],
        valid=valid[tracked],
        arrival=arrival,
        source=arrival,
        source_ts=narrow["exchange_ts"],
        source_price=narrow["price"],
    )
