"""Iceberg catalog access and the exactly-once ingest writer (ARCHITECTURE.md decision 2)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import DataScan, Table
from pyiceberg.table.snapshots import Snapshot

from k2_resources import iceberg_partitions
from k2_resources.env import Settings
from k2_resources.errors import (
    CommitConflictError,
    OffsetGapError,
    OffsetRangeError,
    SnapshotNotFoundError,
    TableNotFoundError,
)
from k2_resources.offsets import OffsetRange, Watermarks
from k2_resources.tables import ALL_TABLES, TableDef

WATERMARK_PROPERTY = "k2.kafka.watermarks"
BATCH_PROPERTY = "k2.batch-id"
T = TypeVar("T")


def open_catalog(
    catalog_uri: str, warehouse: str, name: str = "k2", properties: Mapping[str, str] | None = None
) -> Catalog:
    """The SQL catalog (SQLite locally, PostgreSQL in prod). `properties` carry FileIO settings such as the S3
    endpoint and credentials of an s3:// warehouse (k2_resources.s3.catalog_properties)."""
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    if catalog_uri.startswith("sqlite:///"):
        Path(catalog_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from k2_resources.faults import catalog_properties  # empty unless a chaos test armed K2_FAULT_POINT

    iceberg_partitions.install()  # pyiceberg's partition split is rows x partitions; ours is linear
    props = {**dict(properties or {}), **catalog_properties()}
    try:
        return SqlCatalog(name, uri=catalog_uri, warehouse=warehouse, **props)
    except (OperationalError, ProgrammingError) as exc:
        # Two processes opening a brand-new catalog both try to create its tables; the loser finds them made.
        if "already exists" not in str(exc):
            raise
        return SqlCatalog(name, uri=catalog_uri, warehouse=warehouse, **props)


class IcebergResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The Iceberg SQL catalog holding K2's tables."""

    catalog_uri: str
    warehouse: str
    namespace: str = "market_data"
    # FileIO properties (S3 endpoint/credentials in the prod profile); empty for a local warehouse.
    catalog_properties: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> IcebergResource:
        from k2_resources.s3 import catalog_properties

        return cls(
            catalog_uri=settings.catalog_uri,
            warehouse=settings.warehouse,
            namespace=settings.namespace,
            catalog_properties=catalog_properties(settings),
        )

    def catalog(self) -> Catalog:
        return open_catalog(self.catalog_uri, self.warehouse, properties=self.catalog_properties)

    def identifier(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def ensure_table(self, table_def: TableDef, catalog: Catalog | None = None) -> Table:
        catalog = catalog or self.catalog()
        with contextlib.suppress(NamespaceAlreadyExistsError):
            catalog.create_namespace(self.namespace)
        return catalog.create_table_if_not_exists(
            self.identifier(table_def.name),
            schema=table_def.schema,
            partition_spec=table_def.partition_spec,
            sort_order=table_def.sort_order,
            properties=table_def.properties,
        )

    def ensure_all(self, defs: Iterable[TableDef] = ALL_TABLES) -> None:
        catalog = self.catalog()
        for table_def in defs:
            self.ensure_table(table_def, catalog)

    def load(self, name: str) -> Table:
        try:
            return self.catalog().load_table(self.identifier(name))
        except NoSuchTableError as exc:
            raise TableNotFoundError(
                f"table {self.identifier(name)} does not exist yet: run `k2 run` (or materialise it in Dagster)"
            ) from exc


def read_watermarks(table: Table) -> Watermarks:
    """The committed high watermark per (topic, partition), from the current main snapshot's summary."""
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return {}
    raw = snapshot.summary.additional_properties.get(WATERMARK_PROPERTY)
    if not raw:
        return {}
    parsed: dict[str, dict[str, int]] = json.loads(raw)
    return {topic: {int(p): int(o) for p, o in parts.items()} for topic, parts in parsed.items()}


def encode_watermarks(watermarks: Watermarks) -> str:
    return json.dumps(
        {t: {str(p): o for p, o in sorted(parts.items())} for t, parts in sorted(watermarks.items())},
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class CommitOutcome:
    rows_appended: int
    ranges_committed: tuple[OffsetRange, ...]
    ranges_skipped: tuple[OffsetRange, ...]
    snapshot_id: int | None
    attempts: int


def trim_to_watermarks(
    ranges: Iterable[OffsetRange], watermarks: Watermarks
) -> tuple[list[OffsetRange], list[OffsetRange]]:
    """Split planned ranges against committed watermarks into (to commit, already committed).

    A range wholly below its watermark is skipped; one straddling it is trimmed to start there; one starting past
    it would leave a hole and is refused with OffsetGapError. A partition with no watermark accepts any start.
    """
    todo: list[OffsetRange] = []
    done: list[OffsetRange] = []
    for r in ranges:
        mark = watermarks.get(r.topic, {}).get(r.partition)
        if mark is None:
            todo.append(r)
        elif r.stop <= mark:
            done.append(r)
        elif r.start > mark:
            raise OffsetGapError(
                f"{r.topic}[{r.partition}] range [{r.start}, {r.stop}) starts past the committed watermark {mark}: "
                f"offsets [{mark}, {r.start}) would be lost; plan from the watermark (the sensor does this)"
            )
        else:
            todo.append(OffsetRange(r.topic, r.partition, max(r.start, mark), r.stop))
    return todo, done


def advance(watermarks: Watermarks, ranges: Iterable[OffsetRange]) -> Watermarks:
    merged = {t: dict(p) for t, p in watermarks.items()}
    for r in ranges:
        parts = merged.setdefault(r.topic, {})
        parts[r.partition] = max(parts.get(r.partition, r.stop), r.stop)
    return merged


def commit_offset_ranges(
    table: Table,
    ranges: Iterable[OffsetRange],
    build_rows: Callable[[list[OffsetRange]], pa.Table],
    *,
    batch_id: str,
    extra_properties: dict[str, str] | None = None,
    max_attempts: int = 8,
    before_commit: Callable[[], None] | None = None,
) -> CommitOutcome:
    """Append the rows of `ranges` exactly once, recording the new watermark in the same snapshot.

    `build_rows(todo)` returns the rows of exactly the still-uncommitted ranges. On a commit conflict the table is
    reloaded and the offset check re-run, so a range another writer committed meanwhile is skipped, never doubled.
    """

    def append(rows: pa.Table, properties: dict[str, str]) -> int:
        if before_commit is not None:
            before_commit()
        append_with_properties(table, rows, properties)
        return rows.num_rows

    return commit_once(
        table,
        sorted(ranges),
        build_rows,
        append,
        batch_id=batch_id,
        extra_properties=extra_properties,
        max_attempts=max_attempts,
    )


def commit_once(
    table: Table,
    planned: list[OffsetRange],
    build: Callable[[list[OffsetRange]], T],
    commit: Callable[[T, dict[str, str]], int],
    *,
    batch_id: str,
    whole_batch: bool = False,
    extra_properties: dict[str, str] | None = None,
    max_attempts: int = 8,
) -> CommitOutcome:
    """The exactly-once loop every ingest-side writer shares (ARCHITECTURE.md decision 2): reload the table, trim
    the planned ranges to its watermark, `build(todo)` what those ranges add, and `commit(built, properties)` it in
    one snapshot (or one transaction whose snapshots all carry the properties: the new watermark and the batch id),
    returning the rows written. A lost commit race (CommitFailedException) starts over from the reload, K2-side,
    so a range another writer committed meanwhile is skipped, never doubled.

    `whole_batch`: the result cannot be split by offset range (a gap belongs to a symbol, not to an offset), so a
    table holding some but not all of the planned ranges is an error instead of a trim."""
    for attempt in range(1, max_attempts + 1):
        with storage_errors(table, batch_id):
            table.refresh()
        watermarks = read_watermarks(table)
        todo, done = trim_to_watermarks(planned, watermarks)
        todo = [r for r in todo if r.size > 0]
        if not todo:
            return CommitOutcome(0, (), tuple(done), None, attempt)
        if whole_batch and todo != [r for r in planned if r.size > 0]:
            raise OffsetRangeError(
                f"{'.'.join(table.name())} has part of batch {batch_id} ({done}) but not all of it ({todo}): its "
                "result cannot be split by offset range; re-plan the batch from this table's watermark"
            )
        built = build(todo)
        properties = {
            WATERMARK_PROPERTY: encode_watermarks(advance(watermarks, todo)),
            BATCH_PROPERTY: batch_id,
            **(extra_properties or {}),
        }
        try:
            with storage_errors(table, batch_id):
                rows = commit(built, properties)
        except CommitFailedException:
            time.sleep(min(0.05 * 2**attempt, 2.0))
            continue
        snapshot = table.current_snapshot()
        return CommitOutcome(rows, tuple(todo), tuple(done), snapshot.snapshot_id if snapshot else None, attempt)
    raise CommitConflictError(
        f"{'.'.join(table.name())}: lost the commit race {max_attempts} times for batch {batch_id}; nothing was "
        "committed, re-run the batch"
    )


@contextlib.contextmanager
def storage_errors(table: Table, batch_id: str) -> Iterator[None]:
    """A locked or unreachable catalog and a failed warehouse write (disk full) as typed errors. Either way the
    catalog's pointer was not swapped, so the batch is not committed and re-running it is safe."""
    from sqlalchemy.exc import OperationalError

    from k2_resources.errors import CatalogUnavailableError, WarehouseWriteError

    name = ".".join(table.name())
    try:
        yield
    except OperationalError as exc:
        raise CatalogUnavailableError(
            f"{name}: the catalog did not answer or stayed locked past its timeout ({exc.orig}); batch {batch_id} "
            "was not committed: re-run it once the catalog is free (the watermark makes a re-run safe)"
        ) from exc
    except OSError as exc:
        raise WarehouseWriteError(
            f"{name}: writing files to the warehouse failed ({exc}); batch {batch_id} was not committed: free space "
            "or fix access to the warehouse, then re-run it (files it left are orphans for the maintenance job)"
        ) from exc


def append_with_properties(table: Table, rows: pa.Table, properties: dict[str, str]) -> None:
    """Append, even an empty frame: the snapshot still carries the watermark forward."""
    if rows.num_rows == 0:
        # pyiceberg skips the commit for an empty append; a metadata-only property update would not be a snapshot,
        # so commit an empty fast-append snapshot through the transaction API.
        with table.transaction() as tx, tx.update_snapshot(snapshot_properties=properties).fast_append():
            pass
        return
    table.append(rows, snapshot_properties=properties)


def table_to_arrow(table: Table, row_filter: Any = None, selected_fields: tuple[str, ...] = ("*",)) -> pa.Table:
    scan = (
        table.scan(row_filter=row_filter, selected_fields=selected_fields)
        if row_filter is not None
        else table.scan(selected_fields=selected_fields)
    )
    return scan.to_arrow()


def read_files_matching(
    table: Table,
    file_filter: BooleanExpression,
    *,
    snapshot_id: int | None = None,
    selected_fields: tuple[str, ...] = ("*",),
) -> pa.Table:
    """Every row of the data files that `file_filter` may match (pruned by partition values and column bounds, delete
    files applied), without evaluating the filter row by row: the caller filters exactly, cheaper. pyiceberg's row
    filter costs ~1 s per million rows for an OR of a few offset ranges; polars does the same in tens of ms."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    scan = table.scan(row_filter=file_filter, snapshot_id=snapshot_id, selected_fields=selected_fields)
    return ArrowScan(table.metadata, table.io, scan.projection(), AlwaysTrue()).to_table(scan.plan_files())


def snapshot_as_of(
    table: Table, *, snapshot_id: int | None = None, tag: str | None = None, as_of: dt.datetime | None = None
) -> Snapshot:
    """The snapshot named by exactly one of a snapshot id, a tag (or branch) name, or a point in time.

    Raises SnapshotNotFoundError when the table's history no longer has it (expired, or never existed), instead of
    the silent empty result pyiceberg gives for a scan of a snapshot id it does not know. A point in time whose
    snapshot was expired is refused too, rather than answered with an older retained snapshot.
    """
    if sum(x is not None for x in (snapshot_id, tag, as_of)) != 1:
        raise ValueError("give exactly one of snapshot_id, tag, as_of")
    name = ".".join(table.name())
    hint = "snapshots older than the retention are expired unless tagged (`k2 tag create NAME` keeps one)"
    if snapshot_id is not None:
        snap = table.snapshot_by_id(snapshot_id)
        if snap is None:
            raise SnapshotNotFoundError(f"{name} has no snapshot {snapshot_id}: expired or never existed; {hint}")
        return snap
    if tag is not None:
        snap = table.snapshot_by_name(tag)
        if snap is None:
            known = sorted(table.refs())
            raise SnapshotNotFoundError(
                f"{name} has no tag or branch {tag!r} (known: {known}); `k2 tag list` shows tags"
            )
        return snap
    assert as_of is not None
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    at_ms = int(as_of.timestamp() * 1000)
    log = sorted(table.metadata.snapshot_log, key=lambda e: e.timestamp_ms)
    before = [e for e in log if e.timestamp_ms <= at_ms]
    if not before:
        raise SnapshotNotFoundError(f"{name} has no snapshot at or before {as_of.isoformat()}; {hint}")
    found = table.snapshot_by_id(before[-1].snapshot_id)
    after = [e for e in log if e.timestamp_ms > at_ms]
    nxt = table.snapshot_by_id(after[0].snapshot_id) if after else None
    # Expiry cuts lineage: the next retained snapshot lost its parent, so some expired snapshot may have been
    # current at `as_of` (found is never that parent: it is still in the table).
    parent_gone = nxt is not None and (
        nxt.parent_snapshot_id is None or table.snapshot_by_id(nxt.parent_snapshot_id) is None
    )
    if found is None or parent_gone:
        raise SnapshotNotFoundError(f"{name}: the snapshot current at {as_of.isoformat()} was expired; {hint}")
    return found


def scan_as_of(
    table: Table,
    *,
    snapshot_id: int | None = None,
    tag: str | None = None,
    as_of: dt.datetime | None = None,
    row_filter: Any = None,
    selected_fields: tuple[str, ...] = ("*",),
) -> DataScan:
    """A time-travel scan that fails loudly (SnapshotNotFoundError) for a snapshot the table no longer has."""
    snap = snapshot_as_of(table, snapshot_id=snapshot_id, tag=tag, as_of=as_of)
    if row_filter is None:
        return table.scan(selected_fields=selected_fields, snapshot_id=snap.snapshot_id)
    return table.scan(row_filter=row_filter, selected_fields=selected_fields, snapshot_id=snap.snapshot_id)
