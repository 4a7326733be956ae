"""Settings for the prod profile on the test servers: a PostgreSQL catalog (a database per test), optionally an S3
warehouse, and the shared Kafka broker."""

from __future__ import annotations

import itertools
from pathlib import Path

from k2_resources.env import Settings
from k2_resources.postgres import LocalPostgres
from tests.conftest import make_settings

_db_ids = itertools.count(1)


def prod_settings(
    tmp_path: Path,
    postgres: LocalPostgres,
    bootstrap: str = "127.0.0.1:1",
    *,
    warehouse: str | None = None,
    **extra: str,
) -> Settings:
    """K2_ENV=prod settings with a fresh catalog database and a fresh Dagster database on `postgres`."""
    n = next(_db_ids)
    catalog = postgres.create_database(f"catalog_{n}")
    dagster = postgres.create_database(f"dagster_{n}")
    return make_settings(
        tmp_path,
        bootstrap,
        K2_ENV="prod",
        K2_CATALOG_URI=catalog,
        K2_DAGSTER_PG_URL=dagster,
        K2_WAREHOUSE=warehouse or (tmp_path / "warehouse").as_uri(),
        **extra,
    )
