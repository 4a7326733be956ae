"""Inputs of the capacity model (docs/CAPACITY.md): bytes per tick on the wire and at rest, rows per core-second.

    .venv/bin/python benchmarks/capacity.py [--ticks 1000000] [--lakehouse]

1. Avro       the simulated session encoded as Kafka values (Confluent frame): bytes per tick, encode and decode
              rate.
2. Iceberg    the decoded ticks appended to the real `ticks` and `raw_ticks` table definitions (partitioning, sort
              order, Parquet + zstd) in a throwaway local catalog: bytes per row of the data files written, rate.
3. lakehouse  (--lakehouse) files, rows and bytes per row of every table of the configured lakehouse (K2_* settings,
              e.g. after `make demo` or `make demo-prod`), read from the tables' own file metadata.

Rates are rows per CPU-second of this process ("per core"), with wall time beside them: on a shared 2-vCPU box
wall time moves with whatever else runs. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from k2.feed.simulator import generate
from k2_resources.arrow_util import conform
from k2_resources.avro import decode_column, encode_frame
from k2_resources.env import load_settings
from k2_resources.iceberg import IcebergResource
from k2_resources.schemas import TICK_SUBJECT, FileSchemaStore
from k2_resources.tables import RAW_TICKS, TICKS

SESSION = dt.date(2026, 11, 25)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def table_bytes(table: Any) -> tuple[int, int, int]:
    """(data files, rows, bytes) of a table's current snapshot, from its manifests."""
    if table.current_snapshot() is None:
        return 0, 0, 0
    tasks = list(table.scan().plan_files())
    return (
        len(tasks),
        sum(t.file.record_count for t in tasks),
        sum(t.file.file_size_in_bytes for t in tasks),
    )


def row(name: str, value: str, note: str = "") -> None:
    print(f"| {name:<44} | {value:>16} | {note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--lakehouse", action="store_true", help="also measure the configured lakehouse's tables")
    args = parser.parse_args()
    n = args.ticks

    feed = generate(n, seed=7, day=SESSION)
    store = FileSchemaStore()
    print(f"## capacity inputs: {n:,} simulated ticks, {feed.ticks['symbol'].n_unique()} symbols, one session\n")
    print("| measure | value | note |\n|---|---:|---|")

    values, wall, cpu = timed(lambda: encode_frame(feed.ticks, store, store.latest_id(TICK_SUBJECT)))
    avro_bytes = int(pc.sum(pc.binary_length(values)).as_py())
    row("Avro value, bytes per tick", f"{avro_bytes / n:,.1f}", "Confluent frame: 5-byte header + Avro body")
    row("Avro encode, ticks per core-second", f"{n / cpu:,.0f}", f"wall {wall:.2f}s")
    (frame, _errors), wall, cpu = timed(lambda: decode_column(values, store))
    row("Avro decode, ticks per core-second", f"{n / cpu:,.0f}", f"wall {wall:.2f}s")

    with tempfile.TemporaryDirectory(prefix="k2-capacity-") as tmp:
        iceberg = IcebergResource(catalog_uri=f"sqlite:///{tmp}/catalog.db", warehouse=Path(tmp, "wh").as_uri())
        ticks = iceberg.ensure_table(TICKS)
        rows = conform(frame.to_arrow(), ticks.schema().as_arrow())
        _, wall, cpu = timed(lambda: ticks.append(rows))
        files, count, size = table_bytes(ticks)
        row("ticks (Parquet+zstd), bytes per tick", f"{size / count:,.1f}", f"{files} files, {size / 1e6:,.1f} MB")
        row("ticks append, ticks per core-second", f"{n / cpu:,.0f}", f"wall {wall:.2f}s (sort+partition+write)")

        raw = iceberg.ensure_table(RAW_TICKS)
        extra = {
            "kafka_topic": pa.array(["market.ticks.asx"] * n),
            "kafka_partition": pa.array([i % 6 for i in range(n)], pa.int32()),
            "kafka_offset": pa.array([i // 6 for i in range(n)], pa.int64()),
            "kafka_ts": rows["ingest_ts"],
            "kafka_key": rows["symbol"],
            "landed_ts": rows["ingest_ts"],
        }
        raw_rows = rows
        for name, column in extra.items():
            raw_rows = raw_rows.append_column(name, column)
        raw_rows = conform(raw_rows, raw.schema().as_arrow())
        _, wall, cpu = timed(lambda: raw.append(raw_rows))
        files, count, size = table_bytes(raw)
        row("raw_ticks (Parquet+zstd), bytes per tick", f"{size / count:,.1f}", f"{files} files, {size / 1e6:,.1f} MB")
        row("raw_ticks append, ticks per core-second", f"{n / cpu:,.0f}", f"wall {wall:.2f}s")

    if args.lakehouse:
        settings = load_settings()
        lake = IcebergResource.from_settings(settings)
        catalog = lake.catalog()
        print(f"\n## lakehouse {settings.warehouse} ({settings.env})\n")
        print("| table | data files | rows | MB | bytes per row |\n|---|---:|---:|---:|---:|")
        for ident in sorted(catalog.list_tables(lake.namespace)):
            files, count, size = table_bytes(catalog.load_table(ident))
            per_row = f"{size / count:,.1f}" if count else "-"
            print(f"| {ident[-1]} | {files} | {count:,} | {size / 1e6:,.2f} | {per_row} |")


if __name__ == "__main__":
    main()
