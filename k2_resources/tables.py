"""Iceberg table definitions: schemas, partition specs, sort orders and properties of every K2 table."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform, TruncateTransform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

PRICE = DecimalType(18, 6)

# The library's own commit retry rebases onto the new head without re-running our offset check, which could append
# a range twice. Ingest tables retry in K2's writer instead (ARCHITECTURE.md decision 2).
INGEST_PROPERTIES = {
    "commit.retry.num-retries": "0",
    "write.parquet.compression-codec": "zstd",
    "format-version": "2",
}
DERIVED_PROPERTIES = {"write.parquet.compression-codec": "zstd", "format-version": "2"}


@dataclass(frozen=True)
class TableDef:
    name: str
    schema: Schema
    partition_spec: PartitionSpec = field(default_factory=PartitionSpec)
    sort_order: SortOrder = field(default_factory=SortOrder)
    properties: dict[str, str] = field(default_factory=dict)
    doc: str = ""


def _tick_fields(start_id: int) -> list[NestedField]:
    """Decoded tick payload columns, with field ids from `start_id` on."""
    names_types = [
        ("exchange", StringType(), "Exchange code, e.g. ASX"),
        ("symbol", StringType(), "Exchange ticker"),
        ("sequence", LongType(), "Per (exchange, symbol) feed sequence number"),
        ("exchange_ts", TimestamptzType(), "Exchange event time (UTC, microseconds)"),
        ("ingest_ts", TimestamptzType(), "Time the feed handler received the tick (UTC)"),
        ("price", PRICE, "Trade price, exact decimal(18,6)"),
        ("volume", LongType(), "Traded quantity"),
        ("trade_id", StringType(), "Exchange trade identifier"),
        ("side", StringType(), "BUY, SELL or UNKNOWN"),
    ]
    fields = [
        NestedField(start_id + i, name, typ, required=False, doc=doc) for i, (name, typ, doc) in enumerate(names_types)
    ]
    next_id = start_id + len(names_types)
    fields.append(
        NestedField(
            next_id,
            "conditions",
            ListType(next_id + 1, StringType(), element_required=False),
            required=False,
            doc="Exchange trade condition codes",
        )
    )
    return fields


def _kafka_fields() -> list[NestedField]:
    return [
        NestedField(1, "kafka_topic", StringType(), required=False, doc="Source topic"),
        NestedField(2, "kafka_partition", IntegerType(), required=False, doc="Source partition"),
        NestedField(3, "kafka_offset", LongType(), required=False, doc="Source offset"),
    ]


RAW_TICKS = TableDef(
    name="raw_ticks",
    doc="Every Kafka record of the tick topics, exactly once, decoded where possible.",
    schema=Schema(
        *_kafka_fields(),
        NestedField(4, "kafka_ts", TimestamptzType(), required=False, doc="Kafka record timestamp"),
        NestedField(5, "kafka_key", StringType(), required=False, doc="Record key (the symbol)"),
        *_tick_fields(6),
        NestedField(20, "landed_ts", TimestamptzType(), required=False, doc="When K2 wrote the row"),
        NestedField(21, "decode_error", StringType(), required=False, doc="Why the value could not be decoded"),
        NestedField(22, "raw_value", BinaryType(), required=False, doc="Original bytes of an undecodable value"),
    ),
    partition_spec=PartitionSpec(PartitionField(4, 1000, DayTransform(), "kafka_day")),
    sort_order=SortOrder(SortField(2, IdentityTransform()), SortField(3, IdentityTransform())),
    properties=INGEST_PROPERTIES,
)

TICKS = TableDef(
    name="ticks",
    doc="Validated, deduplicated ticks: what quants query.",
    schema=Schema(*_tick_fields(1)),
    partition_spec=PartitionSpec(
        PartitionField(4, 1000, DayTransform(), "exchange_day"),
        PartitionField(1, 1001, IdentityTransform(), "exchange"),
        PartitionField(2, 1002, TruncateTransform(4), "symbol_trunc"),
    ),
    sort_order=SortOrder(SortField(2, IdentityTransform()), SortField(4, IdentityTransform())),
    properties=INGEST_PROPERTIES,
)

QUARANTINE = TableDef(
    name="quarantine",
    doc="Rows that failed validation, with every reason, the source offset and the batch that saw them.",
    schema=Schema(
        *_kafka_fields(),
        *_tick_fields(4),
        NestedField(
            20,
            "reasons",
            ListType(21, StringType(), element_required=False),
            required=False,
            doc="Reason codes, several per row possible",
        ),
        NestedField(22, "detail", StringType(), required=False, doc="Human-readable detail (e.g. decode error)"),
        NestedField(23, "raw_value", BinaryType(), required=False, doc="Original bytes of an undecodable value"),
        NestedField(24, "batch_id", StringType(), required=False, doc="Dagster run / batch that quarantined it"),
        NestedField(25, "quarantined_at", TimestamptzType(), required=False, doc="When it was quarantined"),
    ),
    partition_spec=PartitionSpec(PartitionField(25, 1000, DayTransform(), "quarantine_day")),
    properties=INGEST_PROPERTIES,
)

# Bars (issue 5): one table per interval, same columns. Written only by k2_assets/bars, which commits with the
# library's retry off and re-plans on a conflict itself (a blind rebase could overwrite a newer revision).
BAR_PROPERTIES = {**DERIVED_PROPERTIES, "commit.retry.num-retries": "0"}
BAR_INTERVALS = ("1m", "5m", "1h", "1d")


def _bar_fields() -> list[NestedField]:
    return [
        NestedField(1, "exchange", StringType(), required=False),
        NestedField(2, "symbol", StringType(), required=False),
        NestedField(3, "trading_date", DateType(), required=False, doc="Exchange-local trading day"),
        NestedField(4, "window_start", TimestamptzType(), required=False, doc="Start of the window, UTC"),
        NestedField(5, "open", PRICE, required=False, doc="Price of the first tick by (exchange_ts, sequence)"),
        NestedField(6, "high", PRICE, required=False),
        NestedField(7, "low", PRICE, required=False),
        NestedField(8, "close", PRICE, required=False, doc="Price of the last tick by (exchange_ts, sequence)"),
        NestedField(9, "volume", LongType(), required=False),
        NestedField(10, "trade_count", LongType(), required=False),
        NestedField(11, "vwap", PRICE, required=False, doc="sum(price*volume)/sum(volume), rounded half-up to 6 dp"),
        NestedField(12, "first_sequence", LongType(), required=False),
        NestedField(13, "last_sequence", LongType(), required=False),
        NestedField(14, "revision", IntegerType(), required=False, doc="0 when first written, +1 per restatement"),
        NestedField(15, "computed_at", TimestamptzType(), required=False, doc="When this revision was computed"),
        NestedField(
            16, "source_snapshot_id", LongType(), required=False, doc="ticks snapshot the bar was computed from"
        ),
        NestedField(17, "window_end", TimestamptzType(), required=False, doc="End of the window (exclusive), UTC"),
        NestedField(18, "first_ts", TimestamptzType(), required=False, doc="exchange_ts of the opening tick"),
        NestedField(19, "last_ts", TimestamptzType(), required=False, doc="exchange_ts of the closing tick"),
        NestedField(20, "notional", DecimalType(38, 6), required=False, doc="sum(price*volume), exact"),
        NestedField(
            21, "is_final", BooleanType(), required=False, doc="false while the window is open (watermark < end + 10 s)"
        ),
    ]


def _bar_table(interval: str, what: str) -> TableDef:
    return TableDef(
        name=f"bars_{interval}",
        doc=f"{what} OHLCV bars, a pure function of validated ticks, partitioned by exchange trading day.",
        schema=Schema(*_bar_fields()),
        partition_spec=PartitionSpec(
            PartitionField(3, 1000, IdentityTransform(), "trading_date"),
            PartitionField(1, 1001, IdentityTransform(), "exchange"),
        ),
        sort_order=SortOrder(SortField(2, IdentityTransform()), SortField(4, IdentityTransform())),
        properties=BAR_PROPERTIES,
    )


BARS_1M = _bar_table("1m", "1-minute")
BARS_5M = _bar_table("5m", "5-minute")
BARS_1H = _bar_table("1h", "1-hour (exchange-local hours)")
BARS_1D = _bar_table("1d", "Daily (the exchange trading day, Australia/Sydney for ASX)")
BAR_TABLES: dict[str, TableDef] = {"1m": BARS_1M, "5m": BARS_5M, "1h": BARS_1H, "1d": BARS_1D}


def _bar_values(start_id: int, prefix: str) -> list[NestedField]:
    names_types = [
        ("open", PRICE),
        ("high", PRICE),
        ("low", PRICE),
        ("close", PRICE),
        ("volume", LongType()),
        ("trade_count", LongType()),
        ("vwap", PRICE),
        ("first_sequence", LongType()),
        ("last_sequence", LongType()),
    ]
    return [NestedField(start_id + i, f"{prefix}_{n}", t, required=False) for i, (n, t) in enumerate(names_types)]


BAR_CORRECTIONS = TableDef(
    name="bar_corrections",
    doc="Every restatement of a final bar: old and new values, the ticks that caused it, when.",
    schema=Schema(
        NestedField(1, "interval", StringType(), required=False, doc="1m, 5m, 1h or 1d"),
        NestedField(2, "exchange", StringType(), required=False),
        NestedField(3, "symbol", StringType(), required=False),
        NestedField(4, "trading_date", DateType(), required=False),
        NestedField(5, "window_start", TimestamptzType(), required=False),
        NestedField(6, "old_revision", IntegerType(), required=False, doc="null: the bar did not exist"),
        NestedField(7, "new_revision", IntegerType(), required=False, doc="null: the bar was removed"),
        *_bar_values(8, "old"),
        *_bar_values(17, "new"),
        NestedField(
            26,
            "caused_by_sequences",
            ListType(27, LongType(), element_required=False),
            required=False,
            doc="sequence of the ticks (same exchange, symbol) whose arrival restated the bar; null: full rebuild",
        ),
        NestedField(28, "late_ticks", LongType(), required=False, doc="how many ticks caused it"),
        NestedField(29, "reason", StringType(), required=False, doc="late_ticks, or rebuild (partition re-run)"),
        NestedField(30, "corrected_at", TimestamptzType(), required=False),
        NestedField(31, "source_snapshot_id", LongType(), required=False, doc="ticks snapshot of the new values"),
        NestedField(32, "run_id", StringType(), required=False, doc="Dagster run that restated it"),
        NestedField(33, "outbox_id", StringType(), required=False, doc="write batch id (applied exactly once)"),
    ),
    partition_spec=PartitionSpec(PartitionField(4, 1000, IdentityTransform(), "trading_date")),
    sort_order=SortOrder(SortField(3, IdentityTransform()), SortField(5, IdentityTransform())),
    properties=BAR_PROPERTIES,
)

ALL_TABLES: tuple[TableDef, ...] = (RAW_TICKS, TICKS, QUARANTINE, *BAR_TABLES.values(), BAR_CORRECTIONS)

# Append-only by contract: K2 appends one row per read (allowed, denied or failed) and offers no way to delete or
# rewrite one. Kept out of ALL_TABLES: it is created by the first audited read, not by the ingest pipeline.
APPEND_ONLY_PROPERTY = "k2.append-only"
AUDIT_LOG = TableDef(
    name="audit_log",
    doc="Every read through K2 (API and CLI), allowed or denied: who, what, when, from where, outcome.",
    schema=Schema(
        NestedField(1, "event_id", StringType(), required=False, doc="Unique id of the audited call"),
        NestedField(2, "event_ts", TimestamptzType(), required=False, doc="When the call finished (UTC)"),
        NestedField(3, "user_id", StringType(), required=False, doc="Authenticated user (or the claimed one)"),
        NestedField(4, "role", StringType(), required=False, doc="trader, quant, compliance, admin"),
        NestedField(5, "auth_method", StringType(), required=False, doc="jwt, api_key or local"),
        NestedField(6, "action", StringType(), required=False, doc="ticks, bars, latest, asof_join, sql, replay, ..."),
        NestedField(7, "resource", StringType(), required=False, doc="Resources read, e.g. market_data.ticks"),
        NestedField(
            8, "symbols", ListType(9, StringType(), element_required=False), required=False, doc="Symbols asked for"
        ),
        NestedField(10, "range_start", TimestamptzType(), required=False, doc="Start of the time range asked for"),
        NestedField(11, "range_end", TimestamptzType(), required=False, doc="End of the time range asked for"),
        NestedField(12, "as_of", StringType(), required=False, doc="Time-travel reference (snapshot, tag, time)"),
        NestedField(13, "row_count", LongType(), required=False, doc="Rows returned"),
        NestedField(14, "outcome", StringType(), required=False, doc="allowed, denied or error"),
        NestedField(15, "detail", StringType(), required=False, doc="Why it was denied or failed; the SQL text"),
        NestedField(16, "client_address", StringType(), required=False, doc="Where the call came from"),
        NestedField(17, "duration_ms", DoubleType(), required=False, doc="Wall time of the call"),
    ),
    partition_spec=PartitionSpec(PartitionField(2, 1000, DayTransform(), "event_day")),
    properties={**DERIVED_PROPERTIES, APPEND_ONLY_PROPERTY: "true", "k2.retention": "7y"},
)

# Data quality (issue 4): sequence tracking, tracker state, GE results, quarantine releases. The first two are
# written with the Kafka watermark like ticks (ARCHITECTURE.md decision 2), so a re-run batch is never applied twice.
SEQUENCE_GAPS = TableDef(
    name="sequence_gaps",
    doc="Sequence gaps and resets per (exchange, symbol); a later arrival that fills a gap closes it (filled_at).",
    schema=Schema(
        NestedField(1, "gap_id", StringType(), required=False, doc="exchange|symbol|trading_date|epoch|first_missing"),
        NestedField(2, "kind", StringType(), required=False, doc="gap, or reset (sequence dropped by more than 50%)"),
        NestedField(3, "exchange", StringType(), required=False),
        NestedField(4, "symbol", StringType(), required=False),
        NestedField(5, "epoch", LongType(), required=False, doc="Sequence epoch of the symbol; a reset starts one"),
        NestedField(6, "trading_date", DateType(), required=False, doc="Trading date of the tick that revealed it"),
        NestedField(7, "expected", LongType(), required=False, doc="Sequence the tracker expected next"),
        NestedField(8, "received", LongType(), required=False, doc="Sequence that arrived instead"),
        NestedField(9, "first_missing", LongType(), required=False),
        NestedField(10, "last_missing", LongType(), required=False),
        NestedField(11, "missing_count", LongType(), required=False),
        NestedField(12, "filled_count", LongType(), required=False, doc="Missing sequences that arrived since"),
        NestedField(13, "detected_at", TimestamptzType(), required=False),
        NestedField(14, "filled_at", TimestamptzType(), required=False, doc="When the last missing sequence arrived"),
        NestedField(15, "batch_id", StringType(), required=False, doc="Run / batch that detected it"),
        NestedField(16, "raw_snapshot_id", LongType(), required=False, doc="raw_ticks snapshot the batch came from"),
    ),
    partition_spec=PartitionSpec(PartitionField(13, 1000, DayTransform(), "detected_day")),
    properties=INGEST_PROPERTIES,
)

SYMBOL_STATE = TableDef(
    name="symbol_state",
    doc="Sequence tracker and anomaly reference per (exchange, symbol) after the last validated batch.",
    schema=Schema(
        NestedField(1, "exchange", StringType(), required=False),
        NestedField(2, "symbol", StringType(), required=False),
        NestedField(3, "epoch", LongType(), required=False),
        NestedField(4, "trading_date", DateType(), required=False),
        NestedField(5, "last_sequence", LongType(), required=False, doc="Highest sequence of the current epoch"),
        NestedField(6, "last_arrival_sequence", LongType(), required=False),
        NestedField(7, "last_arrival_ts", TimestamptzType(), required=False),
        NestedField(8, "last_price", PRICE, required=False, doc="Last valid price: the next anomaly reference"),
        NestedField(9, "last_price_ts", TimestamptzType(), required=False),
        NestedField(10, "updated_at", TimestamptzType(), required=False),
        NestedField(11, "batch_id", StringType(), required=False),
    ),
    properties=INGEST_PROPERTIES,
)

DQ_RESULTS = TableDef(
    name="dq_results",
    doc="One row per Great Expectations expectation per check run: the compliance record of every quality gate.",
    schema=Schema(
        NestedField(1, "run_id", StringType(), required=False, doc="Dagster run (or caller) that ran the check"),
        NestedField(2, "asset", StringType(), required=False, doc="Asset / table checked, e.g. validated_ticks"),
        NestedField(3, "batch", StringType(), required=False, doc="Batch key (Kafka ranges) or partition checked"),
        NestedField(4, "suite", StringType(), required=False, doc="Suite name and version"),
        NestedField(5, "expectation", StringType(), required=False, doc="Expectation type"),
        NestedField(6, "column", StringType(), required=False, doc="Column(s) it is about"),
        NestedField(7, "success", BooleanType(), required=False),
        NestedField(8, "observed_value", StringType(), required=False, doc="Observed value or unexpected sample, JSON"),
        NestedField(9, "element_count", LongType(), required=False),
        NestedField(10, "unexpected_count", LongType(), required=False),
        NestedField(11, "checked_at", TimestamptzType(), required=False),
        NestedField(12, "snapshot_id", LongType(), required=False, doc="Audit-branch snapshot that was checked"),
        NestedField(13, "published", BooleanType(), required=False, doc="Whether the batch went on to main"),
        NestedField(14, "kwargs", StringType(), required=False, doc="Expectation arguments, JSON"),
    ),
    partition_spec=PartitionSpec(PartitionField(11, 1000, DayTransform(), "checked_day")),
    properties={**DERIVED_PROPERTIES, "k2.append-only": "true"},
)

QUARANTINE_RELEASES = TableDef(
    name="quarantine_releases",
    doc="Audit record of quarantined ticks a reviewer released into ticks (`k2 quarantine release`).",
    schema=Schema(
        NestedField(1, "release_id", StringType(), required=False),
        NestedField(2, "released_at", TimestamptzType(), required=False),
        NestedField(3, "released_by", StringType(), required=False),
        NestedField(4, "reason", StringType(), required=False, doc="Reason code released, e.g. anomaly"),
        NestedField(5, "note", StringType(), required=False),
        NestedField(6, "kafka_topic", StringType(), required=False),
        NestedField(7, "kafka_partition", IntegerType(), required=False),
        NestedField(8, "kafka_offset", LongType(), required=False),
        NestedField(9, "exchange", StringType(), required=False),
        NestedField(10, "symbol", StringType(), required=False),
        NestedField(11, "sequence", LongType(), required=False),
        NestedField(12, "exchange_ts", TimestamptzType(), required=False),
        NestedField(13, "price", PRICE, required=False),
        NestedField(14, "outcome", StringType(), required=False, doc="published, or duplicate (already in ticks)"),
        NestedField(15, "ticks_snapshot_id", LongType(), required=False, doc="ticks snapshot that added it"),
    ),
    partition_spec=PartitionSpec(PartitionField(2, 1000, DayTransform(), "released_day")),
    properties={**DERIVED_PROPERTIES, "k2.append-only": "true"},
)

QUALITY_TABLES: tuple[TableDef, ...] = (SEQUENCE_GAPS, SYMBOL_STATE, DQ_RESULTS, QUARANTINE_RELEASES)
