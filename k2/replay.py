"""Replay: re-publish historical ticks from Iceberg to a Kafka topic in exchange-time order, at a chosen speed.

Backtesting engines consume the replay topic exactly as they would the live feed: same key (the symbol), same
Confluent-framed Avro value, with a `k2-replay` header. Ticks are read through k2.query (so the read is
authorised and audited, and `as_of` pins a snapshot or a backtest tag), ordered by (exchange_ts, symbol,
sequence), and sent in chunks whose wall-clock due time is (exchange_ts - first exchange_ts) / speed.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from k2_resources.errors import BrokerUnavailableError, ConfigurationError, K2Error

if TYPE_CHECKING:  # loaded when a replay runs, not when the CLI starts
    from k2.query.api import Client
    from k2.query.timetravel import AsOf

CHUNK_S = 0.01  # ticks due within the same 10 ms of wall time go out together
ENCODE_BATCH = 50_000
REPLAY_HEADER = "k2-replay"


def parse_speed(text: str | float) -> float | None:
    """'10x' -> 10.0; 'max' (or 0) -> None, as fast as the broker takes them."""
    raw = str(text).strip().lower()
    if raw in ("max", "0", "0x", "inf"):
        return None
    raw = raw.removesuffix("x")
    try:
        speed = float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"speed {text!r}: use e.g. 1x, 10x, 1000x or max") from exc
    if speed <= 0:
        raise ConfigurationError(f"speed {text!r} must be positive")
    return speed


def schedule(
    exchange_ts_us: np.ndarray, speed: float | None, chunk_s: float = CHUNK_S
) -> tuple[np.ndarray, np.ndarray]:
    """Chunk start indices and each chunk's due time in seconds after the replay starts (vectorised)."""
    n = len(exchange_ts_us)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if speed is None:
        starts = np.arange(0, n, ENCODE_BATCH, dtype=np.int64)
        return starts, np.zeros(len(starts))
    due = (exchange_ts_us - exchange_ts_us[0]) / 1e6 / speed
    bucket = np.floor(due / chunk_s).astype(np.int64)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(bucket)) + 1]).astype(np.int64)
    return starts, due[starts]


@dataclass(frozen=True)
class ReplayResult:
    topic: str
    records: int
    chunks: int
    seconds: float
    exchange_span_s: float
    speed: float | None
    max_behind_s: float  # how far the slowest chunk went out after its due time
    first_ts: dt.datetime | None
    last_ts: dt.datetime | None


class _Publisher:
    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.failures: list[str] = []
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 1_000_000,
            }
        )

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failures.append(str(err))

    def send(self, keys: list[str], values: list[bytes]) -> None:
        headers: list[tuple[str, str | bytes | None]] = [(REPLAY_HEADER, b"1")]
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    self.producer.produce(
                        self.topic, key=key.encode(), value=value, headers=headers, on_delivery=self._delivered
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.producer.poll(0)

    def close(self, timeout_s: float = 30.0) -> None:
        remaining = self.producer.flush(timeout_s)
        if remaining or self.failures:
            raise BrokerUnavailableError(
                f"{remaining} replayed records undelivered, {len(self.failures)} failed (first: {self.failures[:1]})"
            )


def replay(
    client: Client,
    topic: str,
    start: dt.datetime | str,
    end: dt.datetime | str,
    *,
    speed: float | None = None,
    symbols: list[str] | None = None,
    as_of: AsOf = None,
    partitions: int | None = None,
) -> ReplayResult:
    """Publish the ticks of [start, end) to `topic`; `client` is a k2.query.Client (it authorises and audits)."""
    import polars as pl

    from k2_resources.arrow_util import to_integer_space
    from k2_resources.avro import encode_ticks
    from k2_resources.kafka import KafkaResource
    from k2_resources.schemas import TICK_SUBJECT, FileSchemaStore

    settings = client.settings
    if topic == settings.tick_topic:
        raise ConfigurationError(f"{topic} is the ingest topic: replaying into it would feed history back in")
    result = client.ticks(symbols, start, end, as_of=as_of, route="iceberg", audit_action="replay")
    ticks = result.arrow
    kafka = KafkaResource(bootstrap_servers=settings.kafka_bootstrap)
    kafka.ensure_topic(topic, partitions or settings.topic_partitions)
    frame = pl.from_arrow(to_integer_space(ticks))
    assert isinstance(frame, pl.DataFrame)
    ts = frame["exchange_ts"].to_numpy() if frame.height else np.zeros(0, dtype=np.int64)
    starts, due = schedule(ts, speed)
    bounds = [*starts.tolist(), frame.height]
    store = FileSchemaStore()
    schema_id = store.latest_id(TICK_SUBJECT)
    publisher = _Publisher(settings.kafka_bootstrap, topic)
    behind = 0.0
    began = time.monotonic()
    for i in range(len(starts)):
        wait = due[i] - (time.monotonic() - began)
        if wait > 0:
            time.sleep(wait)
        else:
            behind = max(behind, -wait)
        chunk = frame.slice(bounds[i], bounds[i + 1] - bounds[i])
        for offset in range(0, chunk.height, ENCODE_BATCH):
            part = chunk.slice(offset, ENCODE_BATCH)
            publisher.send(part["symbol"].to_list(), encode_ticks(part.to_dicts(), store, schema_id))
    publisher.close()
    span = float((ts[-1] - ts[0]) / 1e6) if len(ts) else 0.0
    first = dt.datetime.fromtimestamp(ts[0] / 1e6, dt.UTC) if len(ts) else None
    last = dt.datetime.fromtimestamp(ts[-1] / 1e6, dt.UTC) if len(ts) else None
    return ReplayResult(topic, frame.height, len(starts), time.monotonic() - began, span, speed, behind, first, last)


def replay_cmd(
    start: Annotated[str, typer.Option("--from", help="First exchange time to replay (ISO 8601, UTC if naive)")],
    end: Annotated[str, typer.Option("--to", help="End of the range (exclusive)")],
    topic: Annotated[str, typer.Option(help="Topic to publish to, e.g. market.replay.asx")],
    speed: Annotated[str, typer.Option(help="1x real time, 10x, 1000x, or max")] = "1x",
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols (default: all)")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Snapshot id, tag or time to read as of")] = None,
    token: Annotated[str | None, typer.Option("--token", help="JWT (default: K2_TOKEN)")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="API key (default: K2_API_KEY)")] = None,
) -> None:
    """Re-publish historical ticks from Iceberg to Kafka in exchange-time order at a chosen speed."""
    from rich.console import Console

    from k2.query.cli import client

    console = Console()
    c = client(token, api_key)
    try:
        with console.status(f"replaying {start} .. {end} to {topic} at {speed}..."):
            out = replay(
                c, topic, start, end, speed=parse_speed(speed), symbols=symbols.split(",") if symbols else None,
                as_of=as_of,
            )  # fmt: skip
    except K2Error:
        c.audit_log.flush_quietly()
        raise
    c.audit_log.flush_quietly()
    console.print(
        f"replayed {out.records:,} ticks ({out.first_ts} .. {out.last_ts}, {out.exchange_span_s:.1f}s of exchange "
        f"time) to {out.topic} in {out.seconds:.2f}s, {out.chunks} chunks, at most {out.max_behind_s * 1000:.0f} ms "
        "behind schedule"
    )
