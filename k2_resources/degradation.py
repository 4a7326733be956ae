"""The degradation cascade (docs/DEGRADATION.md): which level the ingest path is at, from checks the code makes.

    L0 normal         every stage runs each batch
    L1 lagging        Kafka lag past K2_MAX_CONSUMER_LAG: batches land raw_ticks and validated_ticks only; bars are
                      deferred until the lag is back under half the threshold (they catch up from the ticks table)
    L2 storage down   catalog or warehouse does not answer within K2_CATALOG_TIMEOUT_S: ingest pauses, Kafka
                      buffers the feed (nothing is lost inside retention), resumes by itself
    L3 Kafka down     the broker does not answer: ingest pauses; reads serve Iceberg only (k2.query says so)
    L4 both down      circuit open: nothing can run; operators follow the runbook

The sensor calls `DegradationResource.assess` before planning a batch and turns the result into a run request or a
SkipReason. Every probe is bounded by a timeout so a dead service costs one sensor tick, not a hung daemon.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from k2_resources.env import Settings
from k2_resources.errors import BrokerUnavailableError, K2Error
from k2_resources.iceberg import IcebergResource, read_watermarks
from k2_resources.kafka import KafkaResource
from k2_resources.tables import RAW_TICKS

# The stages that must keep up at L1; everything else in the ingest job (bars) is deferred.
CRITICAL_ASSETS = ("raw_ticks", "validated_ticks")


class Level(enum.IntEnum):
    NORMAL = 0
    LAGGING = 1
    STORAGE_DOWN = 2
    KAFKA_DOWN = 3
    CIRCUIT_OPEN = 4

    @property
    def label(self) -> str:
        return f"L{int(self)}-{self.name.lower().replace('_', '-')}"


@dataclass
class IngestHealth:
    level: Level
    reasons: list[str] = field(default_factory=list)
    lag: int | None = None  # Kafka records past the committed raw_ticks watermark

    @property
    def pauses_ingest(self) -> bool:
        return self.level >= Level.STORAGE_DOWN

    @property
    def asset_selection(self) -> list[dg.AssetKey] | None:
        """Assets a batch should materialise at this level (None: the whole ingest job)."""
        return [dg.AssetKey(a) for a in CRITICAL_ASSETS] if self.level == Level.LAGGING else None

    def describe(self) -> str:
        actions = {
            Level.NORMAL: "ingest runs normally",
            Level.LAGGING: "batches land raw_ticks and validated_ticks only; bars are deferred until lag recovers",
            Level.STORAGE_DOWN: "ingest paused; Kafka buffers the feed and ingest resumes when storage answers",
            Level.KAFKA_DOWN: "ingest paused; reads serve Iceberg only until the broker answers",
            Level.CIRCUIT_OPEN: "ingest paused and reads fail; follow docs/DEGRADATION.md",
        }
        why = "; ".join(self.reasons) or "all checks passed"
        return f"degradation {self.level.label}: {why}. {actions[self.level]}"


def probe_catalog(iceberg: IcebergResource, timeout_s: float) -> str | None:
    """None if the catalog database answers `SELECT 1` within `timeout_s`, else why not."""
    import sqlalchemy as sa

    args: dict[str, Any] = {}
    if iceberg.catalog_uri.startswith("postgresql"):
        args = {"connect_timeout": max(1, int(timeout_s))}
    elif iceberg.catalog_uri.startswith("sqlite"):
        args = {"timeout": timeout_s}
        if iceberg.catalog_uri.startswith("sqlite:///"):  # a first run: open_catalog would create the folder too
            Path(iceberg.catalog_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(iceberg.catalog_uri, connect_args=args, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        first_line = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return f"Iceberg catalog unreachable ({first_line})"
    finally:
        engine.dispose()
    return None


def probe_warehouse(iceberg: IcebergResource, timeout_s: float) -> str | None:
    """None if the warehouse root can be listed within `timeout_s` (S3) or exists (local), else why not."""
    warehouse = iceberg.warehouse
    if not warehouse.startswith(("s3://", "s3a://")):
        return None
    import s3fs

    props = iceberg.catalog_properties
    fs = s3fs.S3FileSystem(
        key=props.get("s3.access-key-id"),
        secret=props.get("s3.secret-access-key"),
        endpoint_url=props.get("s3.endpoint"),
        client_kwargs={"region_name": props.get("s3.region", "us-east-1")},
        config_kwargs={"connect_timeout": timeout_s, "read_timeout": timeout_s, "retries": {"max_attempts": 1}},
        skip_instance_cache=True,
    )
    bucket = warehouse.split("://", 1)[1].split("/", 1)[0]
    try:
        fs.ls(bucket, refresh=True)
    except Exception as exc:  # noqa: BLE001 - any failure to list is "the warehouse is unreachable"
        return f"warehouse {warehouse} unreachable ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def consumer_lag(offsets: dict[int, tuple[int, int]], committed: dict[int, int]) -> int:
    """Records between each partition's committed watermark (or its earliest offset) and its end offset."""
    return sum(max(0, end - committed.get(p, low)) for p, (low, end) in offsets.items())


class DegradationResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Thresholds of the degradation cascade, and the checks behind it."""

    max_consumer_lag: int = 1_000_000
    probe_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DegradationResource:
        return cls(max_consumer_lag=settings.max_consumer_lag, probe_timeout_s=float(settings.catalog_timeout_s))

    def assess(
        self, kafka: KafkaResource, iceberg: IcebergResource, topic: str, previous: Level = Level.NORMAL
    ) -> IngestHealth:
        reasons: list[str] = []
        storage = probe_catalog(iceberg, self.probe_timeout_s) or probe_warehouse(iceberg, self.probe_timeout_s)
        if storage:
            reasons.append(storage)
        offsets: dict[int, tuple[int, int]] | None = None
        try:
            probe = KafkaResource(bootstrap_servers=kafka.bootstrap_servers, request_timeout_s=self.probe_timeout_s)
            offsets = probe.offsets(topic)
        except BrokerUnavailableError as exc:
            reasons.append(f"Kafka unreachable at {kafka.bootstrap_servers} ({str(exc).split(' (', 1)[0]})")
        except K2Error:
            offsets = {}  # the topic does not exist yet: nothing to ingest, nothing lagging
        if storage and offsets is None:
            return IngestHealth(Level.CIRCUIT_OPEN, reasons)
        if storage:
            return IngestHealth(Level.STORAGE_DOWN, reasons)
        if offsets is None:
            return IngestHealth(Level.KAFKA_DOWN, reasons)
        try:
            committed = read_watermarks(iceberg.ensure_table(RAW_TICKS)).get(topic, {})
        except Exception as exc:  # noqa: BLE001 - a catalog that failed after its probe is still "storage down"
            return IngestHealth(Level.STORAGE_DOWN, [f"Iceberg catalog failed ({type(exc).__name__}: {exc})"])
        lag = consumer_lag(offsets, committed)
        # Hysteresis: enter L1 past the threshold, leave it only under half of it, so bars do not flap on and off.
        threshold = self.max_consumer_lag // 2 if previous == Level.LAGGING else self.max_consumer_lag
        if lag > threshold:
            reasons.append(f"Kafka lag {lag:,} records > {threshold:,}")
            return IngestHealth(Level.LAGGING, reasons, lag)
        return IngestHealth(Level.NORMAL, reasons, lag)
