"""`make demo-prod`: the whole pipeline on the production profile's services, all started locally on 127.0.0.1:
PostgreSQL (Iceberg catalog, Dagster storage, registry storage), an S3 server (SeaweedFS if built, else moto) for
the warehouse, Kafka, and the schema registry (Apicurio, Confluent API) when K2_SCHEMA_REGISTRY_URL is set. Safe to re-run; `python -m k2.demo_prod stop` stops them.

The Makefile target sets the K2_* variables (K2_ENV=prod); this module reads them only through load_settings().
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urlsplit

from rich.console import Console
from sqlalchemy.engine import make_url

from k2.demo import BARS_SQL, COUNTS_SQL, DEMO_DATE, DEMO_TICKS
from k2.display import print_frame
from k2.dr import backup
from k2.feed.producer import produce_feed
from k2.feed.simulator import generate
from k2.runner import run_until_caught_up
from k2_resources.broker import LocalKafkaBroker
from k2_resources.duckdb import connect
from k2_resources.env import Settings, load_settings
from k2_resources.errors import ConfigurationError, K2Error
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka import KafkaResource
from k2_resources.postgres import LocalPostgres, dagster_instance, ensure_database
from k2_resources.registry import RegistrySchemaStore, register_shipped_schemas
from k2_resources.registry_server import LocalSchemaRegistry
from k2_resources.s3_server import LocalObjectStore
from k2_resources.schemas import FileSchemaStore, SchemaStore


def services(
    settings: Settings,
) -> tuple[LocalPostgres, LocalObjectStore, LocalKafkaBroker, LocalSchemaRegistry | None]:
    if settings.env != "prod" or not settings.dagster_pg_url or not settings.s3_endpoint:
        raise ConfigurationError(
            "demo-prod needs K2_ENV=prod, K2_DAGSTER_PG_URL and K2_S3_ENDPOINT: use `make demo-prod`"
        )
    catalog = make_url(settings.catalog_uri)
    postgres = LocalPostgres(
        settings.home / "postgres",
        catalog.port or 5432,
        user=catalog.username or "k2",
        password=catalog.password or "k2",
        durable=True,
    )
    s3_port = urlsplit(settings.s3_endpoint).port or 80
    store = LocalObjectStore(
        settings.home / "s3",
        s3_port,
        bucket=settings.warehouse.split("://", 1)[1].split("/", 1)[0],
        access_key=settings.s3_access_key_id or "",
        secret_key=settings.s3_secret_access_key or "",
    )
    broker = LocalKafkaBroker(settings.kafka_dir, settings.kafka_port)
    registry = None
    if settings.schema_registry_url:
        registry = LocalSchemaRegistry(
            settings.home / "registry",
            urlsplit(settings.schema_registry_url).port or 80,
            jdbc_url=f"jdbc:postgresql://127.0.0.1:{postgres.port}/k2_registry",
            jdbc_user=postgres.user,
            jdbc_password=postgres.password,
        )
    return postgres, store, broker, registry


def _offsets_when_led(kafka: KafkaResource, topic: str, timeout_s: float = 30.0) -> dict[int, tuple[int, int]]:
    """End offsets of a topic that may have just been created (its partitions elect leaders asynchronously)."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return kafka.offsets(topic)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> None:
    console = Console(width=160)
    started = time.perf_counter()
    settings = load_settings()
    postgres, store, broker, registry = services(settings)
    assert settings.dagster_pg_url is not None
    with console.status("starting PostgreSQL, the S3 server, Kafka and the schema registry..."):
        postgres.start()
        ensure_database(settings.catalog_uri)
        store.start()
        broker.start()
        if registry is not None:
            postgres.create_database("k2_registry")
            registry.start()
    console.print(
        f"[bold]1. Services[/bold] PostgreSQL 127.0.0.1:{postgres.port} (catalog + Dagster storage), "
        f"S3 {store.endpoint} ({store.kind}, bucket {store.bucket}), Kafka {broker.bootstrap}, "
        f"schema registry {registry.url if registry else '(none: schema files)'}"
    )
    schemas: SchemaStore = FileSchemaStore()
    if registry is not None:
        schemas = RegistrySchemaStore(registry.url)
        ids = register_shipped_schemas(schemas)
        console.print(f"   registered {ids} (compatibility BACKWARD)")

    kafka = KafkaResource.from_settings(settings)
    kafka.ensure_topic(settings.tick_topic, settings.topic_partitions)
    already = sum(hi for _, hi in _offsets_when_led(kafka, settings.tick_topic).values())
    if already:
        console.print(f"[bold]2. Feed[/bold] {already:,} records already in {settings.tick_topic}; not producing again")
    else:
        feed = generate(DEMO_TICKS, seed=7, day=DEMO_DATE, exchange_code=settings.exchange)
        result = produce_feed(kafka, settings.tick_topic, feed, schemas, settings.topic_partitions)
        console.print(f"[bold]2. Feed[/bold] produced {result.records:,} ticks to {settings.tick_topic}")

    instance = dagster_instance(settings.home / "dagster", settings.dagster_pg_url)
    summary = run_until_caught_up(settings, console=console, instance=instance)
    runs = len(instance.get_runs())
    console.print(f"[bold]3. Dagster[/bold] ingest_job: {summary}; {runs} run(s) recorded in PostgreSQL")

    con = connect(IcebergResource.from_settings(settings))
    console.print("[bold]4. Tables[/bold] (DuckDB over Iceberg on S3, via httpfs)")
    print_frame(console, con.sql(COUNTS_SQL).pl())
    print_frame(console, con.sql(BARS_SQL).pl())
    path = settings.home / "backups" / "catalog-demo.json"
    document = backup(settings, path)
    console.print(f"[bold]5. DR[/bold] catalog backup of {len(document['tables'])} tables: {path}")
    console.print(
        f"done in {time.perf_counter() - started:.1f}s. Stop the services with `make demo-prod-stop`; "
        "rebuild a lost catalog with `k2 dr rebuild-catalog` (same K2_* variables)."
    )


def stop() -> None:
    postgres, store, broker, registry = services(load_settings())
    if registry is not None:
        registry.stop()
    broker.stop()
    store.stop()
    postgres.stop()
    Console().print("the schema registry, Kafka, the S3 server and PostgreSQL stopped")


if __name__ == "__main__":
    try:
        stop() if sys.argv[1:] == ["stop"] else main()
    except K2Error as exc:
        Console().print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        raise SystemExit(2) from exc
