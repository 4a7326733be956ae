"""The fast paths of the compaction rewrite (rewrite.py) against the general ones they stand in for: polars' Parquet
reader against pyiceberg's scan of the same files, and the packed-key stable sort (with zero-copy runs) against
pyarrow's sort_indices, on every key type, direction and null placement it handles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, schema_to_pyarrow
from pyiceberg.table import FileScanTask

from k2_assets.maintenance.files import live_files
from k2_assets.maintenance.rewrite import (
    SortSpec,
    _direct_paths,
    _fast_sort_indices,
    _read_polars,
    read_files,
    sort_rows,
    sort_spec,
)
from tests.unit.test_maintenance_support import ticks_table


def test_the_direct_read_returns_exactly_pyiceberg_s_rows_and_types(tmp_path: Path) -> None:
    table, _ = ticks_table(tmp_path, rows=9_000, batches=6)
    files = live_files(table).data_files()
    direct = _direct_paths(table, files)
    assert direct is not None and direct[0] == "file"
    assert _read_polars(direct[2], schema_to_pyarrow(table.schema(), include_field_ids=False)) is not None
    fast = read_files(table, files)
    slow = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table([FileScanTask(f) for f in files])
    assert fast.num_rows == slow.num_rows == 9_000
    assert fast.schema.names == slow.schema.names
    assert fast.equals(slow.cast(fast.schema))
    spec = sort_spec(table)
    assert sort_rows(fast, spec).equals(slow.cast(fast.schema).take(pc.sort_indices(slow, sort_keys=list(spec.keys))))


def _random_table(rng: np.random.Generator, n: int, null_rate: float) -> pa.Table:
    symbols = rng.choice(["BHP", "CBA", "CSL", "A", "ZZ", ""], size=n)
    ts = rng.integers(1_700_000_000_000_000, 1_700_000_100_000_000, size=n)
    seq = rng.integers(-5, 5, size=n)
    mask_s = rng.random(n) < null_rate
    mask_t = rng.random(n) < null_rate
    return pa.table(
        {
            "symbol": pa.array(symbols, pa.large_string(), mask=mask_s),
            "exchange_ts": pa.array(ts, pa.timestamp("us", tz="UTC"), mask=mask_t),
            "sequence": pa.array(seq, pa.int64()),
            "row": pa.array(np.arange(n)),  # tells a stable sort from an unstable one
        }
    )


@pytest.mark.parametrize("nulls", ["at_start", "at_end"])
@pytest.mark.parametrize(
    "keys",
    [
        (("symbol", "ascending"), ("exchange_ts", "ascending")),
        (("symbol", "descending"), ("exchange_ts", "ascending")),
        (("exchange_ts", "descending"), ("symbol", "ascending")),
        (("sequence", "ascending"), ("symbol", "descending")),
    ],
)
@pytest.mark.parametrize("null_rate", [0.0, 0.2])
def test_the_packed_key_sort_equals_pyarrow_s_stable_sort(
    keys: tuple[tuple[str, str], ...], nulls: str, null_rate: float
) -> None:
    rng = np.random.default_rng(len(keys) + int(null_rate * 10))
    arrow = _random_table(rng, 5_000, null_rate)
    spec = SortSpec(keys, nulls, None)
    assert _fast_sort_indices(arrow, spec) is not None  # the fast path is the one under test
    expected = arrow.take(pc.sort_indices(arrow, sort_keys=list(keys), null_placement=nulls))
    assert sort_rows(arrow, spec).equals(expected)


def test_runs_of_already_ordered_rows_are_sliced_not_copied() -> None:
    # Three "files", each in time order, read newest first: the sort is three zero-copy slices.
    t0 = 1_700_000_000_000_000
    parts = [
        pa.table({"symbol": ["BHP"] * 4, "exchange_ts": pa.array([t0 + i + 10 * k for i in range(4)], pa.int64())})
        for k in (2, 1, 0)
    ]
    arrow = pa.concat_tables(parts).combine_chunks()
    out = sort_rows(arrow, SortSpec((("symbol", "ascending"), ("exchange_ts", "ascending")), "at_start", None))
    assert out["exchange_ts"].to_pylist() == sorted(arrow["exchange_ts"].to_pylist())
    assert out["exchange_ts"].num_chunks == 3


def test_a_key_that_does_not_fit_the_packed_key_falls_back_to_pyarrow() -> None:
    arrow = pa.table(
        {"a": pa.array([2**62, -(2**62), 0, 5], pa.int64()), "b": pa.array([3.0, 1.0, 2.0, 0.5])},
    )
    spec = SortSpec((("a", "ascending"), ("b", "ascending")), "at_start", None)
    assert _fast_sort_indices(arrow, spec) is None  # a float key, and a range of 2^63
    assert sort_rows(arrow, spec)["a"].to_pylist() == [-(2**62), 0, 5, 2**62]
