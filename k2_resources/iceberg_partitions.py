"""A linear partition split for pyiceberg writes.

pyiceberg 0.12 splits an Arrow table into its partitions (`pyiceberg.io.pyarrow._determine_partitions`) by
filtering the whole table once per distinct partition value: rows x partitions work. A ticks batch spans about a
hundred partitions (day x exchange x truncate(symbol, 4)), so staging one million ticks spent ~20 ms per partition
filtering, most of the write. `determine_partitions` does the same split with one stable sort on dictionary codes
of the partition values and a zero-copy slice per run of equal values: same partitions, same keys, same row order
inside each partition.

`install()` swaps it in (open_catalog calls it, so every K2 writer gets it: appends, copy-on-write deletes,
overwrites). It only does so on the pyiceberg version it was checked against; tests compare it with the original.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from importlib.metadata import version
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io import pyarrow as pyiceberg_arrow
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema

CHECKED_VERSIONS = ("0.12.0",)
_ORIGINAL = pyiceberg_arrow._determine_partitions


def _with_partition_columns(spec: PartitionSpec, schema: Schema, table: pa.Table) -> tuple[pa.Table, list[str]]:
    """The table plus one column per partition field holding its transformed value (as pyiceberg names them)."""
    names = [f"_partition_{field.name}" for field in spec.fields]
    for field, name in zip(spec.fields, names, strict=True):
        source = schema.find_field(field.source_id)
        column_name = schema.find_column_name(field.source_id)
        if column_name is None:
            raise ValueError(f"Could not find column name for field ID: {field.source_id}")
        values = pyiceberg_arrow._get_field_from_arrow_table(table, column_name)
        table = table.append_column(name, field.transform.pyarrow_transform(source.field_type)(values))
    return table, names


def _run_starts(codes: list[np.ndarray]) -> list[int]:
    """Row positions where any of the (sorted) code columns differs from the row before, plus the end."""
    n = len(codes[0])
    changed = np.zeros(n, dtype=bool)
    for column in codes:
        changed[1:] |= column[1:] != column[:-1]
    return [0, *np.flatnonzero(changed).tolist(), n]


def _stable_order(codes: list[np.ndarray]) -> np.ndarray:
    """Row order grouping equal code tuples, keeping input order inside a group (a stable sort). The codes fold into
    one int64 key when their cardinalities allow (always, in practice), which sorts several times faster."""
    key = np.zeros(len(codes[0]), dtype=np.int64)
    span = 1
    for column in codes:
        width = int(column.max()) + 2  # codes run from -1 (null) to max
        span *= width
        if span >= 2**62:
            return np.lexsort(codes[::-1])
        key = key * width + (column + 1)
    return np.argsort(key, kind="stable")


def determine_partitions(spec: PartitionSpec, schema: Schema, arrow_table: pa.Table) -> Iterator[Any]:
    """Drop-in for pyiceberg's _determine_partitions: yields _TablePartition(partition_key, rows) per partition."""
    table, names = _with_partition_columns(spec, schema, arrow_table)
    if table.num_rows == 0:
        return
    # Dictionary codes group equal values; a stable sort on them keeps each partition's rows in input order.
    # A null partition value gets code -1: nulls form one partition of their own, as in pyiceberg.
    codes = [pc.fill_null(pc.dictionary_encode(table[name].combine_chunks()).indices, -1).to_numpy() for name in names]
    order = _stable_order(codes)
    grouped = table.take(order)
    starts = _run_starts([column[order] for column in codes])
    keys = grouped.select(names)
    for start, stop in itertools.pairwise(starts):
        first = keys.slice(start, 1).to_pylist()[0]
        key = PartitionKey(
            field_values=[
                PartitionFieldValue(field=field, value=first[name])
                for field, name in zip(spec.fields, names, strict=True)
            ],
            partition_spec=spec,
            schema=schema,
        )
        rows = grouped.slice(start, stop - start).drop_columns(names)
        yield pyiceberg_arrow._TablePartition(partition_key=key, arrow_table_partition=rows)


def install() -> bool:
    """Use determine_partitions for pyiceberg's writes. False (nothing changed) on an unchecked pyiceberg."""
    if version("pyiceberg") not in CHECKED_VERSIONS:
        return False
    pyiceberg_arrow._determine_partitions = determine_partitions  # type: ignore[assignment]
    return True


def original_determine_partitions(spec: PartitionSpec, schema: Schema, arrow_table: pa.Table) -> Iterable:  # type: ignore[type-arg]
    """pyiceberg's own implementation (tests compare against it)."""
    return _ORIGINAL(spec=spec, schema=schema, arrow_table=arrow_table)  # type: ignore[no-any-return]
