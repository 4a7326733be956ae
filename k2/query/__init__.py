"""K2's query API: `k2.query.ticks(...)`, or a `Client` with explicit credentials. See k2/query/api.py.

Attributes load lazily, so `k2 --help` does not import DuckDB, pyiceberg and pandas.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from k2.query.api import Client, QueryResult

__all__ = ["Client", "Freshness", "Part", "QueryLimits", "QueryResult", "asof_join", "bars", "latest", "sql", "ticks"]

_LAZY = {
    "Client": "k2.query.api",
    "QueryResult": "k2.query.api",
    "QueryLimits": "k2.query.engine",
    "Freshness": "k2.query.router",
    "Part": "k2.query.router",
}
_default: Client | None = None
_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'k2.query' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def default_client() -> Client:
    """A client for the environment's settings and credentials (K2_TOKEN / K2_API_KEY / local role)."""
    global _default
    from k2.query.api import Client

    with _lock:
        if _default is None:
            _default = Client()
        return _default


def ticks(*args: Any, **kwargs: Any) -> QueryResult:
    return default_client().ticks(*args, **kwargs)


def bars(*args: Any, **kwargs: Any) -> QueryResult:
    return default_client().bars(*args, **kwargs)


def latest(*args: Any, **kwargs: Any) -> QueryResult:
    return default_client().latest(*args, **kwargs)


def asof_join(*args: Any, **kwargs: Any) -> QueryResult:
    return default_client().asof_join(*args, **kwargs)


def sql(*args: Any, **kwargs: Any) -> QueryResult:
    return default_client().sql(*args, **kwargs)
