"""Query limits (concurrency queue, timeout, memory), caches and time travel, on real DuckDB and Iceberg tables."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from k2.query import Client
from k2.query.cache import TTLCache
from k2.query.engine import QueryEngine, QueryLimits
from k2.tags import create, manifest
from k2_resources.arrow_util import conform
from k2_resources.env import Settings
from k2_resources.errors import (
    QueryMemoryError,
    QueryQueueTimeoutError,
    QueryTimeoutError,
    SnapshotNotFoundError,
    TagExistsError,
)
from k2_resources.iceberg import IcebergResource
from k2_resources.metrics import QueryMetrics
from tests.unit.query_seed import DAY, append_bars, seed, tick_rows

ENDLESS = "SELECT count(*) FROM range(1000000000000)"


class RecordingMetrics(QueryMetrics):
    def __init__(self) -> None:
        super().__init__(None)
        self.peak = 0
        self.lock = threading.Lock()

    def in_flight(self, n: int) -> None:  # type: ignore[override]
        with self.lock:
            self.peak = max(self.peak, n)


def engine(settings: Settings, **limits: object) -> QueryEngine:
    return QueryEngine(IcebergResource.from_settings(settings), QueryLimits(**limits))  # type: ignore[arg-type]


def test_a_query_past_the_timeout_is_interrupted_with_a_typed_error(offline_lakehouse: Settings) -> None:
    e = engine(offline_lakehouse, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError, match=r"longer than 0\.5s"):
        e.execute(ENDLESS, reads=[])
    assert time.monotonic() - started < 5
    assert e.execute("SELECT 42 AS x", reads=[]).table.to_pylist() == [{"x": 42}]  # the slot is still usable


def test_a_query_over_the_memory_limit_fails_instead_of_spilling(offline_lakehouse: Settings) -> None:
    e = engine(offline_lakehouse, memory_limit="64MB")
    with pytest.raises(QueryMemoryError, match="64MB"):
        e.execute("SELECT i, md5(i::VARCHAR) AS s FROM range(20000000) t(i) ORDER BY s", reads=[])


def test_queries_beyond_the_concurrency_limit_queue_and_time_out_when_the_queue_is_too_slow(
    offline_lakehouse: Settings,
) -> None:
    e = engine(offline_lakehouse, max_concurrent=1, timeout_s=1.5, queue_timeout_s=0.3)
    errors: list[BaseException] = []

    def hog() -> None:
        try:
            e.execute(ENDLESS, reads=[])
        except QueryTimeoutError as exc:
            errors.append(exc)

    worker = threading.Thread(target=hog)
    worker.start()
    time.sleep(1.0)  # the hog holds the only slot by now (creating it loads the extensions first)
    with pytest.raises(QueryQueueTimeoutError, match="1 query slots"):
        e.execute("SELECT 1", reads=[])
    worker.join()
    assert len(errors) == 1


def test_at_most_max_concurrent_queries_run_and_the_rest_wait_their_turn(offline_lakehouse: Settings) -> None:
    metrics = RecordingMetrics()
    e = QueryEngine(IcebergResource.from_settings(offline_lakehouse), QueryLimits(max_concurrent=2), metrics)
    queued: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        done = e.execute("SELECT count(*) FROM range(30000000) t(i) WHERE i % 7 = 3", reads=[])
        with lock:
            queued.append(done.queued_s)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(queued) == 6
    assert metrics.peak == 2
    assert sum(1 for q in queued if q > 0.01) >= 3  # four had to wait for a slot


def test_aggregation_results_are_cached_until_a_new_snapshot(offline_lakehouse: Settings) -> None:
    iceberg = seed(offline_lakehouse)
    c = Client(offline_lakehouse)
    first = c.bars("1m", ["BHP"])
    again = c.bars("1m", ["BHP"])
    assert (first.freshness.cached, again.freshness.cached) == (False, True)
    assert again.arrow.equals(first.arrow)
    append_bars(iceberg, minutes=2, first_minute=3)  # a new snapshot of bars_1m
    fresh = c.bars("1m", ["BHP"])
    assert not fresh.freshness.cached
    assert fresh.num_rows == first.num_rows + 2
    grouped = c.sql("SELECT symbol, count(*) AS n FROM bars_1m GROUP BY 1")
    assert c.sql("SELECT symbol, count(*) AS n FROM bars_1m GROUP BY 1").freshness.cached
    assert not grouped.freshness.cached
    assert not c.sql("SELECT * FROM bars_1m").freshness.cached  # plain row reads are not aggregations


def test_table_metadata_is_parsed_once_per_version(offline_lakehouse: Settings) -> None:
    iceberg = seed(offline_lakehouse)
    e = engine(offline_lakehouse)
    e.tables()
    misses = e.metadata_cache.misses
    e.tables()
    assert e.metadata_cache.misses == misses
    append_bars(iceberg, minutes=1, first_minute=10)
    e.tables()
    assert e.metadata_cache.misses == misses + 1  # only bars_1m changed


def test_ttl_cache_expires_and_evicts_least_recently_used() -> None:
    now = [0.0]
    cache: TTLCache[str] = TTLCache(maxsize=2, ttl_s=10, clock=lambda: now[0])
    cache.put("a", "1")
    cache.put("b", "2")
    assert cache.get("a") == "1"
    cache.put("c", "3")  # evicts b, the least recently used
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, "1", "3")
    now[0] = 11
    assert cache.get("a") is None


def test_as_of_reads_a_snapshot_a_time_or_a_tag_exactly(offline_lakehouse: Settings) -> None:
    iceberg = seed(offline_lakehouse, n=10)
    ticks = iceberg.load("ticks")
    first = ticks.current_snapshot()
    assert first is not None
    made = create(offline_lakehouse, "bt-1")
    time.sleep(0.05)
    ticks.append(conform(tick_rows(5, first_sequence=11), ticks.schema().as_arrow()))
    c = Client(offline_lakehouse)
    end = DAY + dt.timedelta(hours=1)
    now = c.ticks(None, DAY, end, route="iceberg")
    by_id = c.ticks(None, DAY, end, as_of=first.snapshot_id)
    by_time = c.ticks(None, DAY, end, as_of=dt.datetime.fromtimestamp(first.timestamp_ms / 1000 + 0.01, dt.UTC))
    by_tag = c.ticks(None, DAY, end, as_of="bt-1")
    assert (now.num_rows, by_id.num_rows) == (45, 30)
    assert by_time.arrow.equals(by_id.arrow) and by_tag.arrow.equals(by_id.arrow)
    assert by_tag.freshness.as_of == "tag:bt-1" and by_tag.freshness.parts[0].snapshot_id == first.snapshot_id
    # The manifest pins every table and names the code that read it.
    recorded = manifest(offline_lakehouse, "bt-1")
    assert recorded is not None and recorded == made
    assert recorded["tables"]["ticks"]["snapshot_id"] == first.snapshot_id
    assert set(recorded["tables"]) >= {"ticks", "bars_1m", "pnl"}
    assert recorded["code"]["git_sha"] and len(recorded["code"]["git_sha"]) == 40
    with pytest.raises(TagExistsError):
        create(offline_lakehouse, "bt-1")


def test_as_of_a_missing_snapshot_or_tag_is_an_error_not_an_empty_result(offline_lakehouse: Settings) -> None:
    seed(offline_lakehouse)
    c = Client(offline_lakehouse)
    with pytest.raises(SnapshotNotFoundError, match="not in the history"):
        c.ticks(None, DAY, DAY + dt.timedelta(hours=1), as_of=123456789)
    with pytest.raises(SnapshotNotFoundError, match="no tag"):
        c.bars("1m", as_of="no-such-tag")
    with pytest.raises(SnapshotNotFoundError, match="no snapshot at or before"):
        c.bars("1m", as_of="2001-01-01T00:00:00Z")
