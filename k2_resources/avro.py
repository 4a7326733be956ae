"""Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro body) for tick values."""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from functools import cache
from typing import Any

import fastavro
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from k2_resources import avro_columnar, avro_columnar_encode
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


def _plain_schema(store: SchemaStore, schema_id: int) -> dict[str, Any]:
    """The writer schema of `schema_id` without logical types (UnknownSchemaIdError if the store lacks it)."""
    plain: dict[str, Any] = _strip_logical_types(store.schema(schema_id))
    return plain


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


@cache
def _arrow_types() -> dict[str, pa.DataType]:
    """The Arrow type of each tick column (computed on first use: nothing runs at import)."""
    return {f.name: f.type for f in pl.DataFrame(schema=TICK_COLUMNS).to_arrow().schema}


def encode_frame(ticks: pl.DataFrame, store: SchemaStore, schema_id: int) -> pa.Array:
    """Frame and encode a whole frame of ticks (integer space) column-wise: a binary array, one value per row.

    Byte-for-byte what `encode_ticks` produces; falls back to it for schemas the columnar codec does not cover.
    """
    schema = _plain_schema(store, schema_id)
    header = _HEADER.pack(MAGIC_BYTE, schema_id)
    try:
        return avro_columnar_encode.encode_columns(schema, ticks.to_arrow(), header)
    except avro_columnar.UnsupportedSchemaError:
        return pa.array(encode_ticks(ticks.to_dicts(), store, schema_id), pa.binary())


def decode_values(values: Sequence[bytes | None], store: SchemaStore) -> tuple[pl.DataFrame, list[str | None]]:
    """Decode framed values into a tick frame aligned with `values`.

    Returns the frame (rows of undecodable values are all null) and, per value, None or the reason it could not
    be decoded. Nothing is dropped: the caller keeps the bytes of every failed value.
    """
    frame_, errors = decode_column(pa.array(values, pa.binary()), store)
    return frame_, errors.to_pylist()


def decode_column(values: pa.Array | pa.ChunkedArray, store: SchemaStore) -> tuple[pl.DataFrame, pa.Array]:
    """`decode_values` over an Arrow binary column, vectorised: the errors come back as a string array.

    Frames are checked column-wise (null, shorter than the header, wrong magic byte, unknown schema id); the
    bodies of each schema id are decoded by the columnar codec (fastavro per record for schemas it does not cover).
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.binary())
    n = len(values)
    if n == 0:
        return pl.DataFrame(schema=TICK_COLUMNS), pa.array([], pa.string())
    if not pa.types.is_large_binary(values.type):
        values = values.cast(pa.large_binary())
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + n + 1]
    data_buffer = values.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    valid = np.asarray(pc.is_valid(values))
    long_enough = valid & (ends - starts >= _HEADER.size)
    head = np.zeros((n, _HEADER.size), dtype=np.uint8)
    head[long_enough] = data[starts[long_enough, None] + np.arange(_HEADER.size)]
    magic_ok = long_enough & (head[:, 0] == MAGIC_BYTE)
    schema_ids = head[:, 1:].astype(np.int64) @ np.array([1 << 24, 1 << 16, 1 << 8, 1], dtype=np.int64)

    errors = _frame_errors(values, valid, long_enough, head[:, 0])
    columns: dict[str, pa.Array] = {}
    for schema_id in np.unique(schema_ids[magic_ok]).tolist():
        rows = np.flatnonzero(magic_ok & (schema_ids == schema_id))
        try:
            schema = _plain_schema(store, schema_id)
        except UnknownSchemaIdError as exc:
            errors = _set(errors, rows, f"unknown_schema_id: {exc}", n)
            continue
        decoded, reasons = _decode_group(schema, store, schema_id, values, data, starts[rows] + _HEADER.size, rows)
        errors = _set_many(errors, rows, reasons, n)
        columns = _merge(columns, decoded, rows, n)
    return _tick_frame(columns, n), errors


def _frame_errors(values: pa.Array, valid: np.ndarray, long_enough: np.ndarray, magic: np.ndarray) -> pa.Array:
    """Per value: why its Confluent frame is unusable, or null."""
    if bool(valid.all()) and bool(long_enough.all()) and not bool((magic != MAGIC_BYTE).any()):
        return pa.nulls(len(values), pa.string())  # the usual batch: every frame fine, no strings to build
    lengths = pc.cast(pc.binary_length(values), pa.string())
    short = pc.binary_join_element_wise(
        "bad_frame: value of ", lengths, " bytes is shorter than the 5-byte Confluent header", ""
    )
    wrong_magic = pc.binary_join_element_wise(
        "bad_frame: magic byte is ",
        pa.array(magic.astype(np.int64)).cast(pa.string()),
        ", expected 0: the value is not Confluent-framed Avro",
        "",
    )
    tombstone = pa.scalar("bad_frame: value is null (tombstone)", pa.string())
    nothing = pa.scalar(None, pa.string())
    out = pc.if_else(pa.array(long_enough & (magic != MAGIC_BYTE)), wrong_magic, nothing)
    out = pc.if_else(pa.array(valid & ~long_enough), short, out)
    return pc.if_else(pa.array(~valid), tombstone, out)


def _set(errors: pa.Array, rows: np.ndarray, message: str, n: int) -> pa.Array:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return pc.if_else(pa.array(mask), pa.scalar(message, pa.string()), errors)


def _set_many(errors: pa.Array, rows: np.ndarray, reasons: pa.Array, n: int) -> pa.Array:
    if reasons.null_count == len(reasons):
        return errors
    placed = avro_columnar.scatter(reasons, rows, n) if len(rows) != n else reasons
    return pc.coalesce(errors, placed)


def _merge(columns: dict[str, pa.Array], decoded: dict[str, pa.Array], rows: np.ndarray, n: int) -> dict[str, pa.Array]:
    """Place one schema id's decoded columns at their rows of the batch."""
    merged = dict(columns)
    for name, col in decoded.items():
        arrow_type = _arrow_types().get(name)
        if arrow_type is None:
            continue  # fields the tick frame does not have
        col = col if col.type == arrow_type else col.cast(arrow_type)
        placed = col if len(rows) == n else avro_columnar.scatter(col, rows, n)
        merged[name] = pc.coalesce(merged[name], placed) if name in merged else placed
    return merged


