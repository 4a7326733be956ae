"""Backtest tags: `k2 tag create NAME` tags the current snapshot of every table (Iceberg tags, so snapshot expiry
keeps them: k2_assets.maintenance.tags) and records a manifest that reproduces any read made with `as_of=NAME`:
the snapshot id of each table, and the code version (git sha, package and library versions) that read them.

Manifests are rows of `k2_tag_manifests` in the catalog database (SQLite locally, PostgreSQL in prod), next to the
catalog they describe. A read with `as_of="NAME"` pins each table to its Iceberg tag, or to the manifest's snapshot
if the tag itself is gone.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from k2_resources.env import Settings, load_settings
from k2_resources.errors import PermissionDeniedError, TagExistsError

if TYPE_CHECKING:  # sqlalchemy and pyiceberg load when a tag command runs, not when `k2 --help` does
    import sqlalchemy as sa

    from k2_resources.auth import Principal

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("duckdb", "pyiceberg", "polars", "pyarrow", "dagster", "fastavro")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@cache
def code_version() -> dict[str, Any]:
    """What code is reading: the git commit (and whether tracked files differ from it) and library versions."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "k2_version": _version("k2"),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


@cache
def _manifests() -> sa.Table:
    import sqlalchemy as sa

    return sa.Table(
        "k2_tag_manifests",
        sa.MetaData(),
        sa.Column("catalog_namespace", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
    )


def _engine(settings: Settings) -> sa.Engine:
    from k2_resources.auth import AuthStore

    engine = AuthStore.from_settings(settings).engine
    _manifests().metadata.create_all(engine)
    return engine


def write_manifest(
    settings: Settings, name: str, snapshots: dict[str, tuple[int, dt.datetime]], created_by: str
) -> dict[str, Any]:
    """Record the manifest of tag `name`: table -> (snapshot id, commit time)."""
    import sqlalchemy as sa

    MANIFESTS = _manifests()
    now = dt.datetime.now(dt.UTC)
    manifest = {
        "name": name,
        "created_at": now.isoformat(),
        "created_by": created_by,
        "namespace": settings.namespace,
        "warehouse": settings.warehouse,
        "tables": {
            table: {"snapshot_id": sid, "committed_at": at.isoformat()}
            for table, (sid, at) in sorted(snapshots.items())
        },
        "code": code_version(),
        "reproduce": {
            "python": f"k2.query.Client().sql('SELECT ...', as_of={name!r})",
            "cli": f"k2 query sql 'SELECT ...' --as-of {name}",
        },
    }

    MANIFESTS = _manifests()
    with _engine(settings).begin() as con:
        exists = con.execute(
            sa.select(MANIFESTS.c.name).where(
                MANIFESTS.c.catalog_namespace == settings.namespace, MANIFESTS.c.name == name
            )
        ).first()
        if exists is not None:
            raise TagExistsError(f"a backtest manifest named {name!r} exists already: pick another tag name")
        con.execute(
            MANIFESTS.insert().values(
                catalog_namespace=settings.namespace,
                name=name,
                created_at=now,
                created_by=created_by,
                manifest=json.dumps(manifest),
            )
        )
    return manifest


def create(
    settings: Settings, name: str, tables: list[str] | None = None, principal: Principal | None = None
) -> dict[str, Any]:
    """Tag every table's current snapshot (or `tables`') and write the manifest. With a principal, it must hold
    `write` on `<namespace>.tags` (quant and admin do)."""
    from k2_assets.maintenance.tags import create_tag
    from k2_resources.auth import Authorizer, AuthStore
    from k2_resources.iceberg import IcebergResource

    created_by = "system"
    if principal is not None:
        resource = f"{settings.namespace}.tags"
        if not Authorizer(AuthStore.from_settings(settings), settings.namespace).allowed(principal, resource, "write"):
            raise PermissionDeniedError(f"{principal.user} (role {principal.role}) may not write {resource}")
        created_by = principal.user
    if manifest(settings, name) is not None:
        raise TagExistsError(f"a backtest manifest named {name!r} exists already: pick another tag name")
    infos = create_tag(IcebergResource.from_settings(settings), name, tables)
    return write_manifest(settings, name, {i.table: (i.snapshot_id, i.committed_at) for i in infos}, created_by)


def manifest(settings: Settings, name: str) -> dict[str, Any] | None:
    import sqlalchemy as sa

    MANIFESTS = _manifests()
    with _engine(settings).connect() as con:
        row = con.execute(
            sa.select(MANIFESTS.c.manifest).where(
                MANIFESTS.c.catalog_namespace == settings.namespace, MANIFESTS.c.name == name
            )
        ).first()
    return json.loads(row[0]) if row is not None else None


def manifest_snapshots(settings: Settings, name: str) -> dict[str, int] | None:
    """table -> snapshot id recorded for tag `name`, or None when no manifest has that name."""
    found = manifest(settings, name)
    if found is None:
        return None
    return {table: int(entry["snapshot_id"]) for table, entry in found["tables"].items()}


def list_manifests(settings: Settings) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    MANIFESTS = _manifests()
    with _engine(settings).connect() as con:
        rows = con.execute(
            sa.select(MANIFESTS.c.manifest)
            .where(MANIFESTS.c.catalog_namespace == settings.namespace)
            .order_by(MANIFESTS.c.created_at)
        ).all()
    return [json.loads(r[0]) for r in rows]


tag_app = typer.Typer(help="Backtest tags: pinned snapshots of every table plus a reproducibility manifest.")
console = Console(width=None if sys.stdout.isatty() else 200)


@tag_app.command("create")
def create_cmd(
    name: Annotated[str, typer.Argument(help="Tag name, e.g. backtest-2026-11")],
    table: Annotated[list[str] | None, typer.Option(help="Only these tables (default: every table)")] = None,
    token: Annotated[str | None, typer.Option("--token", help="JWT (default: K2_TOKEN)")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key (default: K2_API_KEY)")] = None,
) -> None:
    """Tag the current snapshot of every table as NAME and record the backtest manifest."""
    from k2_resources.auth import authenticate

    settings = load_settings()
    principal = authenticate(settings, token=token, api_key=api_key)
    made = create(settings, name, table, principal)
    for t, entry in made["tables"].items():
        console.print(f"{t}: snapshot {entry['snapshot_id']} ({entry['committed_at']})")
    console.print(f"tag {name} at code {made['code']['git_sha']}; read it with --as-of {name}")


@tag_app.command("list")
def list_cmd() -> None:
    """Every backtest manifest."""
    for m in list_manifests(load_settings()):
        console.print(f"{m['name']}  {m['created_at']}  by {m['created_by']}  {len(m['tables'])} tables")


@tag_app.command("show")
def show_cmd(name: str) -> None:
    """The manifest of tag NAME, as JSON."""
    found = manifest(load_settings(), name)
    if found is None:
        raise typer.BadParameter(f"no tag {name!r}: `k2 tag list` shows them")
    sys.stdout.write(json.dumps(found, indent=1) + "\n")
