"""What every chaos case does around its fault: produce a known feed, ingest, and prove exactly-once afterwards.

Exactly-once is checked against the producer's own record of where each tick went (the (partition, offset) the
broker acknowledged), not against Kafka's end offsets: lost = acknowledged but not in raw_ticks, duplicated =
rows beyond the distinct (topic, partition, offset) in raw_ticks, extra = in raw_ticks but never acknowledged.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from k2.feed.producer import produce_feed
from k2.feed.simulator import FaultRates, generate
from k2_assets.ticks.ingest import RawIngestResult, ingest_raw
from k2_assets.ticks.planning import plan_ranges, ranges_to_config
from k2_resources.env import Settings, load_settings
from k2_resources.iceberg import IcebergResource, OffsetRange, read_watermarks
from k2_resources.kafka import KafkaResource
from k2_resources.schemas import FileSchemaStore
from k2_resources.tables import RAW_TICKS
from tests.chaos.worker import WorkerResult, ingest_in_worker

SESSION = dt.date(2026, 11, 25)
BATCH = 3_000  # ticks per produced batch: small, the faults are about offsets, not volume
_ids = itertools.count(1)

Position = tuple[str, int, int]


@dataclass(frozen=True)
class Verdict:
    produced: int
    landed_rows: int
    lost: int
    duplicated: int
    extra: int

    @property
    def exactly_once(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.extra == 0


@dataclass
class Lake:
    """One case's world: its own topic on a broker, its own catalog and warehouse, what was produced to it."""

    environ: dict[str, str]
    root: Path
    produced: set[Position] = field(default_factory=set)

    @property
    def settings(self) -> Settings:
        return load_settings(self.environ)

    @property
    def kafka(self) -> KafkaResource:
        return KafkaResource.from_settings(self.settings)

    @property
    def iceberg(self) -> IcebergResource:
        return IcebergResource.from_settings(self.settings)

    @property
    def topic(self) -> str:
        return self.settings.tick_topic

    def raw_table(self) -> Any:
        return self.iceberg.ensure_table(RAW_TICKS)

    def produce(self, n: int = BATCH, seed: int | None = None, faults: FaultRates | None = None) -> set[Position]:
        feed = generate(n, seed=seed if seed is not None else next(_ids), day=SESSION, faults=faults or FaultRates())
        settings = self.settings
        topic = settings.tick_topic
        result = produce_feed(
            KafkaResource.from_settings(settings), topic, feed, FileSchemaStore(), settings.topic_partitions
        )
        positions = {(topic, p, o) for p, o in result.positions}
        assert len(positions) == result.records, "the producer reported fewer distinct positions than records"
        self.produced |= positions
        return positions

    def planned(self, kafka: KafkaResource | None = None) -> list[OffsetRange]:
        """What a run would plan now: from raw_ticks' watermark to the end of the log."""
        committed = read_watermarks(self.raw_table()).get(self.topic, {})
        log = (kafka or self.kafka).offsets(self.topic)
        return plan_ranges(self.topic, log, committed, self.settings.max_batch_per_partition)

    def ingest(
        self,
        ranges: Sequence[OffsetRange] | None = None,
        before_commit: Callable[[], None] | None = None,
        kafka: KafkaResource | None = None,
    ) -> RawIngestResult:
        """One raw_ticks ingest in this process (the code the raw_ticks asset runs)."""
        planned = list(ranges) if ranges is not None else self.planned(kafka)
        return ingest_raw(
            kafka or self.kafka,
            self.raw_table(),
            planned,
            FileSchemaStore(),
            batch_id=f"chaos-{next(_ids)}",
            before_commit=before_commit,
        )

    def ingest_in_process(
        self,
        fault: str | None = None,
        ranges: Sequence[OffsetRange] | None = None,
        start_at: float | None = None,
        job: bool = False,
    ) -> WorkerResult:
        """One raw_ticks ingest (or, with `job`, the whole ingest job as `k2 run` runs it) in a separate OS process,
        optionally armed with a fault point."""
        result_path = self.root / f"worker-{next(_ids)}.json"
        config = ranges_to_config(list(ranges)) if ranges is not None else None
        return ingest_in_worker(self.environ, result_path, fault=fault, ranges=config, start_at=start_at, job=job)

    def raw_offsets(self) -> pl.DataFrame:
        arrow = self.raw_table().scan(selected_fields=("kafka_topic", "kafka_partition", "kafka_offset")).to_arrow()
        frame = pl.from_arrow(arrow)
        assert isinstance(frame, pl.DataFrame)
        return frame

    def verdict(self) -> Verdict:
        rows = self.raw_offsets()
        landed = {(t, int(p), int(o)) for t, p, o in rows.iter_rows()}
        return Verdict(
            produced=len(self.produced),
            landed_rows=rows.height,
            lost=len(self.produced - landed),
            duplicated=rows.height - len(landed),
            extra=len(landed - self.produced),
        )

    def watermark_total(self) -> int:
        return sum(read_watermarks(self.raw_table()).get(self.topic, {}).values())

    def snapshot_id(self) -> int | None:
        snapshot = self.raw_table().current_snapshot()
        return snapshot.snapshot_id if snapshot else None


