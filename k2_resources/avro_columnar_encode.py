"""Schemaless Avro encoded a whole column at a time with numpy and pyarrow (the producer's half of
k2_resources/avro_columnar.py, which decodes): each field of every record becomes one binary column, and a record is
the element-wise concatenation of its fields' columns behind the Confluent frame header. Same schema coverage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_resources.avro_columnar import (
    EMPTY_BYTES,
    MAX_VARINT_BYTES,
    UnsupportedSchemaError,
    check_supported,
    type_name,
    union_branch,
)
from k2_resources.errors import SchemaError


def _zigzag_encode(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.int64)
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def varint_array(raw: np.ndarray) -> pa.Array:
    """Each unsigned integer as its Avro/protobuf varint bytes, as a binary array."""
    raw = raw.astype(np.uint64, copy=False)
    nbytes = np.ones(len(raw), dtype=np.int64)
    for k in range(1, MAX_VARINT_BYTES):
        nbytes += raw >= (np.uint64(1) << np.uint64(7 * k))
    width = int(nbytes.max()) if len(raw) else 1
    matrix = np.empty((len(raw), width), dtype=np.uint8)
    for k in range(width):
        byte = ((raw >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        matrix[:, k] = byte | np.where(k < nbytes - 1, 0x80, 0).astype(np.uint8)
    data = matrix[np.arange(width)[None, :] < nbytes[:, None]]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum(nbytes, out=offsets[1:])
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.large_binary(), len(raw), buffers).cast(pa.binary())


def _long_bytes(values: pa.Array) -> pa.Array:
    return varint_array(_zigzag_encode(values.to_numpy(zero_copy_only=False)))


def _require_no_nulls(values: pa.Array, what: str) -> None:
    if values.null_count:
        raise SchemaError(f"{what}: {values.null_count} null value(s) in a field whose Avro type is not nullable")


def _encode_value(node: Any, values: pa.Array, what: str) -> pa.Array:
    name = type_name(node)
    if name == "union":
        null_index, branch = union_branch(node)
        present = pc.is_valid(values)
        filled = values.fill_null(_placeholder(branch, values.type))
        branch_bytes = _encode_value(branch, filled, what)
        tagged = pc.binary_join_element_wise(
            pa.scalar(bytes([2 * (1 - null_index)]), pa.binary()), branch_bytes, EMPTY_BYTES
        )
        return pc.if_else(present, tagged, pa.scalar(bytes([2 * null_index]), pa.binary()))
    _require_no_nulls(values, what)
    if name == "null":
        return pa.array([b""] * len(values), pa.binary())
    if name in ("long", "int"):
        return _long_bytes(values.cast(pa.int64()))
    if name == "boolean":
        raw = values.cast(pa.bool_()).to_numpy(zero_copy_only=False).astype(np.uint8)
        return _fixed_width(raw.reshape(-1, 1))
    if name in ("float", "double"):
        dtype = "<f4" if name == "float" else "<f8"
        raw = values.to_numpy(zero_copy_only=False).astype(dtype)
        return _fixed_width(raw.view(np.uint8).reshape(len(raw), -1))
    if name in ("string", "bytes"):
        as_bytes = values.cast(pa.binary())
        return pc.binary_join_element_wise(_long_bytes(pc.binary_length(as_bytes)), as_bytes, EMPTY_BYTES)
    if name == "fixed":
        return values.cast(pa.binary())
    if name == "enum":
        index = pc.index_in(values.cast(pa.string()), value_set=pa.array(node["symbols"], pa.string()))
        if index.null_count:
            unknown = pc.filter(values, pc.is_null(index)).unique().to_pylist()[:5]
            raise SchemaError(f"{what}: {unknown} are not symbols of enum {node.get('name')} {node['symbols']}")
        return _long_bytes(index)
    if name == "array":
        if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
            raise SchemaError(f"{what}: expected a list column for an Avro array, got {values.type}")
        counts = pc.list_value_length(values).cast(pa.int64())
        items = _encode_value(node["items"], pc.list_flatten(values), what)
        joined = pc.binary_join(pa.ListArray.from_arrays(_list_offsets(values), items), EMPTY_BYTES)
        block = pc.binary_join_element_wise(_long_bytes(counts), joined, pa.scalar(b"\x00", pa.binary()), EMPTY_BYTES)
        return pc.if_else(pc.equal(counts, 0), pa.scalar(b"\x00", pa.binary()), block)
    raise UnsupportedSchemaError(f"type {name!r} is not supported column-wise")


def _list_offsets(values: pa.Array) -> pa.Array:
    """Offsets of a list array relative to its flattened values (handles sliced arrays)."""
    offsets = values.offsets.to_numpy(zero_copy_only=False).astype(np.int32)
    return pa.array(offsets - offsets[0], pa.int32())


def _fixed_width(matrix: np.ndarray) -> pa.Array:
    n, width = matrix.shape
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), n, [None, pa.py_buffer(np.ascontiguousarray(matrix).tobytes())]
    ).cast(pa.binary())


def _placeholder(branch: Any, arrow_type: pa.DataType) -> Any:
    """A value to stand in for nulls while encoding the non-null branch (its bytes are then discarded)."""
    name = type_name(branch)
    if name == "enum":
        return branch["symbols"][0]
    if name == "array":
        return pa.scalar([], arrow_type)
    if name in ("string",):
        return ""
    if name in ("bytes", "fixed"):
        return b"\x00" * int(branch.get("size", 0)) if name == "fixed" else b""
    if name == "boolean":
        return False
    return 0


def encode_columns(schema: Mapping[str, Any], table: pa.Table, header: bytes) -> pa.Array:
    """`header` + the Avro encoding of each row of `table` (columns named like the record's fields)."""
    check_supported(schema)
    parts: list[pa.Array | pa.Scalar] = [pa.scalar(header, pa.binary())]
    for f in schema["fields"]:
        if f["name"] not in table.column_names:
            # A writer with a newer schema writes a field's default for data that lacks it; the default of an
            # optional field (a union led by null) is null: its branch index as a zigzag varint, the same every row.
            branches = f["type"] if isinstance(f["type"], list) else []
            if f.get("default", ...) is None and "null" in branches:
                parts.append(pa.scalar(bytes([2 * branches.index("null")]), pa.binary()))
                continue
            raise SchemaError(f"column {f['name']!r} of schema {schema.get('name')} is missing from the frame")
        column = table[f["name"]].combine_chunks()
        parts.append(_encode_value(f["type"], column, f"field {f['name']!r}"))
    if table.num_rows == 0:
        return pa.array([], pa.binary())
    return pc.binary_join_element_wise(*parts, EMPTY_BYTES)
