"""Deadlines for running queries (the query engine's timeouts)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Watchdog:
    """One thread that runs callbacks at deadlines: a query's timeout without starting a thread per query (a
    thread start costs milliseconds on a busy machine)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, Callable[[], None]]] = {}
        self._next_id = 0
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, callback: Callable[[], None]) -> int:
        with self._cond:
            self._next_id += 1
            self._due[self._next_id] = (time.monotonic() + seconds, callback)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="k2-query-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
            return self._next_id

    def disarm(self, handle: int) -> None:
        with self._cond:
            self._due.pop(handle, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                fired = [h for h, (at, _) in self._due.items() if at <= now]
                callbacks = [self._due.pop(h)[1] for h in fired]
                if not callbacks:
                    wait = min((at for at, _ in self._due.values()), default=now + 60.0) - now
                    self._cond.wait(timeout=max(wait, 0.001))
                    continue
            for callback in callbacks:
                callback()