def _decode_group(
    schema: dict[str, Any],
    store: SchemaStore,
    schema_id: int,
    values: pa.Array,
    data: np.ndarray,
    body_starts: np.ndarray,
    rows: np.ndarray,
) -> tuple[dict[str, pa.Array], pa.Array]:
    """Decoded columns and per-row error (null if fine) for the values of one schema id."""
    ends = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset + 1 : values.offset + len(values) + 1]
    try:
        result = avro_columnar.decode_bodies(schema, data, body_starts, ends[rows])
    except avro_columnar.UnsupportedSchemaError:
        return _decode_group_per_record(store, schema_id, values.take(pa.array(rows)))
    reasons = avro_columnar.reasons(result.error)
    if reasons.null_count != len(reasons):
        reasons = pc.binary_join_element_wise("bad_avro: ", reasons, "")
    return result.columns, reasons


def _decode_group_per_record(
    store: SchemaStore, schema_id: int, values: pa.Array
) -> tuple[dict[str, pa.Array], pa.Array]:
    """fastavro record by record: only for schemas the columnar codec does not cover."""
    reader = _parsed_for(store, schema_id)
    records: list[dict[str, Any] | None] = []
    errors: list[str | None] = []
    for value in values.to_pylist():
        try:
            records.append(fastavro.schemaless_reader(io.BytesIO(value[_HEADER.size :]), reader, None))  # type: ignore[arg-type]
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - any Avro failure means the body is corrupt; keep its bytes
            records.append(None)
            errors.append(f"bad_avro: {type(exc).__name__}: {exc}")
    frame_ = pl.DataFrame(records, schema=TICK_COLUMNS, orient="row")
    return {name: frame_[name].to_arrow() for name in frame_.columns}, pa.array(errors, pa.string())


def _tick_frame(columns: dict[str, pa.Array], n: int) -> pl.DataFrame:
    """The decoded columns as TICK_COLUMNS (fields the writer schema lacks are null; extra fields are dropped)."""
    series = []
    for name, dtype in TICK_COLUMNS.items():
        col = columns.get(name)
        if col is None:
            series.append(pl.Series(name, [None] * n, dtype=dtype))
            continue
        s = pl.Series(name, col)
        series.append(s if s.dtype == dtype else s.cast(dtype))
    return pl.DataFrame(series)
