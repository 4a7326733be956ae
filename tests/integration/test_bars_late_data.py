"""Late ticks through the real broker: Kafka -> raw_ticks -> ticks -> bars_live, micro-batch by micro-batch, then a
re-materialisation of the day's partitions; every bar of every interval is checked against DuckDB SQL over the
validated ticks, and every restatement against bar_corrections."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from k2.feed.simulator import FaultRates
from k2_resources.broker import LocalKafkaBroker
from k2_resources.env import Settings
from tests.conftest import make_settings
from tests.integration.helpers import SESSION, produce, query, run

pytestmark = pytest.mark.integration

KEY = ["exchange", "symbol", "window_start"]
VALUES = ["open", "high", "low", "close", "volume", "trade_count", "vwap", "first_sequence", "last_sequence"]
# Bucket width and the shift to exchange-local time (AEDT, UTC+11 in November) for hours and days.
BUCKETS = {"1m": (60, 0), "5m": (300, 0), "1h": (3600, 39600), "1d": (86400, 39600)}


def oracle_sql(interval: str) -> str:
    """Independent of k2_assets.bars: integer millionths, arg_min/arg_max on (exchange_ts, sequence)."""
    width, shift = (v * 1_000_000 for v in BUCKETS[interval])
    return f"""
    WITH t AS (SELECT exchange, symbol, sequence, epoch_us(exchange_ts) AS ts, (price * 1000000)::BIGINT AS p, volume
               FROM ticks)
    SELECT exchange, symbol, ((ts + {shift}) // {width}) * {width} - {shift} AS window_start,
           arg_min(p, (ts, sequence)) AS open, max(p) AS high, min(p) AS low, arg_max(p, (ts, sequence)) AS close,
           sum(volume)::BIGINT AS volume, count(*)::BIGINT AS trade_count,
           ((sum(p::HUGEINT * volume) * 2 + sum(volume)) // (2 * sum(volume)))::BIGINT AS vwap,
           arg_min(sequence, (ts, sequence)) AS first_sequence, arg_max(sequence, (ts, sequence)) AS last_sequence
    FROM t GROUP BY ALL"""


def bars_sql(interval: str) -> str:
    prices = ", ".join(f"({c} * 1000000)::BIGINT AS {c}" for c in ("open", "high", "low", "close", "vwap"))
    return f"""SELECT exchange, symbol, epoch_us(window_start) AS window_start, {prices}, volume, trade_count,
               first_sequence, last_sequence, revision, is_final FROM bars_{interval}"""


def assert_bars_equal_oracle(settings: Settings) -> None:
    for interval in BUCKETS:
        bars = query(settings, bars_sql(interval))
        expected = query(settings, oracle_sql(interval))
        assert bars.height == expected.height > 0, interval
        diff = bars.join(expected, on=KEY, how="full", coalesce=True, suffix="_oracle").filter(
            pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_oracle")) for c in VALUES])
        )
        assert diff.is_empty(), (interval, diff.head(3).to_dicts())


def test_late_ticks_from_kafka_restate_bars_that_still_equal_the_oracle(
    tmp_path: Path, kafka_broker: LocalKafkaBroker, dagster_instance: dg.DagsterInstance
) -> None:
    # Small micro-batches, so ticks 3 minutes late arrive batches after their windows closed.
    settings = make_settings(tmp_path, kafka_broker.bootstrap, K2_MAX_BATCH_PER_PARTITION="1500")
    feed = produce(settings, 24_000, seed=21, faults=FaultRates(late=0.01, late_minutes=3))
    summary = run(settings, dagster_instance)
    assert summary.batches >= 3

    assert_bars_equal_oracle(settings)
    fixes = query(settings, "SELECT * FROM bar_corrections")
    one_minute = fixes.filter(pl.col("interval") == "1m")
    assert one_minute.height > 0 and set(fixes["reason"]) == {"late_ticks"}
    # The causes are the injected late ticks (a late tick can share a window with on-time ticks of a later batch).
    late = {(t["symbol"], t["sequence"]) for t in feed.manifest["late"]}  # type: ignore[attr-defined]
    caused = {(s, q) for s, qs in one_minute.select("symbol", "caused_by_sequences").iter_rows() for q in qs}
    assert caused & late and len(caused & late) >= 0.5 * len(caused)
    # Each restatement of an existing bar is one correction row and one revision step; a late tick that opens a
    # window the symbol had not traded in is a correction too (old_revision null) with the bar at revision 0.
    revisions = query(settings, "SELECT symbol, epoch_us(window_start) AS ws, revision FROM bars_1m WHERE revision > 0")
    steps = one_minute.filter(pl.col("old_revision").is_not_null())
    counted = steps.group_by("symbol", pl.col("window_start").dt.epoch("us").alias("ws")).len()
    joined = revisions.join(counted, on=["symbol", "ws"], how="full", coalesce=True)
    assert (joined["revision"] == joined["len"]).all() and revisions.height == counted.height
    inserted = one_minute.filter(pl.col("old_revision").is_null())
    assert (inserted["new_revision"] == 0).all() and steps.height + inserted.height == one_minute.height

    # The live path reported per-partition materialisations of the bar assets, restatements included.
    day = SESSION.isoformat()
    for name in ("bars_1m", "bars_5m", "bars_1h", "bars_1d"):
        assert day in dagster_instance.get_materialized_partitions(dg.AssetKey(name))
    events = dagster_instance.get_event_records(
        dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION, asset_key=dg.AssetKey("bars_1m"))
    )
    restated = [e.asset_materialization.metadata["bars_restated"].value for e in events if e.asset_materialization]
    assert max(restated) > 0  # type: ignore[type-var]

    # Re-materialising the day from the UI's job: nothing to restate (live was exact); the closed session is final.
    from k2_assets.definitions import build_definitions

    job = build_definitions(settings).resolve_job_def("bars_daily_job")
    result = job.execute_in_process(partition_key=day, instance=dagster_instance)
    assert result.success
    meta = result.asset_materializations_for_node("bars_1m")[0].metadata
    assert (
        meta["bars_restated"].value == 0
        and meta["ticks_read"].value == query(settings, "SELECT count(*) FROM ticks").item()
    )
    assert query(settings, "SELECT bool_and(is_final) FROM bars_1d").item() is True
    assert_bars_equal_oracle(settings)
