"""Schemaless Avro encoded and decoded a whole column at a time with numpy and pyarrow, no Python loop per record.

Avro's binary encoding is a sequence of fields, so a batch of records can be decoded field by field: one cursor
per record, advanced for all records at once. Variable-length integers are decoded byte position by byte position
over the records that still need bytes; strings are gathered with one fancy-index over the buffer.

Covers the types a flat tick schema uses: null, boolean, int, long, float, double, string, bytes, enum, fixed,
arrays of those, unions of null with one of those, and a top-level record. Any other schema raises
UnsupportedSchemaError and callers fall back to fastavro record by record. Timestamps are decoded as the longs they
are on the wire (logical types are stripped before the schema gets here).

A value is reported corrupt (and its row set to null) when it is truncated, has a malformed varint, a negative or
oversized length, an enum or union index out of range, invalid UTF-8 in a string, or bytes left over after the
record: fastavro tolerates trailing bytes; a value with trailing garbage is not a valid encoding of the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2_resources.errors import SchemaError

# Corruption codes, per record. 0 means the record decoded.
OK, TRUNCATED, BAD_VARINT, BAD_LENGTH, BAD_ENUM, BAD_UNION, BAD_UTF8, BAD_BOOLEAN, TRAILING = range(9)
REASONS = [
    "",
    "value ends before the record does",
    "malformed variable-length integer",
    "negative or oversized length",
    "enum index out of range",
    "union branch index out of range",
    "string is not valid UTF-8",
    "boolean byte is neither 0 nor 1",
    "bytes left over after the record",
]
_MAX_VARINT_BYTES = 10
_EMPTY = pa.scalar(b"", pa.binary())


class UnsupportedSchemaError(SchemaError):
    """The schema uses a type the columnar codec does not cover; use fastavro per record instead."""


def _type_name(node: Any) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    return str(node["type"]) if isinstance(node["type"], str) else "nested"


def _union_branch(node: list[Any]) -> tuple[int, Any]:
    """(index of null, the other branch) of a [null, T] union; anything else is unsupported."""
    names = [_type_name(b) for b in node]
    if len(node) != 2 or "null" not in names or names.count("null") != 1:
        raise UnsupportedSchemaError(f"only [null, T] unions are supported, not {names}")
    null_index = names.index("null")
    return null_index, node[1 - null_index]


def check_supported(schema: Mapping[str, Any]) -> None:
    """Raise UnsupportedSchemaError unless every field of the record schema can be handled column-wise."""
    if _type_name(dict(schema)) != "record":
        raise UnsupportedSchemaError("the top-level schema must be a record")

    def visit(node: Any, depth: int) -> None:
        name = _type_name(node)
        if name in ("null", "boolean", "int", "long", "float", "double", "string", "bytes", "enum", "fixed"):
            return
        if name == "union":
            visit(_union_branch(node)[1], depth)
        elif name == "array" and depth == 0:
            visit(node["items"], depth + 1)
        else:
            raise UnsupportedSchemaError(f"type {name!r} is not supported column-wise")

    for f in schema["fields"]:
        visit(f["type"], 0)


# ---------------------------------------------------------------------------------------------------------- decode


def _zigzag_decode(raw: np.ndarray) -> np.ndarray:
    return (raw >> np.uint64(1)).astype(np.int64) ^ -(raw & np.uint64(1)).astype(np.int64)


def _scatter(values: pa.Array, positions: np.ndarray, length: int) -> pa.Array:
    """An array of `length` nulls with `values` placed at `positions`."""
    index = np.full(length, -1, dtype=np.int64)
    index[positions] = np.arange(len(positions), dtype=np.int64)
    return values.take(pa.array(index, mask=index < 0))


def _invalid_utf8(values: pa.Array) -> np.ndarray:
    """Positions of values that are not valid UTF-8, found by bisection with Arrow's validating cast."""
    try:
        values.cast(pa.string())
        return np.empty(0, dtype=np.int64)
    except pa.ArrowInvalid:
        if len(values) == 1:
            return np.zeros(1, dtype=np.int64)
    half = len(values) // 2
    return np.concatenate([_invalid_utf8(values.slice(0, half)), half + _invalid_utf8(values.slice(half))])


