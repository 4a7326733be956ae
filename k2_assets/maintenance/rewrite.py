"""Reading a set of data files and writing them back as a few large files sorted by the table's sort order.

Files are written with pyarrow into the partition directory of their inputs, with Iceberg field ids, and described
as DataFiles from their Parquet footers, so the commit (compaction.py) can swap them in atomically.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import (
    ArrowScan,
    PyArrowFileIO,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    schema_to_pyarrow,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.table import FileScanTask, Table
from pyiceberg.transforms import IdentityTransform

from k2_resources.errors import MaintenanceError

# Used when a table declares no sort order: point queries are symbol x time range.
DEFAULT_SORT = ("symbol", "exchange_ts")


@dataclass(frozen=True)
class SortSpec:
    keys: tuple[tuple[str, str], ...]  # (column, "ascending" | "descending")
    null_placement: str
    order_id: int | None  # the table sort order these files satisfy, recorded on each DataFile


def sort_spec(table: Table) -> SortSpec:
    """The table's declared sort order (identity transforms), else (symbol, exchange_ts) where present."""
    schema = table.schema()
    order = table.sort_order()
    keys: list[tuple[str, str]] = []
    nulls_first = True
    if order.fields and all(isinstance(f.transform, IdentityTransform) for f in order.fields):
        for f in order.fields:
            name = schema.find_column_name(f.source_id)
            if name is None:
                break
            keys.append((name, "ascending" if f.direction.value == "asc" else "descending"))
            nulls_first = f.null_order.value == "nulls-first"
        else:
            return SortSpec(tuple(keys), "at_start" if nulls_first else "at_end", order.order_id)
    names = {f.name for f in schema.fields}
    keys = [(c, "ascending") for c in DEFAULT_SORT if c in names]
    return SortSpec(tuple(keys), "at_start", None)


def _direct_paths(table: Table, files: Sequence[DataFile]) -> tuple[str, str, list[str]] | None:
    """(scheme, netloc, paths) when the files can be read by column name with no Iceberg projection: a table that
    never changed its schema, Parquet files on one filesystem of a PyArrowFileIO."""
    if len(table.schemas()) != 1 or any(f.file_format != FileFormat.PARQUET for f in files):
        return None
    if not isinstance(table.io, PyArrowFileIO):
        return None
    locations = [PyArrowFileIO.parse_location(f.file_path) for f in files]
    if len({(scheme, netloc) for scheme, netloc, _ in locations}) != 1:
        return None
    scheme, netloc, _ = locations[0]
    return scheme, netloc, [path for _, _, path in locations]


def _read_polars(paths: list[str], schema: pa.Schema) -> pl.DataFrame | None:
    """Local files through polars' Parquet reader: about half the per-file cost of pyarrow's on ~1,000-row ingest
    files, which is what a compaction mostly reads. None if polars cannot read them as one frame."""
    try:
        # glob=False: a path is a path (one holding `*` or `[` is not a pattern); one chunk per column to convert
        frame = pl.scan_parquet(paths, hive_partitioning=False, glob=False, cache=False).collect().rechunk()
    except (pl.exceptions.PolarsError, OSError):
        return None
    return frame if frame.columns == schema.names else None


def _to_arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table | None:
    try:
        return frame.to_arrow().cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _read_direct(table: Table, files: Sequence[DataFile]) -> pa.Table | None:
    """Parquet files of a table that never changed its schema, read by column name in one go (polars for local
    files, else one pyarrow dataset: both much faster than pyiceberg's per-file scan on many small files). None
    when that shortcut does not apply."""
    direct = _direct_paths(table, files)
    if direct is None:
        return None
    scheme, netloc, paths = direct
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    if scheme in ("", "file"):
        frame = _read_polars(paths, schema)
        arrow = _to_arrow(frame, schema) if frame is not None else None
        if arrow is not None:
            return arrow
    io = table.io
    assert isinstance(io, PyArrowFileIO)
    dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=io.fs_by_scheme(scheme, netloc))
    return dataset.to_table()


def _check_count(table: Table, files: Sequence[DataFile], rows: int) -> None:
    expected = sum(int(f.record_count) for f in files)
    if rows != expected:
        raise MaintenanceError(
            f"{table.name()}: read {rows} rows from {len(files)} files whose manifests list {expected}; "
            "nothing was rewritten (are there delete files or a corrupt file?)"
        )


def read_files(table: Table, files: Sequence[DataFile]) -> pa.Table:
    """Exactly the rows of `files`, projected onto the current schema (handles files of older schemas)."""
    arrow = _read_direct(table, files)
    if arrow is None:
        scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
        arrow = scan.to_table([FileScanTask(f) for f in files])
    _check_count(table, files, arrow.num_rows)
    return arrow


def _key_codes(column: pa.ChunkedArray, descending: bool, nulls_first: bool) -> np.ndarray | None:
    """Non-negative int64 codes whose order is the column's sort order (nulls placed as asked), or None for a type
    this does not handle. Strings are ranked through their dictionary (few distinct symbols per partition)."""
    kind = column.type
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.asarray(array.is_valid())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        encoded = pc.dictionary_encode(array)
        order = "descending" if descending else "ascending"
        ranks = np.asarray(pc.rank(encoded.dictionary, sort_keys=order, tiebreaker="dense"), dtype=np.int64) - 1
        indices = np.asarray(encoded.indices.fill_null(0), dtype=np.int64)
        codes = ranks[indices] if len(ranks) else np.zeros(len(array), dtype=np.int64)
    elif pa.types.is_integer(kind) or pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        values = np.asarray(pc.cast(array, pa.int64()).fill_null(0), dtype=np.int64)
        if not valid.any():
            codes = np.zeros(len(array), dtype=np.int64)
        else:
            lo, hi = int(values[valid].min()), int(values[valid].max())
            if hi - lo >= 2**62:
                return None
            codes = (hi - values) if descending else (values - lo)
    else:
        return None
    if valid.all():
        return codes
    top = int(codes[valid].max()) + 1 if valid.any() else 0
    return np.where(valid, codes + (1 if nulls_first else 0), 0 if nulls_first else top)


