"""Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro body) for tick values."""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from functools import cache
from typing import Any

import fastavro
import polars as pl

from k2_resources.errors import DecodeError, UnknownSchemaIdError
from k2_resources.schemas import SchemaStore

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")

# Column order and polars dtypes of a decoded tick; timestamps stay integer microseconds until the table writer
# gives them their Iceberg type, so nothing here depends on a time zone.
TICK_COLUMNS: dict[str, pl.DataType] = {
    "exchange": pl.String(),
    "symbol": pl.String(),
    "sequence": pl.Int64(),
    "exchange_ts": pl.Int64(),
    "ingest_ts": pl.Int64(),
    "price": pl.Int64(),
    "volume": pl.Int64(),
    "trade_id": pl.String(),
    "side": pl.String(),
    "conditions": pl.List(pl.String()),
}


def frame(schema_id: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC_BYTE, schema_id) + body


def split_frame(value: bytes) -> tuple[int, bytes]:
    """Schema id and Avro body of a framed value; DecodeError if the frame is not Confluent's."""
    if len(value) < _HEADER.size:
        raise DecodeError(f"value of {len(value)} bytes is shorter than the 5-byte Confluent header")
    magic, schema_id = _HEADER.unpack_from(value)
    if magic != MAGIC_BYTE:
        raise DecodeError(f"magic byte is {magic}, expected 0: the value is not Confluent-framed Avro")
    return schema_id, value[_HEADER.size :]


def _strip_logical_types(node: Any) -> Any:
    """The same schema without logical types: timestamps decode as plain longs, which is what we store."""
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


@cache
def _parsed(schema_json: str) -> Any:
    import json

    return fastavro.parse_schema(_strip_logical_types(json.loads(schema_json)))


def _parsed_for(store: SchemaStore, schema_id: int) -> Any:
    import json

    return _parsed(json.dumps(store.schema(schema_id), sort_keys=True))


def encode_ticks(rows: Sequence[dict[str, Any]], store: SchemaStore, schema_id: int) -> list[bytes]:
    """Frame and encode tick records (timestamps as integer microseconds)."""
    schema = _parsed_for(store, schema_id)
    header = _HEADER.pack(MAGIC_BYTE, schema_id)
    out: list[bytes] = []
    buf = io.BytesIO()
    for row in rows:
        buf.seek(0)
        buf.truncate()
        fastavro.schemaless_writer(buf, schema, row)
        out.append(header + buf.getvalue())
    return out


def decode_values(values: Sequence[bytes | None], store: SchemaStore) -> tuple[pl.DataFrame, list[str | None]]:
    """Decode framed values into a tick frame aligned with `values`.

    Returns the frame (rows of undecodable values are all null) and, per value, None or the reason it could not
    be decoded. Nothing is dropped: the caller keeps the bytes of every failed value.
    """
    records: list[dict[str, Any] | None] = []
    errors: list[str | None] = []
    readers: dict[int, Any] = {}
    for value in values:
        try:
            if value is None:
                raise DecodeError("value is null (tombstone)")
            schema_id, body = split_frame(value)
            reader = readers.get(schema_id)
            if reader is None:
                reader = readers[schema_id] = _parsed_for(store, schema_id)
            records.append(fastavro.schemaless_reader(io.BytesIO(body), reader, None))  # type: ignore[arg-type]
            errors.append(None)
        except UnknownSchemaIdError as exc:
            records.append(None)
            errors.append(f"unknown_schema_id: {exc}")
        except DecodeError as exc:
            records.append(None)
            errors.append(f"bad_frame: {exc}")
        except Exception as exc:  # noqa: BLE001 - any Avro failure means the body is corrupt; keep its bytes
            records.append(None)
            errors.append(f"bad_avro: {type(exc).__name__}: {exc}")
    return pl.DataFrame(records, schema=TICK_COLUMNS, orient="row") if records else pl.DataFrame(
        schema=TICK_COLUMNS
    ), errors
