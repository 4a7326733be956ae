"""Replay pacing: chunks due at (exchange_ts - first) / speed, computed over whole arrays."""

from __future__ import annotations

import numpy as np
import pytest

from k2.replay import ENCODE_BATCH, parse_speed, schedule
from k2_resources.errors import ConfigurationError


def test_speed_parses_multipliers_and_max() -> None:
    assert (parse_speed("10x"), parse_speed("1x"), parse_speed("2.5"), parse_speed("max")) == (10.0, 1.0, 2.5, None)
    for bad in ("fast", "-2x", "0.0x"):
        with pytest.raises(ConfigurationError):
            parse_speed(bad)


def test_ticks_are_due_at_their_exchange_time_offset_divided_by_the_speed() -> None:
    ts = np.array([0, 1_000, 5_000, 2_000_000, 2_004_000, 10_000_000], dtype=np.int64)  # microseconds
    starts, due = schedule(ts, speed=10.0, chunk_s=0.01)
    # 0, 1 ms and 5 ms of exchange time are 0, 0.1 and 0.5 ms at 10x: one chunk; 2 s -> 0.2 s; 10 s -> 1 s.
    assert starts.tolist() == [0, 3, 5]
    assert np.allclose(due, [0.0, 0.2, 1.0])


def test_real_time_keeps_gaps_and_max_speed_sends_in_batches() -> None:
    ts = np.arange(0, 3_000_000, 500_000, dtype=np.int64)
    starts, due = schedule(ts, speed=1.0)
    assert starts.tolist() == list(range(6)) and np.allclose(due, [0, 0.5, 1.0, 1.5, 2.0, 2.5])
    many = np.zeros(ENCODE_BATCH * 2 + 1, dtype=np.int64)
    starts, due = schedule(many, speed=None)
    assert starts.tolist() == [0, ENCODE_BATCH, 2 * ENCODE_BATCH] and not due.any()
    assert schedule(np.zeros(0, dtype=np.int64), 5.0)[0].size == 0
