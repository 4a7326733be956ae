"""What a table's snapshots reference: live data files per partition, and every file reachable from a set of
snapshots (manifest lists, manifests, data and delete files). Compaction, expiry, orphan removal and the health
metrics all read the table through these helpers, so they agree on what "referenced" means."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.manifest import DataFile, DataFileContent, ManifestEntryStatus, ManifestFile
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

# Manifest reads are I/O bound (object stores especially); a small pool of our own avoids nesting pyiceberg's.
_IO_THREADS = 8

PartitionKey = tuple[int, tuple[Any, ...]]  # (spec id, partition values)


def partition_key(data_file: DataFile) -> PartitionKey:
    record = data_file.partition
    values = tuple(record[i] for i in range(len(record))) if record is not None else ()
    return int(data_file.spec_id or 0), values


def partition_label(table: Table, key: PartitionKey) -> str:
    """`exchange_day=20417/exchange=ASX/symbol_trunc=BHP`: readable, stable, for metadata and logs."""
    spec_id, values = key
    spec = table.specs().get(spec_id)
    names = [f.name for f in spec.fields] if spec is not None else [f"f{i}" for i in range(len(values))]
    return "/".join(f"{n}={v}" for n, v in zip(names, values, strict=False)) or "unpartitioned"


@dataclass
class LiveFiles:
    """The data and delete files a snapshot reads, grouped by partition."""

    data: dict[PartitionKey, list[DataFile]] = field(default_factory=dict)
    deletes: dict[PartitionKey, list[DataFile]] = field(default_factory=dict)

    def data_files(self) -> list[DataFile]:
        return [f for files in self.data.values() for f in files]

    def paths(self) -> set[str]:
        return {f.file_path for f in self.data_files()}


def _map(fn: Any, items: Iterable[Any]) -> list[Any]:
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(_IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def live_files(table: Table, snapshot: Snapshot | None = None) -> LiveFiles:
    """Files of `snapshot` (default: the current one), from its manifests."""
    snapshot = snapshot or table.current_snapshot()
    out = LiveFiles()
    if snapshot is None:
        return out
    io = table.io
    entries = _map(lambda m: m.fetch_manifest_entry(io, discard_deleted=True), snapshot.manifests(io))
    for manifest_entries in entries:
        for entry in manifest_entries:
            data_file = entry.data_file
            target = out.data if data_file.content == DataFileContent.DATA else out.deletes
            target.setdefault(partition_key(data_file), []).append(data_file)
    return out


@dataclass
class Reachable:
    """Every file a set of snapshots needs: their manifest lists, manifests, and the data/delete files those
    manifests list as live (ADDED or EXISTING). With `all_entries`, DELETED entries count too (orphan removal is
    conservative and keeps anything any manifest names)."""

    manifest_lists: set[str] = field(default_factory=set)
    manifests: dict[str, int] = field(default_factory=dict)  # path -> length in bytes
    files: dict[str, int] = field(default_factory=dict)  # path -> size in bytes

    def all_paths(self) -> set[str]:
        return self.manifest_lists | set(self.manifests) | set(self.files)


def reachable(
    table: Table,
    snapshots: Iterable[Snapshot],
    *,
    all_entries: bool = False,
    known: Reachable | None = None,
) -> Reachable:
    """Files of `snapshots`. Manifests already in `known` are listed but not read again: their entries are in
    `known.files` already."""
    io = table.io
    out = Reachable()
    snapshots = list(snapshots)
    out.manifest_lists = {s.manifest_list for s in snapshots if s.manifest_list}
    manifest_lists: list[list[ManifestFile]] = _map(lambda s: s.manifests(io), snapshots)
    unique: dict[str, ManifestFile] = {}
    for manifests in manifest_lists:
        for manifest in manifests:
            unique.setdefault(manifest.manifest_path, manifest)
    out.manifests = {path: int(m.manifest_length) for path, m in unique.items()}

    def entries(manifest: ManifestFile) -> list[tuple[str, int]]:
        return [
            (e.data_file.file_path, int(e.data_file.file_size_in_bytes))
            for e in manifest.fetch_manifest_entry(io, discard_deleted=False)
            if all_entries or e.status != ManifestEntryStatus.DELETED
        ]

    skip = known.manifests if known is not None else {}
    for pairs in _map(entries, [m for path, m in unique.items() if path not in skip]):
        out.files.update(pairs)
    return out


def normalize(location: str) -> tuple[str, str]:
    """(scheme, filesystem path) of a location, so URIs from metadata and paths from a listing compare equal."""
    scheme, _netloc, path = PyArrowFileIO.parse_location(location)
    return scheme, path


def delete_files(io: FileIO, paths: Iterable[str]) -> list[str]:
    """Delete `paths`; returns those that could not be deleted (already-missing files count as deleted)."""

    def delete(path: str) -> str | None:
        try:
            io.delete(path)
        except FileNotFoundError:
            return None
        except OSError:
            return path
        return None

    return [p for p in _map(delete, sorted(paths)) if p is not None]
