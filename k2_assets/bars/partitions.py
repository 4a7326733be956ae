"""Dagster partitions of the bar assets: one per exchange trading day, from the exchange's session calendar."""

import datetime as dt
from functools import cache

import dagster as dg
import pandas as pd

from k2_resources.exchanges import calendar
from k2_resources.exchanges import exchange as exchange_info

PARTITIONS_START = "2024-01-02"


@cache
def trading_day_partitions(code: str = "ASX", start: str = PARTITIONS_START) -> dg.TimeWindowPartitionsDefinition:
    """Weekdays in the exchange's time zone minus the calendar's holidays (XASX for ASX): a partition key is a
    trading date, `YYYY-MM-DD`. `end_offset=1` adds today's session, so the live path can report on it and a user
    can re-materialise it before it ends."""
    cal = calendar(code)
    first = pd.Timestamp(start)
    weekdays = pd.bdate_range(first, cal.last_session)
    sessions = set(cal.sessions_in_range(first, cal.last_session))
    holidays = [dt.datetime.combine(d.date(), dt.time()) for d in weekdays if d not in sessions]
    return dg.TimeWindowPartitionsDefinition(
        start=start,
        fmt="%Y-%m-%d",
        cron_schedule="0 0 * * 1-5",
        timezone=exchange_info(code).tz,
        end_offset=1,
        exclusions=holidays,
    )
