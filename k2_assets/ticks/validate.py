"""Validation of raw ticks: business rules, duplicates (inside the batch and against ticks already published),
price anomalies. Pure polars, no I/O: the state carried across batches comes in as frames.

Every raw row ends in exactly one of: validated ticks, quarantine (with reason codes), or counted duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from k2_assets.bars.session import OUTSIDE_SESSION
from k2_assets.ticks.anomaly import flag_anomalies
from k2_assets.ticks.sessions import outside_session_mask, trading_dates

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
RECEIVED_COLUMNS = ["exchange", "symbol", "sequence", "exchange_ts", "trading_date", "price", "valid", "arrival"]


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
    # RECEIVED_COLUMNS (+ _g, a code per exchange+symbol): what the sequence tracker sees
    received: pl.DataFrame = field(default_factory=pl.DataFrame)

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


_GROUP_KEY = ["_g", "trading_date", "sequence"]  # DEDUP_KEY with (exchange, symbol) as one integer code
_SEP = "\x1f"


def _first_of_key(frame: pl.DataFrame) -> pl.Series:
    """True for the first row (lowest arrival; `frame` is in arrival order) of each _GROUP_KEY."""
    packed = _PackedKey.of(frame)
    if packed is not None:
        return frame.select(packed.key.is_first_distinct()).to_series()
    # Duplicates are rare: a 64-bit hash finds the few candidate rows, only those are compared by their actual key.
    hashed = frame.select(pl.struct(_GROUP_KEY).hash().is_duplicated()).to_series()
    if not hashed.any():
        return pl.Series([True] * frame.height, dtype=pl.Boolean)
    candidates = frame.select(*_GROUP_KEY, "arrival").filter(hashed)
    repeats = candidates.filter(~pl.struct(_GROUP_KEY).is_first_distinct())["arrival"]
    return ~frame["arrival"].is_in(repeats.implode())


def _key_in(frame: pl.DataFrame, keys: pl.DataFrame) -> pl.Series:
    """True for each row of `frame` whose _GROUP_KEY is one of `keys`' (an anti/semi-join mask, in row order)."""
    packed = _PackedKey.of(frame)
    if packed is not None:
        wanted = keys.filter(packed.in_range).select(packed.key).to_series()
        return frame.select(packed.key.is_in(wanted.implode())).to_series()
    hits = frame.join(keys.unique(), on=_GROUP_KEY, how="semi", maintain_order="left")["arrival"]
    return frame["arrival"].is_in(hits.implode())


@dataclass(frozen=True)
class _PackedKey:
    """(_g, trading_date, sequence) as one int64, exact (no collisions) for values within the bounds of the frame it
    was made for: hashed much faster than a struct of three columns."""

    key: pl.Expr
    in_range: pl.Expr  # rows of another frame whose values lie within these bounds (only those may be packed)

    @classmethod
    def of(cls, frame: pl.DataFrame) -> _PackedKey | None:
        """None when the frame is empty, has a null key value, or its ranges do not fit in 63 bits."""
        if frame.is_empty():
            return None
        date = pl.col("trading_date").cast(pl.Int32).cast(pl.Int64)
        b = frame.select(
            pl.col("_g").cast(pl.Int64).max().alias("g"),
            date.min().alias("d0"),
            date.max().alias("d1"),
            pl.col("sequence").min().alias("s0"),
            pl.col("sequence").max().alias("s1"),
            pl.sum_horizontal(pl.col(_GROUP_KEY).null_count()).alias("nulls"),
        ).row(0, named=True)
        if b["nulls"]:
            return None
        days, seqs = b["d1"] - b["d0"] + 1, b["s1"] - b["s0"] + 1
        if (b["g"] + 1) * days * seqs >= 2**63:
            return None
        key = (pl.col("_g").cast(pl.Int64) * days + (date - b["d0"])) * seqs + (pl.col("sequence") - b["s0"])
        in_range = (
            pl.col("_g").cast(pl.Int64).is_between(0, b["g"])
            & date.is_between(b["d0"], b["d1"])
            & pl.col("sequence").is_between(b["s0"], b["s1"])
        )
        return cls(key, in_range.fill_null(False))


