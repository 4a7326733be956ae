"""The `k2` command line."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from k2.dr_cli import dr_app
from k2.query.cli import audit_app, auth_app, query_app
from k2.replay import replay_cmd
from k2.serving.metrics import metrics_app
from k2.tags import tag_app
from k2_assets.maintenance.cli import maintain_app
from k2_assets.serving.dq_cli import dq_app, quarantine_app
from k2_resources.env import Settings, load_settings
from k2_resources.errors import K2Error

app = typer.Typer(help="K2 market data lakehouse.", no_args_is_help=True, pretty_exceptions_enable=False)
kafka_app = typer.Typer(help="The local Apache Kafka broker (KRaft).", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(dr_app, name="dr")
# Serving (issue 7): `k2 query` keeps `k2 query "SQL"` working (SQL is its default subcommand).
app.add_typer(query_app, name="query")
app.add_typer(auth_app, name="auth")
app.add_typer(audit_app, name="audit")
app.add_typer(metrics_app, name="metrics")
app.add_typer(tag_app, name="tag")
app.command("replay")(replay_cmd)
app.add_typer(maintain_app, name="maintain")
# Data quality (issue 4): quarantine review and the daily DQ report.
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(dq_app, name="dq")
console = Console(width=None if sys.stdout.isatty() else 200)


def _settings() -> Settings:
    return load_settings()


def _broker(settings: Settings):  # type: ignore[no-untyped-def]
    from k2_resources.broker import LocalKafkaBroker

    return LocalKafkaBroker(settings.kafka_dir, settings.kafka_port)


@kafka_app.command("start")
def kafka_start() -> None:
    """Start the local broker on 127.0.0.1 (resolving its jars with Maven the first time). Idempotent."""
    settings = _settings()
    broker = _broker(settings)
    with console.status("starting Kafka (first start resolves jars with Maven)..."):
        broker.start()
    console.print(f"Kafka is up at {broker.bootstrap} (logs: {broker.log_file})")


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the local broker."""
    _broker(_settings()).stop()
    console.print("Kafka stopped")


@kafka_app.command("status")
def kafka_status() -> None:
    """Say whether the local broker runs."""
    broker = _broker(_settings())
    if broker.is_running():
        console.print(f"running at {broker.bootstrap}, pid {broker.pid()}")
    else:
        console.print("not running")
        raise typer.Exit(1)


@app.command()
def produce(
    ticks: Annotated[int, typer.Option(help="Number of ticks to produce")] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same feed")] = 7,
    symbols: Annotated[int, typer.Option(help="Number of ASX symbols (at most 50)")] = 50,
    date: Annotated[str | None, typer.Option(help="Trading date YYYY-MM-DD (default: latest session)")] = None,
    rate: Annotated[float, typer.Option(help="Ticks per second to pace at; 0 = as fast as possible")] = 0.0,
    duplicates: Annotated[float, typer.Option(help="Fraction of ticks sent twice")] = 0.0,
    gaps: Annotated[float, typer.Option(help="Fraction of sequence numbers skipped")] = 0.0,
    out_of_order: Annotated[float, typer.Option(help="Fraction delayed by 1-5 seconds")] = 0.0,
    late: Annotated[float, typer.Option(help="Fraction delayed by --late-minutes")] = 0.0,
    late_minutes: Annotated[float, typer.Option(help="How late late ticks are")] = 5.0,
    bad_prices: Annotated[float, typer.Option(help="Fraction with price <= 0")] = 0.0,
    negative_volumes: Annotated[float, typer.Option(help="Fraction with volume < 0")] = 0.0,
    jumps: Annotated[float, typer.Option(help="Fraction with a >10% price jump")] = 0.0,
    undecodable: Annotated[float, typer.Option(help="Fraction of values replaced by undecodable bytes")] = 0.0,
    manifest: Annotated[Path | None, typer.Option(help="Write the JSON fault manifest here")] = None,
) -> None:
    """Produce a deterministic synthetic session to market.ticks.<exchange>."""
    from k2.feed.producer import produce_feed
    from k2.feed.simulator import FaultRates, generate
    from k2_resources.kafka import KafkaResource
    from k2_resources.schemas import FileSchemaStore

    settings = _settings()
    faults = FaultRates(
        duplicates, gaps, out_of_order, late, late_minutes, bad_prices, negative_volumes, jumps, undecodable
    )
    day = dt.date.fromisoformat(date) if date else None
    feed = generate(ticks, seed=seed, symbols=symbols, exchange_code=settings.exchange, day=day, faults=faults)
    kafka = KafkaResource.from_settings(settings)
    chunks = max(1, int(rate)) if rate > 0 else feed.ticks.height
    started = time.perf_counter()
    result = None
    with console.status(f"producing {feed.ticks.height:,} ticks to {settings.tick_topic}..."):
        if rate <= 0:
            result = produce_feed(kafka, settings.tick_topic, feed, FileSchemaStore(), settings.topic_partitions)
        else:
            from k2.feed.simulator import Feed

            for offset in range(0, feed.ticks.height, chunks):
                part = Feed(
                    feed.ticks.slice(offset, chunks),
                    feed.undecodable_rows[(feed.undecodable_rows >= offset) & (feed.undecodable_rows < offset + chunks)]
                    - offset,
                    feed.manifest,
                )
                result = produce_feed(kafka, settings.tick_topic, part, FileSchemaStore(), settings.topic_partitions)
                time.sleep(max(0.0, 1.0 - (time.perf_counter() - started) % 1.0))
    elapsed = time.perf_counter() - started
    console.print(
        f"produced {feed.ticks.height:,} ticks in {elapsed:.2f}s ({feed.ticks.height / elapsed:,.0f}/s) "
        f"for trading date {feed.manifest['trading_date']}"
    )
    if manifest is not None and result is not None:
        manifest.write_text(json.dumps(result.manifest, indent=1, default=str))
        console.print(f"fault manifest: {manifest}")


@app.command()
def run(max_batches: Annotated[int, typer.Option(help="Stop after this many batches")] = 1_000) -> None:
    """Process everything available in Kafka through every asset, batch by batch (the sensor's code path)."""
    from k2.runner import run_until_caught_up

    settings = _settings()
    summary = run_until_caught_up(settings, max_batches=max_batches, console=console)
    console.print(str(summary))


def _prod_dagster_instance(dagster_home: Path) -> None:
    """K2_ENV=prod keeps Dagster's runs, event logs and schedules in PostgreSQL (infra/postgres/dagster.yaml)."""
    settings = load_settings()
    if settings.env == "prod" and settings.dagster_pg_url:
        from k2_resources.postgres import ensure_database, write_dagster_yaml

        ensure_database(settings.dagster_pg_url)
        write_dagster_yaml(dagster_home, settings.dagster_pg_url)


def main() -> None:
    os.environ.setdefault("DAGSTER_HOME", str(load_settings().home / "dagster"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    try:
        _prod_dagster_instance(Path(os.environ["DAGSTER_HOME"]))
        app()
    except K2Error as exc:
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
