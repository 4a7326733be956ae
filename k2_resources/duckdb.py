"""DuckDB over K2's Iceberg tables, through the iceberg extension shipped as a PyPI wheel."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import duckdb

from k2_resources.errors import ConfigurationError, TableNotFoundError
from k2_resources.iceberg import IcebergResource

# The iceberg extension reads manifests with the avro extension; both ship as wheels pinned to duckdb's version.
_EXTENSIONS = ("avro", "iceberg")


def extension_file(name: str) -> Path:
    try:
        module = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError as exc:
        raise ConfigurationError(
            f"the DuckDB {name} extension is not installed: pip install duckdb-extension-{name}=={duckdb.__version__}"
        ) from exc
    root = Path(module.__file__ or "").parent / "extensions"
    matches = sorted(root.glob(f"v{duckdb.__version__}/{name}.duckdb_extension"))
    if not matches:
        raise ConfigurationError(
            f"duckdb-extension-{name} has no build for duckdb {duckdb.__version__}: pin both to the same version"
        )
    return matches[0]


def load_extensions(con: duckdb.DuckDBPyConnection) -> None:
    for name in _EXTENSIONS:
        con.execute(f"INSTALL '{extension_file(name)}'")
        con.execute(f"LOAD {name}")


def configure_s3(con: duckdb.DuckDBPyConnection, catalog_properties: Mapping[str, str]) -> None:
    """For an s3:// warehouse: load httpfs (from its wheel) and create a DuckDB S3 secret from the same FileIO
    properties pyiceberg uses (IcebergResource.catalog_properties). No-op for a local warehouse."""
    if not any(k.startswith("s3.") for k in catalog_properties):
        return
    con.execute(f"INSTALL '{extension_file('httpfs')}'")
    con.execute("LOAD httpfs")
    options = {"REGION": catalog_properties.get("s3.region", "us-east-1")}
    if "s3.access-key-id" in catalog_properties:
        options["KEY_ID"] = catalog_properties["s3.access-key-id"]
        options["SECRET"] = catalog_properties.get("s3.secret-access-key", "")
    endpoint = catalog_properties.get("s3.endpoint")
    if endpoint:
        parsed = urlsplit(endpoint)
        options["ENDPOINT"] = parsed.netloc or parsed.path
        options["URL_STYLE"] = "path"
        options["USE_SSL"] = "true" if parsed.scheme == "https" else "false"
    rendered = ", ".join(
        f"{k} {v}" if v in ("true", "false") else f"{k} '{v.replace(chr(39), chr(39) * 2)}'" for k, v in options.items()
    )
    con.execute(f"CREATE OR REPLACE SECRET k2_warehouse (TYPE s3, {rendered})")


def connect(
    iceberg: IcebergResource,
    *,
    memory_limit: str = "2GB",
    threads: int | None = None,
    snapshots: dict[str, int] | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per existing K2 table, as `<name>` and `market_data.<name>`.

    `snapshots` pins tables to a snapshot id (time travel); other tables read their current snapshot.
    """
    con = duckdb.connect(config={"memory_limit": memory_limit, **({"threads": threads} if threads else {})})
    load_extensions(con)
    configure_s3(con, iceberg.catalog_properties)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {iceberg.namespace}")
    catalog = iceberg.catalog()
    for ident in catalog.list_tables(iceberg.namespace):
        name = ident[-1]
        table = catalog.load_table(ident)
        location = table.metadata_location
        pinned = (snapshots or {}).get(name)
        if pinned is not None and table.snapshot_by_id(pinned) is None:
            raise TableNotFoundError(f"{iceberg.namespace}.{name} has no snapshot {pinned}")
        version = f", snapshot_from_id => {int(pinned)}" if pinned is not None else ""
        source = f"iceberg_scan('{location}'{version})"
        if table.current_snapshot() is None:
            arrow_schema = table.schema().as_arrow()
            con.register(f"_empty_{name}", arrow_schema.empty_table())
            source = f"_empty_{name}"
        for qualified in (name, f"{iceberg.namespace}.{name}"):
            con.execute(f"CREATE OR REPLACE VIEW {qualified} AS SELECT * FROM {source}")
    return con


class DuckDBResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Query engine over the Iceberg tables."""

    memory_limit: str = "2GB"

    def connect(self, iceberg: IcebergResource) -> duckdb.DuckDBPyConnection:
        return connect(iceberg, memory_limit=self.memory_limit)