def empty_keys() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"exchange": pl.String, "symbol": pl.String, "trading_date": pl.Date, "sequence": pl.Int64}
    )


def _narrow(raw: pl.DataFrame, derivatives: list[str]) -> pl.DataFrame:
    """The columns the rules need, in arrival order (topic, partition, offset), with `_row` pointing back into `raw`
    and `_g` an integer code of (exchange, symbol). All the logic runs on this; wide columns (strings, lists,
    bytes) are gathered once per output at the end."""
    order = _arrival_order(raw)
    # One exchange per batch is the rule (a topic per exchange): then the symbol alone is the group.
    one_exchange = raw["exchange"].drop_nulls().n_unique() <= 1
    key = pl.col("symbol") if one_exchange else pl.concat_str(["exchange", "symbol"], separator=_SEP)
    group = pl.when(pl.col("exchange").is_not_null()).then(key.cast(pl.Categorical).to_physical())
    derivative = pl.col("symbol").is_in(derivatives).fill_null(False) if derivatives else pl.lit(False)
    narrow = raw.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"),
        pl.col("exchange").cast(pl.Categorical),
        group.alias("_g"),
        "sequence",
        "exchange_ts",
        "price",
        "volume",
        pl.col("decode_error").is_null().alias("_decoded"),
        pl.any_horizontal([pl.col(c).is_null() for c in REQUIRED]).alias("_missing"),
        derivative.alias("_derivative"),
    )
    if order is not None:
        narrow = narrow.select(pl.all().gather(order))
    narrow = narrow.with_row_index("arrival")
    return narrow.with_columns(trading_dates(narrow))


def _arrival_order(raw: pl.DataFrame) -> pl.Series | None:
    """Positions that put `raw` in arrival order (topic, partition, offset); None when it already is (the usual
    case: raw_ticks is written and read in that order). Integer keys only when the batch has one topic."""
    one_topic = raw.is_empty() or (raw["kafka_topic"] == raw["kafka_topic"][0]).all()
    keys = SOURCE_COLUMNS[1:] if one_topic else SOURCE_COLUMNS
    if one_topic:
        partition, offset = pl.col("kafka_partition"), pl.col("kafka_offset")
        step = (partition.diff() > 0) | ((partition.diff() == 0) & (offset.diff() > 0))
        if raw.select(step.fill_null(True).all()).item():
            return None
    return raw.select(pl.arg_sort_by(keys)).to_series()


