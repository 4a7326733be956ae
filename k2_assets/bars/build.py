"""Keeping bars_1m/5m/1h/1d equal to the bars of the validated ticks (ARCHITECTURE.md decision 4).

Two writers, one rule (every commit re-reads the state it builds on and fails on a concurrent commit, then
re-plans; the library's blind retry is off):

- `update_live` (`live.py`, after each micro-batch, unpartitioned): reads only the tick files appended since the
  ticks snapshot bars_1m last reflected, merges them into the stored bar states of the (symbol, minute) windows
  they touch (no other tick is read), restates final bars that changed, and re-rolls the affected days of
  5m/1h/1d from bars_1m. Days touched by a non-append ticks commit (a delete or rewrite) are rebuilt whole.
- `rebuild_days` / `rollup_days` (`rebuild.py`, the daily-partitioned assets): recompute whole trading days from
  ticks (1m) or from bars_1m (5m/1h/1d), for backfills and re-materialisation; bars_1m records the ticks snapshot
  each rebuilt day reflects so the live path never merges those ticks twice.

What both share (tables, reports, the commit and outbox protocol, re-rolling a day) is in `runs.py`; this module
is the entry point the assets, the benchmark and the tests import.
"""

from k2_assets.bars.live import merge_into, update_live
from k2_assets.bars.rebuild import rebuild_days, rollup_days
from k2_assets.bars.runs import BarsRunResult, BarTables, DayReport, closed_days

__all__ = [
    "BarTables",
    "BarsRunResult",
    "DayReport",
    "closed_days",
    "merge_into",
    "rebuild_days",
    "rollup_days",
    "update_live",
]