def _fast_sort_indices(arrow: pa.Table, spec: SortSpec) -> np.ndarray | None:
    """The stable sort permutation as one int64 key per row (the keys' codes packed side by side) and numpy's
    stable argsort, which is near linear on ingest files that are already in time order. None when the packed key
    would not fit 63 bits or a key has a type _key_codes does not handle."""
    key = np.zeros(arrow.num_rows, dtype=np.int64)
    bits = 0
    for name, order in spec.keys:
        codes = _key_codes(arrow[name], order == "descending", spec.null_placement == "at_start")
        if codes is None:
            return None
        width = int(codes.max()).bit_length() if len(codes) else 0
        bits += width
        if bits > 63:
            return None
        key = (key << width) | codes
    return np.argsort(key, kind="stable")


def sort_rows(arrow: pa.Table, spec: SortSpec) -> pa.Table:
    if not spec.keys or arrow.num_rows < 2:
        return arrow
    indices = _fast_sort_indices(arrow, spec)
    if indices is None:
        return arrow.take(pc.sort_indices(arrow, sort_keys=list(spec.keys), null_placement=spec.null_placement))
    # Ingest files are each in time order, so the permutation is usually a few runs of consecutive rows (one per
    # input file): those are zero-copy slices, and only a permutation of many short runs pays for a take.
    starts = np.flatnonzero(np.diff(indices) != 1) + 1
    if len(starts) == 0:
        return arrow
    if len(starts) < max(64, arrow.num_rows // 2048):
        bounds = np.concatenate(([0], starts, [len(indices)]))
        return pa.concat_tables([arrow.slice(int(indices[a]), int(b - a)) for a, b in itertools.pairwise(bounds)])
    return arrow.take(pa.array(indices))


def dictionary_columns(rows: pa.Table, sample_rows: int = 10_000, max_ratio: float = 0.3) -> list[str]:
    """Flat columns worth dictionary-encoding, judged on a sample: a dictionary for unique values such as trade ids
    costs write time and space before Parquet falls back to plain encoding."""
    sample = rows.slice(0, sample_rows)
    limit = max_ratio * max(1, sample.num_rows)
    return [
        name
        for name in rows.column_names
        if not pa.types.is_nested(sample[name].type) and pc.count_distinct(sample[name]).as_py() <= limit
    ]


def _writer_options(table: Table, rows: pa.Table, dictionary: list[str] | None) -> dict[str, object]:
    props = table.properties
    codec = props.get("write.parquet.compression-codec", "zstd")
    level = props.get("write.parquet.compression-level")
    return {
        "compression": "none" if codec == "uncompressed" else codec,
        "compression_level": int(level) if level else None,
        "store_decimal_as_integer": True,
        "use_dictionary": dictionary_columns(rows) if dictionary is None else dictionary,
    }


def write_sorted(
    table: Table,
    rows: pa.Table,
    template: DataFile,
    *,
    target_file_bytes: int,
    row_group_rows: int,
    sort_order_id: int | None,
    dictionary: list[str] | None = None,
) -> list[DataFile]:
    """Write `rows` (already sorted) next to `template` as files of about `target_file_bytes` on disk each,
    rolling to a new file at a row-group boundary once the target is reached. `dictionary` names the columns to
    dictionary-encode (default: judged from `rows`)."""
    schema = table.schema()
    file_schema = schema_to_pyarrow(schema, include_field_ids=True)
    rows = rows.cast(file_schema)
    stats_plan = compute_statistics_plan(schema, table.properties)
    column_ids = parquet_path_to_id_mapping(schema)
    options = _writer_options(table, rows, dictionary)
    directory = template.file_path.rsplit("/", 1)[0]
    prefix = uuid.uuid4().hex
    written: list[DataFile] = []
    offset = 0
    while offset < rows.num_rows:
        path = f"{directory}/{prefix}-compacted-{len(written):05d}.parquet"
        output = table.io.new_output(path)
        with output.create(overwrite=False) as stream:
            writer = pq.ParquetWriter(stream, file_schema, **options)  # type: ignore[arg-type]
            while offset < rows.num_rows:
                chunk = rows.slice(offset, row_group_rows)
                writer.write_table(chunk, row_group_size=row_group_rows)
                offset += chunk.num_rows
                if stream.tell() >= target_file_bytes:
                    break
            writer.close()
        statistics = data_file_statistics_from_parquet_metadata(
            parquet_metadata=writer.writer.metadata, stats_columns=stats_plan, parquet_column_mapping=column_ids
        )
        written.append(
            DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=path,
                file_format=FileFormat.PARQUET,
                partition=template.partition,
                file_size_in_bytes=len(table.io.new_input(path)),
                sort_order_id=sort_order_id,
                spec_id=template.spec_id,
                equality_ids=None,
                key_metadata=None,
                **statistics.to_serialized_dict(),
            )
        )
    return written
