"""Disaster recovery of the Iceberg catalog (design review §3.2: "PostgreSQL catalog corrupted: can you rebuild from
the files?").

The catalog holds only pointers: per table, the location of its current metadata file. Everything else (schema,
snapshots, the Kafka watermarks K2 keeps in snapshot summaries) lives in the warehouse. So:

- `backup` writes the catalog's content (namespaces with their properties, every table's metadata pointer, its
  current snapshot and row count) to a JSON file: the recovery point and a check list.
- `rebuild_catalog` registers every table again from the newest metadata file found in the warehouse (newer than
  any backup, since commits after the backup are in the warehouse too), restoring namespace properties from a
  backup when one is given. It never overwrites a table the catalog still has.

Choosing "the newest" metadata file: pyiceberg names them `<version>-<uuid>.metadata.json` and writes the file
*before* the catalog's compare-and-swap, so a writer that lost a commit race, or a `create_table_if_not_exists` that
found the table, leaves an orphan file. Orphans from a lost race are superseded once the loser retries (its next
version is higher); orphan creates are all version 0 and later than the real create. Hence: the highest version
wins; among several version-0 files the earliest; among several files at a higher version (a writer lost a race and
never retried) the backup's pointer if it is one of them, else the latest, reported as ambiguous.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError

from k2_resources.env import Settings
from k2_resources.errors import RecoveryError
from k2_resources.iceberg import IcebergResource
from k2_resources.s3 import warehouse_filesystem

BACKUP_FORMAT = "k2-catalog-backup/1"
_METADATA_FILE = re.compile(r"^v?(\d+)(?:-[^.]+)?(?:\.gz)?\.metadata\.json$")


def _redact(uri: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", uri)


def _ensure_catalog_database(settings: Settings) -> None:
    if settings.catalog_uri.startswith("postgresql"):
        from k2_resources.postgres import ensure_database

        ensure_database(settings.catalog_uri)


def open_catalog(settings: Settings) -> Catalog:
    return IcebergResource.from_settings(settings).catalog()


# --- backup ---------------------------------------------------------------------------------------------------------


def backup(settings: Settings, out: Path) -> dict[str, Any]:
    """Write the catalog's namespaces, properties and table pointers to `out` (JSON) and return what was written."""
    catalog = open_catalog(settings)
    namespaces: list[dict[str, Any]] = []
    tables: list[dict[str, Any]] = []
    for ns in catalog.list_namespaces():
        name = ".".join(ns)
        namespaces.append({"name": name, "properties": catalog.load_namespace_properties(ns)})
        for ident in catalog.list_tables(ns):
            table = catalog.load_table(ident)
            snapshot = table.current_snapshot()
            summary = snapshot.summary.additional_properties if snapshot and snapshot.summary else {}
            tables.append(
                {
                    "identifier": ".".join(ident),
                    "metadata_location": table.metadata_location,
                    "location": table.location(),
                    "table_uuid": str(table.metadata.table_uuid),
                    "format_version": table.format_version,
                    "current_snapshot_id": snapshot.snapshot_id if snapshot else None,
                    "total_records": int(summary.get("total-records", 0)),
                    "snapshots": len(table.snapshots()),
                }
            )
    document = {
        "format": BACKUP_FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "catalog_uri": _redact(settings.catalog_uri),
        "warehouse": settings.warehouse,
        "namespaces": namespaces,
        "tables": tables,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1, sort_keys=False))
    return document


