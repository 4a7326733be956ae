"""The one place that reads configuration.

Everything K2 needs from the environment is read here into a frozen `Settings`, and nowhere else. Other modules
receive a `Settings` (or a resource built from one); none reads `os.environ` at import time.

Variables (all optional in the local profile):
    K2_ENV                   local (default) | prod
    K2_HOME                  state directory for the local profile (default: ./.k2)
    K2_KAFKA_BOOTSTRAP       bootstrap servers (default 127.0.0.1:<K2_KAFKA_PORT>)
    K2_KAFKA_PORT            local broker port (default 19092)
    K2_EXCHANGE              exchange code of the feed (default ASX)
    K2_TICK_TOPIC            tick topic (default market.ticks.<exchange>)
    K2_TOPIC_PARTITIONS      partitions of a newly created tick topic (default 6)
    K2_MAX_BATCH_PER_PARTITION  most offsets one planned range covers (default 500000)
    K2_CATALOG_URI           SQLAlchemy URI of the Iceberg SQL catalog (default sqlite:///<K2_HOME>/catalog.db)
    K2_WAREHOUSE             warehouse location (default file://<K2_HOME>/warehouse)
    K2_NAMESPACE             Iceberg namespace (default market_data)

  Production profile (K2_ENV=prod; see infra/postgres, infra/s3, infra/registry):
    K2_DAGSTER_PG_URL        PostgreSQL URL of Dagster's run/event/schedule storage (default: K2_CATALOG_URI when
                             that is a postgresql URL); infra/postgres/dagster.yaml reads it
    K2_S3_ENDPOINT           S3 API endpoint of the warehouse bucket, e.g. http://127.0.0.1:8333 (default: AWS)
    K2_S3_ACCESS_KEY_ID      S3 credentials of the warehouse
    K2_S3_SECRET_ACCESS_KEY
    K2_S3_REGION             S3 region (default us-east-1)
    K2_SCHEMA_REGISTRY_URL   Confluent-API schema registry; unset = the schema files shipped with the code
    K2_MAX_CONSUMER_LAG      Kafka records behind the committed watermark that raise degradation level 1
                             (default 1000000; docs/DEGRADATION.md)
    K2_CATALOG_TIMEOUT_S     seconds to wait for the catalog before ingest pauses as level 2 (default 5)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from k2_resources.errors import ConfigurationError

DEFAULT_KAFKA_PORT = 19092


@dataclass(frozen=True)
class Settings:
    env: str
    home: Path
    kafka_bootstrap: str
    kafka_port: int
    exchange: str
    tick_topic: str
    topic_partitions: int
    max_batch_per_partition: int
    catalog_uri: str
    warehouse: str
    namespace: str
    dagster_pg_url: str | None = None
    s3_endpoint: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_region: str = "us-east-1"
    schema_registry_url: str | None = None
    max_consumer_lag: int = 1_000_000
    catalog_timeout_s: int = 5

    @property
    def dlq_topic(self) -> str:
        return "market.ticks.dlq"

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"


def topic_for_exchange(exchange: str) -> str:
    return f"market.ticks.{exchange.lower()}"


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name}={raw!r} is not an integer; unset it or give a number") from exc


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `environ` (default: the process environment)."""
    environ = os.environ if environ is None else environ
    env = environ.get("K2_ENV", "local")
    if env not in ("local", "prod"):
        raise ConfigurationError(f"K2_ENV={env!r}: use 'local' or 'prod'")
    home = Path(environ.get("K2_HOME", ".k2")).resolve()
    port = _int(environ, "K2_KAFKA_PORT", DEFAULT_KAFKA_PORT)
    exchange = environ.get("K2_EXCHANGE", "ASX").upper()
    if env == "prod":
        missing = [n for n in ("K2_KAFKA_BOOTSTRAP", "K2_CATALOG_URI", "K2_WAREHOUSE") if not environ.get(n)]
        if missing:
            raise ConfigurationError(f"K2_ENV=prod needs {', '.join(missing)} to be set")
    return Settings(
        env=env,
        home=home,
        kafka_bootstrap=environ.get("K2_KAFKA_BOOTSTRAP") or f"127.0.0.1:{port}",
        kafka_port=port,
        exchange=exchange,
        tick_topic=environ.get("K2_TICK_TOPIC") or topic_for_exchange(exchange),
        topic_partitions=_int(environ, "K2_TOPIC_PARTITIONS", 6),
        max_batch_per_partition=_int(environ, "K2_MAX_BATCH_PER_PARTITION", 500_000),
        catalog_uri=environ.get("K2_CATALOG_URI") or f"sqlite:///{home / 'catalog.db'}",
        warehouse=environ.get("K2_WAREHOUSE") or (home / "warehouse").as_uri(),
        namespace=environ.get("K2_NAMESPACE", "market_data"),
        dagster_pg_url=environ.get("K2_DAGSTER_PG_URL") or _default_dagster_pg_url(environ.get("K2_CATALOG_URI")),
        s3_endpoint=environ.get("K2_S3_ENDPOINT") or None,
        s3_access_key_id=environ.get("K2_S3_ACCESS_KEY_ID") or None,
        s3_secret_access_key=environ.get("K2_S3_SECRET_ACCESS_KEY") or None,
        s3_region=environ.get("K2_S3_REGION") or "us-east-1",
        schema_registry_url=environ.get("K2_SCHEMA_REGISTRY_URL") or None,
        max_consumer_lag=_int(environ, "K2_MAX_CONSUMER_LAG", 1_000_000),
        catalog_timeout_s=_int(environ, "K2_CATALOG_TIMEOUT_S", 5),
    )


def _default_dagster_pg_url(catalog_uri: str | None) -> str | None:
    """Dagster shares the catalog's PostgreSQL database unless told otherwise (its tables have distinct names)."""
    if catalog_uri and catalog_uri.startswith("postgresql"):
        return catalog_uri
    return None
