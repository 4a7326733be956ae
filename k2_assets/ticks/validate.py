"""Validation of raw ticks: business rules, duplicates, undecodable values. Pure polars, no I/O.

Every raw row ends in exactly one of: validated ticks, quarantine (with reason codes), or counted duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

# Reason codes written to quarantine.reasons. Stable strings: compliance reports group by them.
UNDECODABLE = "undecodable"
MISSING_FIELD = "missing_field"
NON_POSITIVE_PRICE = "non_positive_price"
NEGATIVE_VOLUME = "negative_volume"

KEY = ["exchange", "symbol", "sequence"]
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
class ValidationResult:
    ticks: pl.DataFrame  # TICK_COLUMNS + SOURCE_COLUMNS
    quarantine: pl.DataFrame  # SOURCE_COLUMNS + TICK_COLUMNS + reasons, detail, raw_value
    duplicates: pl.DataFrame  # SOURCE_COLUMNS of rows dropped as duplicates of an earlier offset

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        if self.quarantine.is_empty():
            return {}
        counts = self.quarantine.select(pl.col("reasons").explode()).group_by("reasons").len()
        return {str(r): int(n) for r, n in counts.iter_rows()}


def _reason(condition: pl.Expr, code: str) -> pl.Expr:
    return pl.when(condition).then(pl.lit(code)).otherwise(pl.lit(None, pl.String))


def validate(raw: pl.DataFrame, derivative_symbols: frozenset[str] = frozenset()) -> ValidationResult:
    """Split a raw batch (integer space: price scaled by 1e6, timestamps in µs) into ticks, quarantine, duplicates.

    Price must be > 0 except for symbols in `derivative_symbols` (spreads and some derivatives trade at or below
    zero); volume must be >= 0; required fields present. Duplicates on (exchange, symbol, sequence) keep the
    lowest Kafka offset.
    """
    missing = pl.any_horizontal([pl.col(c).is_null() for c in REQUIRED])
    decoded = pl.col("decode_error").is_null()
    checks = raw.with_columns(
        pl.concat_list(
            _reason(~decoded, UNDECODABLE),
            _reason(decoded & missing, MISSING_FIELD),
            _reason(
                decoded & (pl.col("price") <= 0) & ~pl.col("symbol").is_in(list(derivative_symbols)), NON_POSITIVE_PRICE
            ),
            _reason(decoded & (pl.col("volume") < 0), NEGATIVE_VOLUME),
        )
        .list.drop_nulls()
        .alias("reasons")
    )
    failed = checks.filter(pl.col("reasons").list.len() > 0)
    passed = checks.filter(pl.col("reasons").list.len() == 0).sort(SOURCE_COLUMNS)
    first_of_key = passed.select(pl.struct(KEY).is_first_distinct()).to_series()
    ticks = passed.filter(first_of_key).select(TICK_COLUMNS + SOURCE_COLUMNS)
    duplicates = passed.filter(~first_of_key).select(SOURCE_COLUMNS)
    quarantine = failed.select(
        SOURCE_COLUMNS + TICK_COLUMNS + ["reasons", pl.col("decode_error").alias("detail"), "raw_value"]
    )
    return ValidationResult(ticks=ticks, quarantine=quarantine, duplicates=duplicates)
