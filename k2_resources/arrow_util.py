"""Exact conversions between scaled integers and Arrow decimals, vectorised over whole columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PRICE_SCALE = 6
PRICE_TYPE = pa.decimal128(18, PRICE_SCALE)


def scaled_to_decimal(values: pa.Array | pa.ChunkedArray, scale: int = PRICE_SCALE, precision: int = 18) -> pa.Array:
    """int64 counts of 10^-scale units -> decimal128(precision, scale), bit-exact.

    A decimal128 is a little-endian int128 of the unscaled value, so the buffer is the int64 sign-extended to two
    words: no per-value arithmetic, no float.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    ints = values.cast(pa.int64())
    raw = ints.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    words = np.empty((len(raw), 2), dtype=np.int64)
    words[:, 0] = raw
    words[:, 1] = raw >> 63
    validity = ints.buffers()[0] if ints.null_count else None
    if validity is not None and ints.offset:
        validity = pc.is_valid(ints).buffers()[1]
    return pa.Array.from_buffers(
        pa.decimal128(precision, scale), len(raw), [validity, pa.py_buffer(words.tobytes())], null_count=ints.null_count
    )


def decimal_to_scaled(values: pa.Array | pa.ChunkedArray, scale: int = PRICE_SCALE) -> pa.Array:
    """decimal128(p, scale) -> int64 count of 10^-scale units (values must fit int64)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], type=values.type)
    typ = values.type
    if not pa.types.is_decimal128(typ) or typ.scale != scale:
        values = values.cast(pa.decimal128(18, scale))
    words = np.frombuffer(values.buffers()[1], dtype=np.int64)[2 * values.offset : 2 * (values.offset + len(values))]
    low = words[0::2].copy()
    mask = None if values.null_count == 0 else np.asarray(pc.is_null(values))
    return pa.array(low, type=pa.int64(), mask=mask)


def conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """Cast a frame computed in integer space (scaled prices, microsecond ints) to a table's Arrow schema.

    Missing columns become nulls; extra columns are dropped.
    """
    columns = []
    for target_field in target:
        if target_field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, target_field.type))
            continue
        col = table[target_field.name]
        if col.type == target_field.type:
            columns.append(col)
        elif pa.types.is_decimal(target_field.type) and pa.types.is_integer(col.type):
            columns.append(scaled_to_decimal(col, target_field.type.scale, target_field.type.precision))
        elif pa.types.is_timestamp(target_field.type) and pa.types.is_integer(col.type):
            columns.append(col.cast(pa.int64()).cast(pa.timestamp("us")).cast(target_field.type))
        else:
            columns.append(col.cast(target_field.type))
    return pa.Table.from_arrays(columns, schema=target)


def to_integer_space(table: pa.Table) -> pa.Table:
    """The inverse of `conform`: decimals to scaled int64, timestamps to int64 microseconds UTC."""
    columns = []
    names = []
    for field_ in table.schema:
        col = table[field_.name]
        if pa.types.is_decimal(field_.type):
            col = decimal_to_scaled(col, field_.type.scale)
        elif pa.types.is_timestamp(field_.type):
            col = col.cast(pa.timestamp("us", tz="UTC") if field_.type.tz else pa.timestamp("us")).cast(pa.int64())
        columns.append(col)
        names.append(field_.name)
    return pa.table(columns, names=names)
