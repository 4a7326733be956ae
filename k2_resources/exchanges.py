"""Exchanges K2 knows: their session calendar and local time zone."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from k2_resources.errors import ConfigurationError


@dataclass(frozen=True)
class Exchange:
    code: str
    calendar: str  # exchange_calendars name
    tz: str


EXCHANGES: dict[str, Exchange] = {
    "ASX": Exchange("ASX", "XASX", "Australia/Sydney"),
}


def exchange(code: str) -> Exchange:
    try:
        return EXCHANGES[code.upper()]
    except KeyError as exc:
        raise ConfigurationError(f"unknown exchange {code!r}; known: {', '.join(EXCHANGES)}") from exc


@cache
def calendar(code: str):  # type: ignore[no-untyped-def]
    import exchange_calendars as xcals

    return xcals.get_calendar(exchange(code).calendar)
