from __future__ import annotations

import struct

import polars as pl

from k2_resources.avro import decode_values, encode_ticks, frame, split_frame
from k2_resources.schemas import FileSchemaStore

TICK = {
    "exchange": "ASX",
    "symbol": "BHP",
    "sequence": 42,
    "exchange_ts": 1_795_561_200_065_386,
    "ingest_ts": 1_795_561_200_066_000,
    "price": 45_005_000,
    "volume": 300,
    "trade_id": "BHP-42",
    "side": "BUY",
    "conditions": ["XT"],
}


def test_encoded_value_starts_with_magic_byte_and_schema_id() -> None:
    (value,) = encode_ticks([TICK], FileSchemaStore(), 1)
    magic, schema_id = struct.unpack(">bI", value[:5])
    assert (magic, schema_id) == (0, 1)
    assert split_frame(value)[0] == 1


def test_round_trip_preserves_every_field_exactly() -> None:
    values = encode_ticks([TICK, {**TICK, "sequence": 43, "conditions": []}], FileSchemaStore(), 1)
    decoded, errors = decode_values(values, FileSchemaStore())
    assert errors == [None, None]
    assert decoded.row(0, named=True) == TICK
    assert decoded["sequence"].to_list() == [42, 43]


def test_undecodable_values_are_reported_per_value_not_dropped() -> None:
    (good,) = encode_ticks([TICK], FileSchemaStore(), 1)
    values = [good, b"\x07garbage", frame(9999, good[5:]), good[:8], None]
    decoded, errors = decode_values(values, FileSchemaStore())
    assert decoded.height == 5
    assert errors[0] is None
    assert errors[1] is not None and errors[1].startswith("bad_frame")
    assert errors[2] is not None and errors[2].startswith("unknown_schema_id")
    assert errors[3] is not None and errors[3].startswith("bad_avro")
    assert errors[4] is not None and "tombstone" in errors[4]
    assert decoded.slice(1).select(pl.all().is_null().all()).row(0) == (True,) * decoded.width
