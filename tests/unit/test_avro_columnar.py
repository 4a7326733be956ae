"""The columnar Avro codec must agree with fastavro, the reference implementation, value for value."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import polars as pl
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from k2_resources.avro import TICK_COLUMNS, _strip_logical_types, decode_column, decode_values, encode_frame, frame
from k2_resources.errors import UnknownSchemaIdError
from k2_resources.schemas import FileSchemaStore, SchemaStore, load_schema_file

STORE = FileSchemaStore()
TICK_SCHEMA = load_schema_file("tick.avsc")
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=12)

ticks = st.lists(
    st.fixed_dictionaries(
        {
            "exchange": TEXT,
            "symbol": TEXT,
            "sequence": INT64,
            "exchange_ts": INT64,
            "ingest_ts": INT64,
            "price": INT64,
            "volume": INT64,
            "trade_id": TEXT,
            "side": st.sampled_from(["BUY", "SELL", "UNKNOWN"]),
            "conditions": st.lists(TEXT, max_size=3),
        }
    ),
    min_size=1,
    max_size=30,
)


def reference_encode(rows: list[dict[str, Any]], schema: dict[str, Any], schema_id: int = 1) -> list[bytes]:
    parsed = fastavro.parse_schema(_strip_logical_types(schema))
    out = []
    for row in rows:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, row)
        out.append(frame(schema_id, buf.getvalue()))
    return out


def reference_decode(value: bytes, schema: dict[str, Any]) -> dict[str, Any] | None:
    """fastavro's reading of a body, or None if it fails or leaves bytes unread."""
    body = io.BytesIO(value[5:])
    try:
        record = fastavro.schemaless_reader(body, fastavro.parse_schema(_strip_logical_types(schema)), None)
    except Exception:  # noqa: BLE001 - any failure is "undecodable"
        return None
    return record if body.tell() == len(value) - 5 else None  # type: ignore[return-value]


@settings(max_examples=60, deadline=None)
@given(ticks)
def test_column_encoding_is_byte_for_byte_what_fastavro_writes(rows: list[dict[str, Any]]) -> None:
    frame_ = pl.DataFrame(rows, schema=TICK_COLUMNS, orient="row")
    assert encode_frame(frame_, STORE, 1).to_pylist() == reference_encode(rows, TICK_SCHEMA)


@settings(max_examples=60, deadline=None)
@given(ticks)
def test_column_decoding_round_trips_every_field(rows: list[dict[str, Any]]) -> None:
    decoded, errors = decode_values(reference_encode(rows, TICK_SCHEMA), STORE)
    assert errors == [None] * len(rows)
    assert decoded.to_dicts() == rows


def test_every_truncation_of_a_value_is_reported_and_the_rest_of_the_batch_survives() -> None:
    (good,) = reference_encode([_tick()], TICK_SCHEMA)
    values = [good[:cut] for cut in range(6, len(good))] + [good]
    decoded, errors = decode_values(values, STORE)
    assert all(e is not None and e.startswith("bad_avro") for e in errors[:-1])
    assert errors[-1] is None
    assert decoded.row(len(values) - 1, named=True) == _tick()
    assert decoded.slice(0, len(values) - 1).null_count().row(0) == (len(values) - 1,) * decoded.width


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(min_value=0, max_value=60))
def test_arbitrary_bytes_decode_exactly_when_fastavro_reads_them_completely(noise: bytes, keep: int) -> None:
    (good,) = reference_encode([_tick()], TICK_SCHEMA)
    value = good[: 5 + keep] + noise  # a valid prefix followed by garbage, or garbage from the start
    expected = reference_decode(value, TICK_SCHEMA)
    decoded, errors = decode_values([value], STORE)
    if expected is None:
        assert errors[0] is not None and errors[0].startswith("bad_avro")
    else:
        assert errors[0] is None
        assert decoded.row(0, named=True) == expected