def _groups(raw: pl.DataFrame, narrow: pl.DataFrame) -> pl.DataFrame:
    """(_g, exchange, symbol) of every group code in the batch (strings gathered for one row per group)."""
    firsts = narrow.filter(pl.col("_g").is_not_null()).group_by("_g").agg(pl.col("_row").first())
    names = raw.select("exchange", "symbol")[firsts["_row"]]
    return pl.concat([firsts.select("_g"), names], how="horizontal")


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
    """
    rules = rules or Rules(derivative_symbols=derivative_symbols)
    derivatives = list(rules.derivative_symbols | derivative_symbols)
    narrow = _narrow(raw, derivatives)
    groups = _groups(raw, narrow)

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
        rules_by_reason.append((OUTSIDE_SESSION, decoded & ~missing & pl.lit(outside_session_mask(narrow))))
    # One boolean column per rule; the list of reason codes is built for the (few) failing rows only.
    verdicts = narrow.select([cond.fill_null(False).alias(code) for code, cond in rules_by_reason])
    failing = verdicts.select(pl.any_horizontal(pl.all())).to_series()
    reasons = verdicts.filter(failing).select(
        pl.concat_list([_reason(pl.col(code), code) for code, _ in rules_by_reason]).list.drop_nulls().alias("reasons")
    )
    failed = narrow.filter(failing).with_columns(reasons["reasons"], pl.lit(None, pl.String).alias("_detail"))
    passed = narrow.filter(~failing)

    first_of_key = _first_of_key(passed)
    in_batch_dups = passed.filter(~first_of_key).with_columns(pl.lit("batch").alias("duplicate_of"))
    unique = passed.filter(first_of_key)
    table_dups = in_batch_dups.clear()
    if seen_keys is not None and not seen_keys.is_empty():
        seen = seen_keys.join(groups, on=["exchange", "symbol"], how="inner").select(_GROUP_KEY)
        mask = _key_in(unique, seen)
        table_dups = unique.filter(mask).with_columns(pl.lit("ticks").alias("duplicate_of"))
        unique = unique.filter(~mask)
    duplicate_rows = pl.concat([in_batch_dups, table_dups]).select("_row", "duplicate_of")

    carried = None
    if last_prices is not None and not last_prices.is_empty():
        carried = last_prices.join(groups, on=["exchange", "symbol"], how="inner").select("_g", "last_price")
    flags = flag_anomalies(unique.select("_g", "price"), carried, rules.anomaly_bps)
    # Derivatives are exempt: their prices may sit at or cross zero, where a relative jump means nothing.
    unique = unique.with_columns(
        (flags["anomaly"] & ~unique["_derivative"]).alias("_anomaly"), flags["reference"].alias("_reference")
    )
    anomalies = unique.filter(pl.col("_anomaly")).with_columns(
        pl.lit([ANOMALY]).alias("reasons"),
        pl.format(
            "price {} vs last valid {} ({}%)",
            _decimal(pl.col("price")),
            _decimal(pl.col("_reference")),
            ((pl.col("price") - pl.col("_reference")) * 1000 // pl.col("_reference") / 10).round(1),
        ).alias("_detail"),
    )
    published = unique.filter(~pl.col("_anomaly"))

    ticks = raw.select(TICK_COLUMNS + SOURCE_COLUMNS)[published["_row"]]
    flagged = pl.concat(
        [
            failed.select("_row", "arrival", "reasons", "_detail"),
            anomalies.select("_row", "arrival", "reasons", "_detail"),
        ]
    ).sort("arrival")
    wide = [
        *SOURCE_COLUMNS,
        *TICK_COLUMNS,
        "decode_error",
        "raw_value",
        *(["kafka_key"] if "kafka_key" in raw.columns else []),
    ]
    quarantine = pl.concat([raw.select(wide)[flagged["_row"]], flagged.select("reasons", "_detail")], how="horizontal")
    quarantine = quarantine.with_columns(pl.coalesce("_detail", "decode_error").alias("detail")).select(
        *SOURCE_COLUMNS,
        *TICK_COLUMNS,
        "reasons",
        "detail",
        "raw_value",
        *wide[len(SOURCE_COLUMNS) + len(TICK_COLUMNS) + 2 :],
    )
    duplicates = pl.concat(
        [raw.select(SOURCE_COLUMNS)[duplicate_rows["_row"]], duplicate_rows.select("duplicate_of")], how="horizontal"
    )
    # What the sequence tracker sees: every decoded row with a key that is not a duplicate, valid or not. Names come
    # from the small group table as categoricals, so no string column is gathered per row.
    names = groups.with_columns(pl.col("exchange").cast(pl.Categorical), pl.col("symbol").cast(pl.Categorical))
    tracked = ["_g", "sequence", "exchange_ts", "trading_date", "price", "arrival"]
    received = (
        pl.concat(
            [
                unique.select(*tracked, (~pl.col("_anomaly")).alias("valid")),
                failed.filter(
                    pl.col("_g").is_not_null() & pl.col("trading_date").is_not_null() & pl.col("sequence").is_not_null()
                ).select(*tracked, pl.lit(False).alias("valid")),
            ]
        )
        .sort("arrival")
        .join(names, on="_g", how="left", maintain_order="left")
        .select(*RECEIVED_COLUMNS, "_g")
    )
    return ValidationResult(ticks=ticks, quarantine=quarantine, duplicates=duplicates, received=received)
