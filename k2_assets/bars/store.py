"""Iceberg I/O of the bar tables: partitions in and out of integer space, the state each table carries in its
snapshot summary, the ticks a micro-batch added, and the corrections outbox.

State (snapshot summary of the newest snapshot, carried forward by every K2 commit, compaction included):
    k2.source-snapshot     bars_1m: every tick up to this ticks snapshot is in the bars
    k2.rebuilt-days        bars_1m: {"ASX/2026-11-25": seq}: a day rebuilt whole from the ticks of sequence number
                           `seq`, ahead of k2.source-snapshot (a partition re-run); delta ticks up to it are skipped
    k2.rolled-from         bars_5m/1h/1d: the bars_1m snapshot these were rolled up from
    k2.event-watermark     {"ASX": µs}: the largest exchange_ts seen; windows ending 10 s before it are final
    k2.corrections-outbox  id of a Parquet file of bar_corrections rows written with this commit
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.manifest import DataFile, ManifestEntryStatus
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.snapshots import Operation, Snapshot
from pyiceberg.transforms import IdentityTransform

from k2_resources.arrow_util import conform, to_integer_space
from k2_resources.filters import all_of, any_of, eq
from k2_resources.iceberg import IcebergResource, append_with_properties
from k2_resources.tables import TableDef

SOURCE_SNAPSHOT = "k2.source-snapshot"
REBUILT_DAYS = "k2.rebuilt-days"
ROLLED_FROM = "k2.rolled-from"
EVENT_WATERMARK = "k2.event-watermark"
OUTBOX = "k2.corrections-outbox"
OUTBOX_APPLIED = "k2.outbox-applied"
MAINTENANCE = "k2.maintenance"  # set by k2_assets/maintenance on data-preserving rewrites (compaction)
NOTIONAL_TYPE = pa.decimal128(38, 6)
Day = tuple[str, dt.date]  # (exchange, trading_date)
EPOCH = dt.date(1970, 1, 1)


def day_key(day: Day) -> str:
    return f"{day[0]}/{day[1].isoformat()}"


def parse_day_key(key: str) -> Day:
    code, date = key.split("/", 1)
    return code, dt.date.fromisoformat(date)


@dataclass
class BarState:
    """What the newest snapshot of a bar table says about what it holds."""

    snapshot_id: int | None = None
    source_snapshot: int | None = None
    rebuilt_days: dict[str, int] = field(default_factory=dict)
    rolled_from: int | None = None
    watermark: dict[str, int] = field(default_factory=dict)

    def properties(self) -> dict[str, str]:
        props = {EVENT_WATERMARK: json.dumps(self.watermark, sort_keys=True)}
        if self.source_snapshot is not None:
            props[SOURCE_SNAPSHOT] = str(self.source_snapshot)
        if self.rebuilt_days:
            props[REBUILT_DAYS] = json.dumps(self.rebuilt_days, sort_keys=True)
        if self.rolled_from is not None:
            props[ROLLED_FROM] = str(self.rolled_from)
        return props


def _summary(snapshot: Snapshot | None) -> dict[str, str]:
    if snapshot is None or snapshot.summary is None:
        return {}
    return dict(snapshot.summary.additional_properties)


def read_state(table: Table) -> BarState:
    snap = table.current_snapshot()
    props = _summary(snap)
    return BarState(
        snapshot_id=snap.snapshot_id if snap else None,
        source_snapshot=int(props[SOURCE_SNAPSHOT]) if props.get(SOURCE_SNAPSHOT) else None,
        rebuilt_days={k: int(v) for k, v in json.loads(props.get(REBUILT_DAYS) or "{}").items()},
        rolled_from=int(props[ROLLED_FROM]) if props.get(ROLLED_FROM) else None,
        watermark={k: int(v) for k, v in json.loads(props.get(EVENT_WATERMARK) or "{}").items()},
    )


def ensure_bar_table(iceberg: IcebergResource, table_def: TableDef) -> Table:
    """Create the table, or bring one created by an older K2 up to date: add missing columns (additive schema
    evolution, old rows read them as null) and turn the library's commit retry off."""
    table = iceberg.ensure_table(table_def)
    current = {f.name for f in table.schema().fields}
    if any(f.name not in current for f in table_def.schema.fields):
        with table.update_schema() as update:
            update.union_by_name(table_def.schema)
    wanted = {k: v for k, v in table_def.properties.items() if table.properties.get(k) != v and k != "format-version"}
    if wanted:
        with table.transaction() as tx:
            tx.set_properties(dict(wanted))
    table.refresh()
    return table


# ---------------------------------------------------------------------------------------------------------------
# Partitions in and out of integer space. notional is decimal(38, 6) in Iceberg and Int128 millionths in polars:
# both are the same 128-bit integer, so the conversion reinterprets buffers (exact, no arithmetic).


