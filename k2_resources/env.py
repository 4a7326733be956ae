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

  Serving reads (k2.query, `k2 query`, governance, metrics):
    K2_JWT_SECRET            HS256 secret that signs and verifies user tokens; required in prod (local default: a
                             random secret generated once into <K2_HOME>/auth/jwt.secret)
    K2_TOKEN                 the caller's JWT for the CLI (same as --token)
    K2_API_KEY               the caller's API key for the CLI (same as --api-key)
    K2_LOCAL_ROLE            role of a caller with no credentials: local default admin; `none` (the prod default)
                             means every caller must present a token or API key
    K2_QUERY_MAX_CONCURRENT  queries run at once per process; further queries wait in a queue (default 10)
    K2_QUERY_QUEUE_TIMEOUT_S longest wait for a query slot before QueryQueueTimeoutError (default 300)
    K2_QUERY_TIMEOUT_S       run time after which a query is interrupted (default 300)
    K2_QUERY_MEMORY_LIMIT    DuckDB memory limit per query, no spilling (default 2GB)
    K2_QUERY_THREADS         DuckDB threads per query (default: DuckDB's, one per core)
    K2_QUERY_TAIL_MAX_RECORDS  most Kafka records past the ingest watermark one query reads (default 2000000)
    K2_QUERY_WINDOW_S        default look-back of a tick query given no start (default 60)
    K2_METRICS_DIR           where Dagster runs record figures for `k2 metrics serve` (default <K2_HOME>/metrics)
    K2_METRICS_PORT          port of `k2 metrics serve` on 127.0.0.1 (default 9464)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from k2_resources.errors import ConfigurationError

DEFAULT_KAFKA_PORT = 19092


@dataclass(frozen=True)
class ServingSettings:
    """Query limits, governance and metrics knobs (k2.query, k2_resources.auth, k2_resources.metrics)."""

    jwt_secret: str | None = None
    token: str | None = None
    api_key: str | None = None
    local_role: str | None = "admin"
    max_concurrent: int = 10
    queue_timeout_s: float = 300.0
    timeout_s: float = 300.0
    memory_limit: str = "2GB"
    threads: int | None = None
    tail_max_records: int = 2_000_000
    window_s: float = 60.0
    metrics_dir: Path | None = None
    metrics_port: int = 9464


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
    serving: ServingSettings = field(default_factory=ServingSettings)

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
        serving=_serving(environ, env, home),
    )


def _default_dagster_pg_url(catalog_uri: str | None) -> str | None:
    """Dagster shares the catalog's PostgreSQL database unless told otherwise (its tables have distinct names)."""
    if catalog_uri and catalog_uri.startswith("postgresql"):
        return catalog_uri
    return None


def _serving(environ: Mapping[str, str], env: str, home: Path) -> ServingSettings:
    local_role = environ.get("K2_LOCAL_ROLE") or ("admin" if env == "local" else "none")
    threads = _int(environ, "K2_QUERY_THREADS", 0)
    secret = environ.get("K2_JWT_SECRET") or None
    return ServingSettings(
        jwt_secret=secret,
        token=environ.get("K2_TOKEN") or None,
        api_key=environ.get("K2_API_KEY") or None,
        local_role=None if local_role == "none" else local_role,
        max_concurrent=_int(environ, "K2_QUERY_MAX_CONCURRENT", 10),
        queue_timeout_s=float(_int(environ, "K2_QUERY_QUEUE_TIMEOUT_S", 300)),
        timeout_s=float(_int(environ, "K2_QUERY_TIMEOUT_S", 300)),
        memory_limit=environ.get("K2_QUERY_MEMORY_LIMIT") or "2GB",
        threads=threads or None,
        tail_max_records=_int(environ, "K2_QUERY_TAIL_MAX_RECORDS", 2_000_000),
        window_s=float(_int(environ, "K2_QUERY_WINDOW_S", 60)),
        metrics_dir=Path(environ.get("K2_METRICS_DIR") or home / "metrics").resolve(),
        metrics_port=_int(environ, "K2_METRICS_PORT", 9464),
    )
