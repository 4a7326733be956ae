"""Schemaless Avro decoded a whole column at a time with numpy and pyarrow, no Python loop per record.

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
MAX_VARINT_BYTES = 10
EMPTY_BYTES = pa.scalar(b"", pa.binary())


class UnsupportedSchemaError(SchemaError):
    """The schema uses a type the columnar codec does not cover; use fastavro per record instead."""


def type_name(node: Any) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    return str(node["type"]) if isinstance(node["type"], str) else "nested"


def union_branch(node: list[Any]) -> tuple[int, Any]:
    """(index of null, the other branch) of a [null, T] union; anything else is unsupported."""
    names = [type_name(b) for b in node]
    if len(node) != 2 or "null" not in names or names.count("null") != 1:
        raise UnsupportedSchemaError(f"only [null, T] unions are supported, not {names}")
    null_index = names.index("null")
    return null_index, node[1 - null_index]


def check_supported(schema: Mapping[str, Any]) -> None:
    """Raise UnsupportedSchemaError unless every field of the record schema can be handled column-wise."""
    if type_name(dict(schema)) != "record":
        raise UnsupportedSchemaError("the top-level schema must be a record")

    def visit(node: Any, depth: int) -> None:
        name = type_name(node)
        if name in ("null", "boolean", "int", "long", "float", "double", "string", "bytes", "enum", "fixed"):
            return
        if name == "union":
            visit(union_branch(node)[1], depth)
        elif name == "array" and depth == 0:
            visit(node["items"], depth + 1)
        else:
            raise UnsupportedSchemaError(f"type {name!r} is not supported column-wise")

    for f in schema["fields"]:
        visit(f["type"], 0)


# ---------------------------------------------------------------------------------------------------------- decode


def _zigzag_decode(raw: np.ndarray) -> np.ndarray:
    return (raw >> np.uint64(1)).astype(np.int64) ^ -(raw & np.uint64(1)).astype(np.int64)


def scatter(values: pa.Array, positions: np.ndarray, length: int) -> pa.Array:
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
        name = type_name(node)
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
        for k in range(MAX_VARINT_BYTES):
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
        null_index, branch = union_branch(node)
        index = _zigzag_decode(self._varint(rows))
        live = self._live(rows)
        self._fail(rows[live & (index != 0) & (index != 1)], BAD_UNION)
        present = np.flatnonzero(self._live(rows) & (index == 1 - null_index))
        values = self._value(branch, rows[present])
        return scatter(values, present, len(rows))

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