def test_trailing_bytes_and_invalid_utf8_are_undecodable_with_a_reason() -> None:
    (good,) = reference_encode([_tick()], TICK_SCHEMA)
    bad_utf8 = good.replace(b"BHP", b"\xff\xfeP", 1)
    decoded, errors = decode_values([good + b"\x00", bad_utf8, good], STORE)
    assert errors[0] == "bad_avro: bytes left over after the record"
    assert errors[1] == "bad_avro: string is not valid UTF-8"
    assert errors[2] is None
    assert decoded["symbol"].to_list() == [None, None, "BHP"]


class TwoSchemaStore(SchemaStore):
    """id 1: the tick schema; id 2: an evolved tick with an optional venue; id 3: a nested record (not columnar)."""

    EVOLVED = {
        **TICK_SCHEMA,
        "fields": [*TICK_SCHEMA["fields"], {"name": "venue", "type": ["null", "string"], "default": None}],
    }
    NESTED = {
        "type": "record",
        "name": "Wrapped",
        "fields": [
            {"name": "symbol", "type": "string"},
            {"name": "meta", "type": {"type": "record", "name": "Meta", "fields": [{"name": "x", "type": "long"}]}},
        ],
    }

    def schema(self, schema_id: int) -> dict[str, Any]:
        found = {1: TICK_SCHEMA, 2: self.EVOLVED, 3: self.NESTED}.get(schema_id)
        if found is None:
            raise UnknownSchemaIdError(f"schema id {schema_id} is not registered")
        return json.loads(json.dumps(found))

    def latest_id(self, subject: str) -> int:
        return 2


def test_a_batch_mixing_schema_ids_decodes_each_with_its_writer_schema() -> None:
    store = TwoSchemaStore()
    v1 = reference_encode([_tick(sequence=1)], TICK_SCHEMA, 1)
    v2 = reference_encode(
        [{**_tick(sequence=2), "venue": "CXA"}, {**_tick(sequence=3), "venue": None}], store.EVOLVED, 2
    )
    v3 = reference_encode([{"symbol": "CBA", "meta": {"x": 5}}], store.NESTED, 3)
    decoded, errors = decode_column(pa.array([v2[0], *v1, v3[0], v2[1], b"\x00\x00\x00\x00\x07rest"]), store)
    assert errors.to_pylist()[:4] == [None, None, None, None]
    assert errors.to_pylist()[4].startswith("unknown_schema_id")
    assert decoded["sequence"].to_list() == [2, 1, None, 3, None]
    assert decoded["symbol"].to_list() == ["BHP", "BHP", "CBA", "BHP", None]  # id 3 went through fastavro


def test_encoding_a_frame_with_an_unknown_enum_symbol_is_refused() -> None:
    import pytest

    from k2_resources.errors import SchemaError

    frame_ = pl.DataFrame([{**_tick(), "side": "SIDEWAYS"}], schema=TICK_COLUMNS, orient="row")
    with pytest.raises(SchemaError, match="SIDEWAYS"):
        encode_frame(frame_, STORE, 1)


def _tick(**changes: Any) -> dict[str, Any]:
    tick = {
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
    return {**tick, **changes}


def test_a_frame_without_an_optional_field_encodes_its_null_default() -> None:
    """A producer framing with a newer schema id (an added optional field) still encodes older frames."""
    store = TwoSchemaStore()
    frame_ = pl.DataFrame([_tick(sequence=7)], schema=TICK_COLUMNS, orient="row")
    value = encode_frame(frame_, store, 2)[0].as_py()
    assert value[:5] == frame(2, b"")
    assert (
        fastavro.schemaless_reader(
            io.BytesIO(value[5:]), fastavro.parse_schema(_strip_logical_types(store.EVOLVED)), None
        )["venue"]
        is None
    )
    decoded, errors = decode_values([value], store)
    assert errors == [None]
    assert decoded.row(0, named=True)["sequence"] == 7
