"""The linear partition split must give exactly pyiceberg's partitions: keys, rows, row order."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, IdentityTransform, TruncateTransform
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

from k2_resources.iceberg_partitions import determine_partitions, original_determine_partitions

SCHEMA = Schema(
    NestedField(1, "exchange", StringType(), required=False),
    NestedField(2, "symbol", StringType(), required=False),
    NestedField(3, "exchange_ts", TimestamptzType(), required=False),
    NestedField(4, "sequence", LongType(), required=False),
)
SPEC = PartitionSpec(
    PartitionField(3, 1000, DayTransform(), "day"),
    PartitionField(1, 1001, IdentityTransform(), "exchange"),
    PartitionField(2, 1002, TruncateTransform(4), "symbol_trunc"),
)


def _table(n: int, seed: int, null_rate: float = 0.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    symbols = np.array(["BHP", "CBA", "CSL", "NABX", "NABY", "WBC", "ANZ", "RIO1", "RIO2", "FMG"])
    start = int(dt.datetime(2026, 11, 24, 23, tzinfo=dt.UTC).timestamp() * 1_000_000)
    nulls = rng.random(n) < null_rate
    return pa.table(
        {
            "exchange": pa.array(np.where(rng.random(n) < 0.8, "ASX", "CXA"), mask=nulls),
            "symbol": pa.array(symbols[rng.integers(0, len(symbols), n)], mask=rng.random(n) < null_rate),
            "exchange_ts": pa.array(rng.integers(start, start + 3 * 86_400_000_000, n), pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "sequence": pa.array(np.arange(n), pa.int64()),
        }
    )


def _as_dict(partitions) -> dict:  # type: ignore[no-untyped-def]
    out = {}
    for p in partitions:
        key = tuple(v.value for v in p.partition_key.field_values)
        assert key not in out, f"partition {key} yielded twice"
        out[key] = p.arrow_table_partition
    return out


@pytest.mark.parametrize(("n", "seed", "null_rate"), [(1, 1, 0.0), (2_000, 2, 0.0), (5_000, 3, 0.05), (300, 4, 1.0)])
def test_same_partitions_rows_and_order_as_pyiceberg(n: int, seed: int, null_rate: float) -> None:
    table = _table(n, seed, null_rate)
    ours = _as_dict(determine_partitions(SPEC, SCHEMA, table))
    theirs = _as_dict(original_determine_partitions(SPEC, SCHEMA, table))
    assert ours.keys() == theirs.keys()
    for key, rows in theirs.items():
        assert ours[key].equals(rows), key
    assert sum(t.num_rows for t in ours.values()) == n


def test_chunked_input_and_empty_table() -> None:
    table = pa.concat_tables([_table(500, 5), _table(700, 6)])
    assert table["symbol"].num_chunks == 2
    ours = _as_dict(determine_partitions(SPEC, SCHEMA, table))
    theirs = _as_dict(original_determine_partitions(SPEC, SCHEMA, table))
    assert {k: v.to_pydict() for k, v in ours.items()} == {k: v.to_pydict() for k, v in theirs.items()}
    assert list(determine_partitions(SPEC, SCHEMA, table.slice(0, 0))) == []