def _notional_to_polars(values: pa.ChunkedArray) -> pl.Series:
    arr = values.combine_chunks() if values.num_chunks else pa.array([], NOTIONAL_TYPE)
    arr = arr.cast(NOTIONAL_TYPE)
    raw = pa.Array.from_buffers(pa.decimal128(38, 0), len(arr), arr.buffers(), arr.null_count, arr.offset)
    return pl.Series("notional", raw).cast(pl.Int128)


def _notional_to_arrow(values: pl.Series) -> pa.Array:
    raw = values.cast(pl.Int128).cast(pl.Decimal(38, 0)).to_arrow()
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    return pa.Array.from_buffers(NOTIONAL_TYPE, len(raw), raw.buffers(), raw.null_count, raw.offset)


def arrow_to_frame(arrow: pa.Table) -> pl.DataFrame:
    notional = arrow["notional"] if "notional" in arrow.column_names else None
    rest = arrow.drop_columns(["notional"]) if notional is not None else arrow
    frame = pl.from_arrow(to_integer_space(rest))
    assert isinstance(frame, pl.DataFrame)
    if notional is not None:
        frame = frame.with_columns(_notional_to_polars(notional))
    return frame


def frame_to_arrow(frame: pl.DataFrame, table: Table) -> pa.Table:
    target = table.schema().as_arrow()
    arrow = conform(frame.drop("notional", strict=False).to_arrow(), target)
    if "notional" in frame.columns:
        idx = target.get_field_index("notional")
        arrow = arrow.set_column(idx, target.field(idx), _notional_to_arrow(frame["notional"]))
    return arrow


def days_filter(days: Iterable[Day]) -> BooleanExpression:
    return any_of([all_of(eq("exchange", code), eq("trading_date", d.isoformat())) for code, d in sorted(set(days))])


def read_days(table: Table, days: Iterable[Day]) -> pl.DataFrame:
    days = sorted(set(days))
    if not days or table.current_snapshot() is None:
        return arrow_to_frame(table.schema().as_arrow().empty_table())
    return arrow_to_frame(table.scan(row_filter=days_filter(days)).to_arrow())


def overwrite_days(table: Table, frame: pl.DataFrame, days: Iterable[Day], properties: dict[str, str]) -> None:
    """Replace the partitions `days` with `frame` in one atomic commit. The bar tables are partitioned by identity
    on (trading_date, exchange), so a day is a set of whole files: one overwrite snapshot removes those files and
    adds the new ones (the library's delete-then-append builds two snapshots and re-derives the table metadata
    dozens of times). The library's retry is off, so a concurrent writer surfaces as CommitFailedException and the
    caller re-plans from fresh state."""
    days = sorted(set(days))
    if not days:
        append_with_properties(table, frame_to_arrow(frame.head(0), table), properties)
        return
    rows = frame_to_arrow(frame, table)
    old = _files_of_days(table, days)
    if old is None:  # a file not wholly inside these days (another partition spec): the library's row delete
        with table.transaction() as tx, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            tx.delete(days_filter(days), snapshot_properties=properties)
            if rows.num_rows:
                tx.append(rows, snapshot_properties=properties)
            else:
                with tx.update_snapshot(snapshot_properties=properties).fast_append():
                    pass
        return
    with table.transaction() as tx:
        update = tx.update_snapshot(snapshot_properties=properties)
        with update.overwrite() if old else update.fast_append() as snapshot:
            for data_file in old:
                snapshot.delete_data_file(data_file)
            if rows.num_rows:
                for data_file in _dataframe_to_data_files(
                    table_metadata=tx.table_metadata, write_uuid=snapshot.commit_uuid, df=rows, io=table.io
                ):
                    snapshot.append_data_file(data_file)


def _files_of_days(table: Table, days: list[Day]) -> list[DataFile] | None:
    """The data files holding the partitions `days`, or None if one of them may also hold rows of other days."""
    if table.current_snapshot() is None:
        return []
    spec = table.spec()
    identity = {f.name for f in spec.fields if isinstance(f.transform, IdentityTransform)}
    if identity != {"exchange", "trading_date"} or len(spec.fields) != 2:
        return None
    date_pos, exch_pos = partition_position(table, "trading_date"), partition_position(table, "exchange")
    wanted = {(code, (day - EPOCH).days) for code, day in days}
    files = []
    for task in table.scan(row_filter=days_filter(days)).plan_files():
        part = task.file.partition
        if task.file.spec_id != spec.spec_id or (str(part[exch_pos]), _epoch_days(part[date_pos])) not in wanted:
            return None
        files.append(task.file)
    return files


def _epoch_days(value: Any) -> int:
    return (value - EPOCH).days if isinstance(value, dt.date) else int(value)


# ---------------------------------------------------------------------------------------------------------------
# What changed in a table since a snapshot.


@dataclass
class Delta:
    """Changes to a table between two snapshots of its main history."""

    appended: list[tuple[int, list[DataFile]]] = field(default_factory=list)  # (sequence number, files) per append
    rewritten_partitions: set[tuple[object, ...]] = field(default_factory=set)  # partitions of non-append commits
    complete: bool = True  # False: `since` is not an ancestor (expired, or never set)