def load_backup(path: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecoveryError(f"cannot read the backup {path}: {exc}") from exc
    if document.get("format") != BACKUP_FORMAT:
        raise RecoveryError(f"{path} is not a K2 catalog backup (format {document.get('format')!r})")
    return document


# --- rebuild --------------------------------------------------------------------------------------------------------


@dataclass
class TableRecovery:
    identifier: str
    metadata_location: str
    version: int
    action: str  # registered | kept (catalog already has it) | planned (dry run)
    candidates_at_version: int = 1
    ambiguous: bool = False
    since_backup: str = ""  # same | newer | not-in-backup


@dataclass
class RebuildReport:
    tables: list[TableRecovery] = field(default_factory=list)
    namespaces_created: list[str] = field(default_factory=list)
    missing_from_warehouse: list[str] = field(default_factory=list)  # in the backup, no metadata file found

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uri(settings: Settings, path: str) -> str:
    """fsspec path (no scheme) -> URI in the warehouse's scheme, as pyiceberg writes metadata locations."""
    scheme = settings.warehouse.split("://", 1)[0]
    return f"file://{path if path.startswith('/') else '/' + path}" if scheme == "file" else f"{scheme}://{path}"


def _path(uri: str) -> str:
    return uri.split("://", 1)[1]


def find_metadata_files(settings: Settings, extra_locations: Iterable[str] = ()) -> dict[str, list[tuple[int, str]]]:
    """table location URI -> [(version, metadata file URI)], from `<warehouse>/<namespace>/<table>/metadata/`
    (pyiceberg's default layout) plus any table locations named in a backup."""
    fs, root = warehouse_filesystem(settings)
    patterns = {f"{root}/*/*/metadata/*.metadata.json"}
    patterns |= {f"{_path(loc).rstrip('/')}/metadata/*.metadata.json" for loc in extra_locations}
    found: dict[str, set[tuple[int, str]]] = {}
    for pattern in sorted(patterns):
        for path in fs.glob(pattern):
            match = _METADATA_FILE.match(path.rsplit("/", 1)[-1])
            if match:
                table_dir = _uri(settings, path.rsplit("/metadata/", 1)[0])
                found.setdefault(table_dir, set()).add((int(match.group(1)), _uri(settings, path)))
    return {location: sorted(files) for location, files in found.items()}


def _read_json(settings: Settings, uri: str) -> dict[str, Any]:
    fs, _ = warehouse_filesystem(settings)
    with fs.open(_path(uri)) as handle:
        raw = handle.read()
    if uri.endswith(".gz.metadata.json"):
        raw = gzip.decompress(raw)
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


def choose_head(settings: Settings, files: list[tuple[int, str]], preferred: str | None) -> tuple[int, str, int, bool]:
    """(version, metadata URI, candidates at that version, ambiguous) of the table's current metadata file."""
    top = max(v for v, _ in files)
    candidates = sorted(uri for v, uri in files if v == top)
    if len(candidates) == 1:
        return top, candidates[0], 1, False
    if preferred in candidates:
        return top, preferred, len(candidates), False
    stamped = sorted((int(_read_json(settings, uri).get("last-updated-ms", 0)), uri) for uri in candidates)
    if top == 0:
        # Every create_table that lost to an existing table left a version-0 file; the first create is the table.
        return top, stamped[0][1], len(candidates), False
    return top, stamped[-1][1], len(candidates), True


def _identifier_for(table_dir: str) -> str:
    namespace, table = table_dir.rstrip("/").rsplit("/", 2)[-2:]
    return f"{namespace.removesuffix('.db')}.{table}"


def rebuild_catalog(settings: Settings, backup_path: Path | None = None, *, dry_run: bool = False) -> RebuildReport:
    """Register every table found in the warehouse that the catalog lacks, at its newest metadata file."""
    document = load_backup(backup_path) if backup_path else None
    backed_up = {t["identifier"]: t for t in (document or {}).get("tables", [])}
    by_location = {t["location"].rstrip("/"): t["identifier"] for t in backed_up.values()}
    if not dry_run:
        _ensure_catalog_database(settings)
    catalog = open_catalog(settings)
    report = RebuildReport()

    ns_props = {n["name"]: n.get("properties", {}) for n in (document or {}).get("namespaces", [])}
    found = find_metadata_files(settings, [t["location"] for t in backed_up.values()])
    if not found and not backed_up:
        raise RecoveryError(
            f"no Iceberg metadata files under {settings.warehouse}: is K2_WAREHOUSE (and the S3 endpoint) right?"
        )
    seen: set[str] = set()
    for table_dir, files in sorted(found.items()):
        identifier = by_location.get(table_dir.rstrip("/"), _identifier_for(table_dir))
        seen.add(identifier)
        pointer = backed_up.get(identifier, {}).get("metadata_location")
        version, location, count, ambiguous = choose_head(settings, files, pointer)
        since = "not-in-backup" if pointer is None else ("same" if pointer == location else "newer")
        recovery = TableRecovery(identifier, location, version, "planned", count, ambiguous, since)
        report.tables.append(recovery)
        if dry_run:
            continue
        namespace = identifier.rsplit(".", 1)[0]
        with contextlib.suppress(NamespaceAlreadyExistsError):
            catalog.create_namespace(namespace, ns_props.get(namespace, {}))
            report.namespaces_created.append(namespace)
        try:
            catalog.load_table(identifier)
            recovery.action = "kept"
            continue
        except NoSuchTableError:
            pass
        try:
            catalog.register_table(identifier, location)
            recovery.action = "registered"
        except TableAlreadyExistsError:
            recovery.action = "kept"
    report.missing_from_warehouse = sorted(set(backed_up) - seen)
    return report
