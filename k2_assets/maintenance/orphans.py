"""Orphan files: files under a table's location that no metadata references, left by failed or abandoned writes.

Referenced means: the current metadata file and every metadata file in its log, and for every snapshot its
manifest list, its manifests and every file any of those manifests names (whatever the entry's status). Only files
older than a safety window are orphans, so a write in flight (data written, commit not yet done) is never touched.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import pyarrow.fs as pafs
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

from k2_assets.maintenance.files import delete_files, normalize, reachable
from k2_resources.errors import ConfigurationError

MIN_WINDOW = dt.timedelta(hours=1)


@dataclass(frozen=True)
class OrphanFile:
    path: str
    size: int
    modified: dt.datetime


@dataclass
class OrphanResult:
    table: str
    files_listed: int = 0
    files_referenced: int = 0
    orphans: list[OrphanFile] = field(default_factory=list)
    too_young: int = 0  # unreferenced but inside the safety window
    deleted: int = 0
    bytes_deleted: int = 0
    not_deleted: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = True


def referenced_paths(table: Table) -> set[tuple[str, str]]:
    metadata = table.metadata
    paths = reachable(table, table.snapshots(), all_entries=True).all_paths()
    paths.add(table.metadata_location)
    paths |= {entry.metadata_file for entry in metadata.metadata_log}
    paths |= {s.statistics_path for s in metadata.statistics}
    paths |= {s.statistics_path for s in metadata.partition_statistics}
    return {normalize(p) for p in paths}


def _filesystem(table: Table, location: str) -> tuple[pafs.FileSystem, str, str]:
    scheme, netloc, path = PyArrowFileIO.parse_location(location)
    io = table.io
    if isinstance(io, PyArrowFileIO):
        return io.fs_by_scheme(scheme, netloc), scheme, path
    fs, path = pafs.FileSystem.from_uri(location)
    return fs, scheme, path


def list_files(table: Table) -> list[tuple[str, str, int, dt.datetime]]:
    """(scheme, path, size, mtime) of every file under the table location."""
    fs, scheme, root = _filesystem(table, table.location())
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return []
    return [
        (
            scheme,
            info.path,
            int(info.size or 0),
            info.mtime.astimezone(dt.UTC) if info.mtime else dt.datetime.now(dt.UTC),
        )
        for info in infos
        if info.type == pafs.FileType.File
    ]


def _uri(scheme: str, path: str) -> str:
    return f"file://{path}" if scheme == "file" else f"{scheme}://{path}"


def remove_orphans(
    table: Table,
    *,
    older_than: dt.timedelta = dt.timedelta(days=3),
    dry_run: bool = True,
    now: dt.datetime | None = None,
) -> OrphanResult:
    """Find (and unless `dry_run`, delete) unreferenced files older than `older_than`."""
    if older_than < MIN_WINDOW:
        raise ConfigurationError(
            f"orphan safety window {older_than} is below {MIN_WINDOW}: a write in flight could lose its files"
        )
    started = time.perf_counter()
    now = now or dt.datetime.now(dt.UTC)
    result = OrphanResult(table=".".join(table.name()), dry_run=dry_run)
    # List first, then reload and read the references: a file committed in between is then seen as referenced.
    listed = list_files(table)
    table.refresh()
    referenced = referenced_paths(table)
    result.files_listed = len(listed)
    cutoff = now - older_than
    for scheme, path, size, modified in listed:
        if (scheme, path) in referenced:
            result.files_referenced += 1
        elif modified < cutoff:
            result.orphans.append(OrphanFile(_uri(scheme, path), size, modified))
        else:
            result.too_young += 1
    if not dry_run and result.orphans:
        failed = set(delete_files(table.io, [o.path for o in result.orphans]))
        result.not_deleted = sorted(failed)
        result.deleted = len([o for o in result.orphans if o.path not in failed])
        result.bytes_deleted = sum(o.size for o in result.orphans if o.path not in failed)
    result.seconds = time.perf_counter() - started
    return result