class ColumnDecoder:
    """Decodes records whose bodies are data[pos[i]:end[i]], all written with one schema."""

    def __init__(self, data: np.ndarray, pos: np.ndarray, end: np.ndarray) -> None:
        self.data = data
        self.pos = pos.astype(np.int64, copy=True)
        self.end = end.astype(np.int64, copy=False)
        self.error = np.zeros(len(pos), dtype=np.int8)

    def _fail(self, rows: np.ndarray, code: int) -> None:
        first = self.error[rows] == OK
        self.error[rows[first]] = code

    def record(self, schema: Mapping[str, Any]) -> dict[str, pa.Array]:
        rows = np.arange(len(self.pos), dtype=np.int64)
        columns = {f["name"]: self._value(f["type"], rows) for f in schema["fields"]}
        leftover = rows[(self.error == OK) & (self.pos != self.end)]
        self._fail(leftover, TRAILING)
        return columns

    def _value(self, node: Any, rows: np.ndarray) -> pa.Array:
        name = _type_name(node)
        if name == "null":
            return pa.nulls(len(rows))
        if name == "long":
            return pa.array(_zigzag_decode(self._varint(rows)), pa.int64())
        if name == "int":
            return pa.array(_zigzag_decode(self._varint(rows)).astype(np.int32), pa.int32())
        if name == "boolean":
            raw = self._fixed_bytes(rows, 1)[:, 0]
            self._fail(rows[raw > 1], BAD_BOOLEAN)
            return pa.array(raw == 1, pa.bool_())
        if name in ("float", "double"):
            width, dtype = (4, "<f4") if name == "float" else (8, "<f8")
            raw = self._fixed_bytes(rows, width)
            return pa.array(np.ascontiguousarray(raw).view(dtype).ravel())
        if name in ("string", "bytes"):
            return self._bytes(rows, utf8=name == "string")
        if name == "fixed":
            raw = self._fixed_bytes(rows, int(node["size"]))
            size = int(node["size"])
            return pa.FixedSizeBinaryArray.from_buffers(pa.binary(size), len(rows), [None, pa.py_buffer(raw.tobytes())])
        if name == "enum":
            index = _zigzag_decode(self._varint(rows))
            symbols = pa.array(node["symbols"], pa.string())
            bad = (index < 0) | (index >= len(symbols))
            self._fail(rows[bad], BAD_ENUM)
            return symbols.take(pa.array(np.where(bad, 0, index)))
        if name == "union":
            return self._union(node, rows)
        if name == "array":
            return self._array(node["items"], rows)
        raise UnsupportedSchemaError(f"type {name!r} is not supported column-wise")

    def _live(self, rows: np.ndarray) -> np.ndarray:
        """Boolean mask over `rows`: still decodable."""
        return self.error[rows] == OK

    def _varint(self, rows: np.ndarray) -> np.ndarray:
        """The unsigned varint at each row's cursor (0 for rows already or newly corrupt); cursors advance."""
        result = np.zeros(len(rows), dtype=np.uint64)
        length = np.zeros(len(rows), dtype=np.int64)
        live = np.flatnonzero(self._live(rows))
        start = self.pos[rows]
        end = self.end[rows]
        for k in range(_MAX_VARINT_BYTES):
            at = start[live] + k
            short = at >= end[live]
            if short.any():
                self._fail(rows[live[short]], TRUNCATED)
                live, at = live[~short], at[~short]
            byte = self.data[at]
            result[live] |= (byte & 0x7F).astype(np.uint64) << np.uint64(7 * k)
            more = byte >= 0x80
            length[live[~more]] = k + 1
            live = live[more]
            if live.size == 0:
                break
        if live.size:
            self._fail(rows[live], BAD_VARINT)
        result[~self._live(rows)] = 0
        self.pos[rows] += length
        return result

    def _fixed_bytes(self, rows: np.ndarray, width: int) -> np.ndarray:
        """A (len(rows), width) byte matrix read at each cursor (zeros for corrupt rows)."""
        live = self._live(rows)
        short = live & (self.pos[rows] + width > self.end[rows])
        self._fail(rows[short], TRUNCATED)
        live &= ~short
        out = np.zeros((len(rows), width), dtype=np.uint8)
        if width:
            at = self.pos[rows[live]][:, None] + np.arange(width)
            out[live] = self.data[at]
        self.pos[rows[live]] += width
        return out

    def _bytes(self, rows: np.ndarray, *, utf8: bool) -> pa.Array:
        length = _zigzag_decode(self._varint(rows))
        bad = self._live(rows) & ((length < 0) | (self.pos[rows] + length > self.end[rows]))
        self._fail(rows[bad], BAD_LENGTH)
        length[~self._live(rows)] = 0
        starts = self.pos[rows]
        self.pos[rows] += length
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(length, out=offsets[1:])
        gather = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], length)
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(self.data[gather])]
        values = pa.Array.from_buffers(pa.large_binary(), len(rows), buffers)
        if not utf8:
            return values.cast(pa.binary())
        try:
            return values.cast(pa.large_string()).cast(pa.string())
        except pa.ArrowInvalid:
            invalid = _invalid_utf8(values)
            self._fail(rows[invalid], BAD_UTF8)
            keep = np.ones(len(rows), dtype=bool)
            keep[invalid] = False
            return values.filter(pa.array(keep)).cast(pa.string()).take(pa.array(np.cumsum(keep) - 1, mask=~keep))

    def _union(self, node: list[Any], rows: np.ndarray) -> pa.Array:
        null_index, branch = _union_branch(node)
        index = _zigzag_decode(self._varint(rows))
        live = self._live(rows)
        self._fail(rows[live & (index != 0) & (index != 1)], BAD_UNION)
        present = np.flatnonzero(self._live(rows) & (index == 1 - null_index))
        values = self._value(branch, rows[present])
        return _scatter(values, present, len(rows))

    def _array(self, items: Any, rows: np.ndarray) -> pa.Array:
        """Avro arrays are blocks of (count, items...) ending with a zero count; a negative count is followed by
        the block's byte size. Items are decoded one round per position, over the rows that still have one."""
        remaining = np.zeros(len(rows), dtype=np.int64)
        need_count = np.arange(len(rows), dtype=np.int64)
        item_rows: list[np.ndarray] = []
        item_values: list[pa.Array] = []
        while True:
            if need_count.size:
                sub = rows[need_count]
                count = _zigzag_decode(self._varint(sub))
                sized = np.flatnonzero(count < 0)
                if sized.size:
                    self._varint(sub[sized])  # block byte size: not needed to decode
                    count[sized] = -count[sized]
                oversized = count > (self.end[sub] - self.pos[sub])
                self._fail(sub[oversized], BAD_LENGTH)
                count[~self._live(sub)] = 0
                remaining[need_count] = count
            todo = np.flatnonzero((remaining > 0) & self._live(rows))
            if todo.size == 0:
                break
            item_values.append(self._value(items, rows[todo]))
            item_rows.append(todo)
            remaining[todo] -= 1
            need_count = todo[remaining[todo] == 0]
        if item_rows:
            owners = np.concatenate(item_rows)
            order = np.argsort(owners, kind="stable")
            values = pa.concat_arrays(item_values).take(pa.array(order))
            counts = np.bincount(owners, minlength=len(rows))
        else:
            values = self._value(items, rows[:0])
            counts = np.zeros(len(rows), dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), values)


