"""The session calendar decides: a tick outside an XASX session never reaches a bar, it is quarantined."""

from __future__ import annotations

import datetime as dt

import polars as pl

from k2_assets.bars.session import OUTSIDE_SESSION, outside_session, session_of
from k2_assets.ticks.validate import validate

OPEN, CLOSE = session_of("ASX", dt.date(2026, 11, 25)) or (0, 0)
SATURDAY = int(dt.datetime(2026, 11, 28, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)  # 12:00 Sydney, a Saturday
CHRISTMAS = int(dt.datetime(2025, 12, 24, 23, 30, tzinfo=dt.UTC).timestamp() * 1_000_000)  # 10:30 Sydney, holiday


def test_session_bounds_are_the_xasx_continuous_session_in_utc() -> None:
    assert int(dt.datetime(2026, 11, 24, 23, tzinfo=dt.UTC).timestamp() * 1_000_000) == OPEN  # 10:00 AEDT
    assert CLOSE - OPEN == 6 * 3_600_000_000
    assert session_of("ASX", dt.date(2026, 11, 28)) is None


def test_ticks_outside_a_session_are_flagged_and_those_inside_are_not() -> None:
    frame = pl.DataFrame(
        {
            "exchange": ["ASX"] * 6 + ["NYSE", None],
            "exchange_ts": [OPEN, CLOSE - 1, OPEN - 1, CLOSE, SATURDAY, CHRISTMAS, OPEN, OPEN],
        }
    )
    # Unknown exchange: no calendar, no session. Null exchange: missing_field's job, not this rule's.
    assert outside_session(frame).to_list() == [False, False, True, True, True, True, True, False]


def test_live_validation_quarantines_a_tick_outside_the_session_with_a_reason() -> None:
    n = 3
    raw = pl.DataFrame(
        {
            "kafka_topic": ["t"] * n,
            "kafka_partition": [0] * n,
            "kafka_offset": list(range(n)),
            "decode_error": [None] * n,
            "raw_value": [None] * n,
            "kafka_key": ["BHP"] * n,
            "exchange": ["ASX"] * n,
            "symbol": ["BHP"] * n,
            "sequence": [1, 2, 3],
            "exchange_ts": [OPEN + 1_000_000, SATURDAY, CLOSE + 60_000_000],
            "ingest_ts": [OPEN + 1_000_000, SATURDAY, CLOSE + 60_000_000],
            "price": [45_000_000] * n,
            "volume": [100] * n,
            "trade_id": ["a", "b", "c"],
            "side": ["BUY"] * n,
            "conditions": [[]] * n,
        },
        schema_overrides={"decode_error": pl.String, "raw_value": pl.Binary, "conditions": pl.List(pl.String)},
    )
    result = validate(raw, now_us=SATURDAY + 86_400_000_000)
    assert result.ticks["sequence"].to_list() == [1]
    assert result.quarantine["reasons"].to_list() == [[OUTSIDE_SESSION], [OUTSIDE_SESSION]]