def make_lake(root: Path, bootstrap: str, **extra: str) -> Lake:
    root.mkdir(parents=True, exist_ok=True)
    environ = {
        "K2_HOME": str(root / "k2"),
        "K2_KAFKA_BOOTSTRAP": bootstrap,
        "K2_TICK_TOPIC": f"market.ticks.chaos.t{next(_ids)}",
        "K2_TOPIC_PARTITIONS": "3",
        **extra,
    }
    return Lake(environ, root)


def validated_exactly_once(lake: Lake, instance: dg.DagsterInstance) -> bool:
    """Run the ingest job (raw_ticks -> validated_ticks -> bars_1m, as `k2 run` does) and check that every raw row
    ended exactly once in ticks, quarantine or the duplicates, whatever the rules are: quarantine offsets are raw
    offsets, each once; tick keys are unique; and the keys of the raw rows not quarantined are exactly the tick keys
    (a duplicate shares its key with the tick that was kept)."""
    from k2.runner import run_until_caught_up

    run_until_caught_up(lake.settings, instance=instance)
    iceberg = lake.iceberg
    key = ["exchange", "symbol", "sequence"]
    offsets = ["kafka_topic", "kafka_partition", "kafka_offset"]
    raw = _frame(iceberg.load("raw_ticks").scan(selected_fields=(*offsets, *key)).to_arrow())
    ticks = _frame(iceberg.load("ticks").scan(selected_fields=tuple(key)).to_arrow())
    quarantine = _frame(iceberg.load("quarantine").scan(selected_fields=tuple(offsets)).to_arrow())
    if quarantine.height != quarantine.unique().height or ticks.height != ticks.unique().height:
        return False
    if quarantine.join(raw, on=offsets, how="anti").height:
        return False
    kept = raw.join(quarantine, on=offsets, how="anti").select(key).unique()
    return kept.sort(key).equals(ticks.sort(key))


def _frame(arrow: Any) -> pl.DataFrame:
    frame = pl.from_arrow(arrow)
    assert isinstance(frame, pl.DataFrame)
    return frame


@dataclass
class ChaosMatrix:
    """Rows of (fault, repetition, produced, lost, duplicated, validated) collected over a test session."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def record(self, fault: str, rep: int, verdict: Verdict, validated: bool | None = None) -> None:
        self.rows.append(
            {
                "fault": fault,
                "rep": rep,
                "produced": verdict.produced,
                "landed_rows": verdict.landed_rows,
                "lost": verdict.lost,
                "duplicated": verdict.duplicated,
                "extra": verdict.extra,
                "validated_exactly_once": validated,
            }
        )

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.rows, indent=1))