def delta_since(table: Table, since: int | None) -> Delta:
    """Files added by append snapshots after `since`, oldest first, and the partitions any other snapshot touched
    (deletes, overwrites). Data-preserving maintenance rewrites (compaction) are skipped: they change no row."""
    out = Delta()
    snap = table.current_snapshot()
    io = table.io
    while snap is not None and snap.snapshot_id != since:
        summary = snap.summary
        props = _summary(snap)
        is_append = summary is not None and summary.operation == Operation.APPEND
        if props.get(MAINTENANCE) != "compaction":
            added: list[DataFile] = []
            for manifest in snap.manifests(io):
                if manifest.added_snapshot_id != snap.snapshot_id:
                    continue
                for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                    if entry.snapshot_id != snap.snapshot_id or entry.status == ManifestEntryStatus.EXISTING:
                        continue
                    if is_append and entry.status == ManifestEntryStatus.ADDED:
                        added.append(entry.data_file)
                    else:
                        out.rewritten_partitions.add(record_tuple(entry.data_file.partition))
            if added:
                out.appended.append((snap.sequence_number or 0, added))
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    out.complete = since is not None and snap is not None
    out.appended.reverse()
    return out


def record_tuple(record: Any) -> tuple[object, ...]:
    """A partition Record as a plain tuple (hashable, positional)."""
    return tuple(record[i] for i in range(len(record)))


def read_files(table: Table, files: list[DataFile], columns: tuple[str, ...]) -> pa.Table:
    schema = table.schema().select(*columns)
    scan = ArrowScan(table.metadata, table.io, schema, AlwaysTrue())
    return scan.to_table([FileScanTask(f) for f in files])


def partition_position(table: Table, name: str) -> int:
    return next(i for i, f in enumerate(table.spec().fields) if f.name == name)


# ---------------------------------------------------------------------------------------------------------------
# Corrections outbox: bar_corrections rows are staged as a Parquet file named in the bar table's commit and moved
# into bar_corrections right after; a crash in between loses nothing (the next writer moves them) and applies
# nothing twice (ids are time-ordered; bar_corrections records the newest id applied per bar table).


def new_outbox_id() -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"


def outbox_path(corrections: Table, outbox_id: str) -> str:
    return f"{corrections.location().rstrip('/')}/outbox/{outbox_id}.parquet"


def stage_outbox(corrections: Table, rows: pl.DataFrame, outbox_id: str) -> None:
    arrow = frame_to_arrow(rows.with_columns(pl.lit(outbox_id).alias("outbox_id")), corrections)
    with corrections.io.new_output(outbox_path(corrections, outbox_id)).create(overwrite=True) as sink:
        pq.write_table(arrow, sink)


def _applied(corrections: Table) -> dict[str, str]:
    return dict(json.loads(_summary(corrections.current_snapshot()).get(OUTBOX_APPLIED) or "{}"))


def pending_outboxes(bars: Table, applied: str) -> list[str]:
    """Outbox ids named by the bar table's history and newer than `applied`, oldest first."""
    ids: list[str] = []
    snap = bars.current_snapshot()
    while snap is not None:
        outbox = _summary(snap).get(OUTBOX)
        if outbox and outbox > applied and outbox not in ids:
            ids.append(outbox)
        if outbox and outbox <= applied:
            break
        snap = bars.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return sorted(ids)


def drain_outbox(bars: Table, corrections: Table, max_attempts: int = 8) -> int:
    """Move staged corrections of `bars` into bar_corrections exactly once; returns rows moved."""
    return drain_outboxes([bars], corrections, max_attempts)


def drain_outboxes(bars: Iterable[Table], corrections: Table, max_attempts: int = 8) -> int:
    """Move the staged corrections of every table in `bars` into bar_corrections exactly once, in one commit (one
    per run, not one per bar table); returns rows moved."""
    bars = list(bars)
    for attempt in range(1, max_attempts + 1):
        corrections.refresh()
        applied = _applied(corrections)
        pending: dict[str, list[str]] = {}
        for table in bars:
            table.refresh()
            name = table.name()[-1]
            ids = pending_outboxes(table, applied.get(name, ""))
            if ids:
                pending[name] = ids
        if not pending:
            return 0
        tables = []
        for ids in pending.values():
            for outbox_id in ids:
                with corrections.io.new_input(outbox_path(corrections, outbox_id)).open() as source:
                    tables.append(pq.read_table(source))
        rows = pa.concat_tables(tables).cast(corrections.schema().as_arrow())
        marks = {name: ids[-1] for name, ids in pending.items()}
        props = {OUTBOX_APPLIED: json.dumps({**applied, **marks}, sort_keys=True)}
        try:
            append_with_properties(corrections, rows, props)
        except CommitFailedException:
            time.sleep(min(0.02 * 2**attempt, 1.0))
            continue
        for ids in pending.values():
            for outbox_id in ids:
                corrections.io.delete(outbox_path(corrections, outbox_id))
        return rows.num_rows
    return 0