@dataclass(frozen=True)
class DecodedColumns:
    columns: dict[str, pa.Array]  # one array per field, aligned with the input rows (null where corrupt)
    error: np.ndarray  # int8 corruption code per row (OK = 0)


def decode_bodies(schema: Mapping[str, Any], data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> DecodedColumns:
    """Decode the records data[starts[i]:ends[i]] written with `schema` (a parsed record schema, no logical types)."""
    check_supported(schema)
    decoder = ColumnDecoder(data, starts, ends)
    columns = decoder.record(schema)
    bad = decoder.error != OK
    if bad.any():
        mask = pa.array(bad)
        columns = {name: pc.if_else(mask, pa.nulls(len(col), col.type), col) for name, col in columns.items()}
    return DecodedColumns(columns, decoder.error)


def reasons(error: np.ndarray) -> pa.Array:
    """Human-readable reason per row (null where the row decoded)."""
    text = pa.array(REASONS, pa.string())
    return text.take(pa.array(error.astype(np.int64), mask=error == OK))


# ---------------------------------------------------------------------------------------------------------- encode


def _zigzag_encode(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.int64)
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def varint_array(raw: np.ndarray) -> pa.Array:
    """Each unsigned integer as its Avro/protobuf varint bytes, as a binary array."""
    raw = raw.astype(np.uint64, copy=False)
    nbytes = np.ones(len(raw), dtype=np.int64)
    for k in range(1, _MAX_VARINT_BYTES):
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
    name = _type_name(node)
    if name == "union":
        null_index, branch = _union_branch(node)
        present = pc.is_valid(values)
        filled = values.fill_null(_placeholder(branch, values.type))
        branch_bytes = _encode_value(branch, filled, what)
        tagged = pc.binary_join_element_wise(
            pa.scalar(bytes([2 * (1 - null_index)]), pa.binary()), branch_bytes, _EMPTY
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
        return pc.binary_join_element_wise(_long_bytes(pc.binary_length(as_bytes)), as_bytes, _EMPTY)
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
        joined = pc.binary_join(pa.ListArray.from_arrays(_list_offsets(values), items), _EMPTY)
        block = pc.binary_join_element_wise(_long_bytes(counts), joined, pa.scalar(b"\x00", pa.binary()), _EMPTY)
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
    name = _type_name(branch)
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
    return pc.binary_join_element_wise(*parts, _EMPTY)
