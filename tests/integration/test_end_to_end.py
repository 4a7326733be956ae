"""Feed -> Kafka -> raw_ticks -> ticks -> bars_1m on the real broker, checked against independent recomputation."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from k2_resources.env import Settings
from k2_resources.iceberg import IcebergResource
from tests.integration.helpers import produce, query, raw_offsets, run

pytestmark = pytest.mark.integration

# An independent oracle for bars: DuckDB SQL over the validated ticks, sharing no code with k2_assets.bars.
ORACLE_SQL = """
SELECT exchange, symbol, time_bucket(INTERVAL 1 MINUTE, exchange_ts) AS window_start,
       arg_min(price, (exchange_ts, sequence)) AS open, max(price) AS high, min(price) AS low,
       arg_max(price, (exchange_ts, sequence)) AS close, sum(volume)::BIGINT AS volume, count(*) AS trade_count,
       ((sum((price * 1000000)::HUGEINT * volume) * 2 + sum(volume)) // (2 * sum(volume)))::DECIMAL(18, 0)
           / 1000000 AS vwap_exact
FROM ticks GROUP BY ALL
"""
# VWAP is defined as the exact quotient rounded half-up to 6 decimal places.
ORACLE_VWAP = "round(vwap_exact, 6)::DECIMAL(18, 6) AS vwap"


def test_every_produced_offset_lands_exactly_once_and_rerun_changes_nothing(
    lakehouse: Settings, dagster_instance: dg.DagsterInstance
) -> None:
    produced = produce(lakehouse, 100_000)
    run(lakehouse, dagster_instance)

    landed = raw_offsets(lakehouse)
    assert landed.height == 100_000
    assert set(landed.iter_rows()) == set(produced.positions)

    counts = query(lakehouse, "SELECT (SELECT count(*) FROM ticks) t, (SELECT count(*) FROM quarantine) q").row(0)
    assert counts == (100_000, 0)

    catalog = IcebergResource.from_settings(lakehouse)
    before = {n: catalog.load(n).current_snapshot().snapshot_id for n in ("raw_ticks", "ticks", "bars_1m")}
    run(lakehouse, dagster_instance)
    after = {n: catalog.load(n).current_snapshot().snapshot_id for n in ("raw_ticks", "ticks", "bars_1m")}
    assert after == before
    assert raw_offsets(lakehouse).height == 100_000


def test_bars_equal_an_independent_recomputation_for_every_symbol_minute(
    lakehouse: Settings, dagster_instance: dg.DagsterInstance
) -> None:
    produce(lakehouse, 30_000, seed=11)
    run(lakehouse, dagster_instance)
    # A second batch of the same session arrives later: its minutes must merge into the same bars.
    produce(lakehouse, 20_000, seed=12)
    run(lakehouse, dagster_instance)

    cols = ["exchange", "symbol", "window_start", "open", "high", "low", "close", "volume", "trade_count", "vwap"]
    bars = query(lakehouse, f"SELECT {', '.join(cols)} FROM bars_1m").sort(cols[:3])
    oracle = query(lakehouse, f"SELECT * EXCLUDE (vwap_exact), {ORACLE_VWAP} FROM ({ORACLE_SQL})").select(cols)
    oracle = oracle.sort(cols[:3])
    assert bars.height == oracle.height > 0
    diff = bars.join(oracle, on=cols[:3], how="full", suffix="_oracle", coalesce=True).filter(
        pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_oracle")) for c in cols[3:]])
    )
    assert diff.is_empty(), diff.head(3).to_dicts()
