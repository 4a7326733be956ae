"""`make demo`: the whole pipeline once, on the embedded default profile. Safe to re-run."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

from k2.display import print_frame
from k2.feed.producer import produce_feed
from k2.feed.simulator import generate
from k2.runner import run_until_caught_up
from k2_resources.broker import REPO_ROOT, LocalKafkaBroker
from k2_resources.duckdb import connect
from k2_resources.env import load_settings
from k2_resources.errors import K2Error
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka import KafkaResource
from k2_resources.schemas import FileSchemaStore

DEMO_DATE = dt.date(2026, 11, 20)
DEMO_TICKS = 200_000
BARS_SQL = """SELECT symbol, window_start, open, high, low, close, volume, trade_count, vwap
FROM market_data.bars_1m
WHERE symbol = 'BHP'
ORDER BY window_start
LIMIT 5"""
COUNTS_SQL = """SELECT 'raw_ticks' AS table_name, count(*) AS rows FROM market_data.raw_ticks
UNION ALL SELECT 'ticks', count(*) FROM market_data.ticks
UNION ALL SELECT 'quarantine', count(*) FROM market_data.quarantine
UNION ALL SELECT 'bars_1m', count(*) FROM market_data.bars_1m"""


def main() -> None:
    console = Console(width=160)
    started = time.perf_counter()
    settings = load_settings()
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.home / "dagster")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")

    broker = LocalKafkaBroker(settings.kafka_dir, settings.kafka_port)
    with console.status("starting Kafka (the first start resolves its jars with Maven)..."):
        broker.start()
    console.print(f"[bold]1. Kafka[/bold] up at {broker.bootstrap}")

    kafka = KafkaResource.from_settings(settings)
    kafka.ensure_topic(settings.tick_topic, settings.topic_partitions)
    already = sum(hi for _, hi in kafka.offsets(settings.tick_topic).values())
    if already:
        console.print(f"[bold]2. Feed[/bold] {already:,} records already in {settings.tick_topic}; not producing again")
    else:
        feed = generate(DEMO_TICKS, seed=7, day=DEMO_DATE, exchange_code=settings.exchange)
        result = produce_feed(kafka, settings.tick_topic, feed, FileSchemaStore(), settings.topic_partitions)
        console.print(
            f"[bold]2. Feed[/bold] produced {result.records:,} ticks of the {DEMO_DATE} ASX session to "
            f"{settings.tick_topic} in {result.seconds:.1f}s"
        )

    summary = run_until_caught_up(settings, console=console)
    console.print(f"[bold]3. Dagster[/bold] ingest_job: {summary}")

    con = connect(IcebergResource.from_settings(settings))
    console.print("[bold]4. Tables[/bold]")
    print_frame(console, con.sql(COUNTS_SQL).pl())
    console.print("[bold]5. Query[/bold] (DuckDB over Iceberg):")
    console.print(BARS_SQL)
    print_frame(console, con.sql(BARS_SQL).pl())
    console.print(
        f"done in {time.perf_counter() - started:.1f}s. Open the UI with `make dev`; query with "
        '`.venv/bin/k2 query "SQL"`.'
    )


if __name__ == "__main__":
    try:
        main()
    except K2Error as exc:
        Console().print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        raise SystemExit(2) from exc
