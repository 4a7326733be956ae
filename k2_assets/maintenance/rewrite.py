"""Reading a set of data files and writing them back as a few large files sorted by the table's sort order.

Files are written with pyarrow into the partition directory of their inputs, with Iceberg field ids, and described
as DataFiles from their Parquet footers, so the commit (compaction.py) can swap them in atomically.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

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


def _read_direct(table: Table, files: Sequence[DataFile]) -> pa.Table | None:
    """Parquet files of a table that never changed its schema, read as one pyarrow dataset (about twice as fast as
    pyiceberg's per-file scan on many small files). None when that shortcut does not apply."""
    if len(table.schemas()) != 1 or any(f.file_format != FileFormat.PARQUET for f in files):
        return None
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        return None
    locations = [PyArrowFileIO.parse_location(f.file_path) for f in files]
    if len({(scheme, netloc) for scheme, netloc, _ in locations}) != 1:
        return None
    scheme, netloc, _ = locations[0]
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    dataset = ds.dataset(
        [path for _, _, path in locations], schema=schema, format="parquet", filesystem=io.fs_by_scheme(scheme, netloc)
    )
    return dataset.to_table()


def read_files(table: Table, files: Sequence[DataFile]) -> pa.Table:
    """Exactly the rows of `files`, projected onto the current schema (handles files of older schemas)."""
    arrow = _read_direct(table, files)
    if arrow is None:
        scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
        arrow = scan.to_table([FileScanTask(f) for f in files])
    expected = sum(int(f.record_count) for f in files)
    if arrow.num_rows != expected:
        raise MaintenanceError(
            f"{table.name()}: read {arrow.num_rows} rows from {len(files)} files whose manifests list {expected}; "
            "nothing was rewritten (are there delete files or a corrupt file?)"
        )
    return arrow


def sort_rows(arrow: pa.Table, spec: SortSpec) -> pa.Table:
    if not spec.keys or arrow.num_rows < 2:
        return arrow
    indices = pc.sort_indices(arrow, sort_keys=list(spec.keys), null_placement=spec.null_placement)
    return arrow.take(indices)


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
