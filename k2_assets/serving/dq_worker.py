"""Great Expectations in a worker process of its own.

Importing GE and building its contexts cost ~2.5 s of Python, and its Data Docs ~0.5 s per gate: in the ingest
process they hold the GIL against the batch's own work. `start` launches one long-lived
`python -m k2_assets.serving.dq_worker` (it imports GE and builds the named suites' checkpoints at once, on the
other core), and `dq_suites.run_suite` then sends it the frame and waits for the expectation results. With
`defer_docs` the worker answers as soon as the results are stored and builds the Data Docs afterwards, while the
caller publishes and computes bars; `wait_docs` (or the next suite sent) waits for them, and every run that
deferred docs waits before it ends.

Failing loudly: a worker error comes back as QualityGateError, a dead worker is QualityGateError too; the gate then
has no passing result, so nothing is published.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2_resources.errors import QualityGateError

_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class _Slot:
    """A reply still to come: of a warm-up, a suite run, or a deferred Data Docs build, in the order sent."""

    kind: str
    reply: tuple[bool, Any] | None = None


class SuiteWorker:
    """The client side: requests and replies are pickles over the worker's stdin and stdout, one reply per request
    plus one per deferred Data Docs build (`_owed`, oldest first). `submit` lets the caller work meanwhile."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "k2_assets.serving.dq_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._owed: list[_Slot] = []
        self._lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _send(self, request: tuple[Any, ...]) -> None:
        assert self.proc.stdin is not None
        try:
            pickle.dump(request, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except OSError as exc:
            raise QualityGateError(f"the GE worker process is gone ({exc}); the batch was not published") from exc

    def _receive(self) -> tuple[bool, Any]:
        assert self.proc.stdout is not None
        try:
            reply: tuple[bool, Any] = pickle.load(self.proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            raise QualityGateError(
                f"the GE worker process died (exit code {self.proc.poll()}): no gate result, the batch was not "
                "published; re-run it"
            ) from exc
        return reply

    def _next(self) -> None:
        """Read the reply the oldest owed slot is waiting for."""
        slot = self._owed.pop(0)
        slot.reply = self._receive()
        if slot.kind == "docs" and not slot.reply[0]:
            raise slot.reply[1]  # a Data Docs build failed: the compliance report is missing a run
        # A failed warm-up is left for the next suite run to report, with its context.

    def warm(self, names: tuple[str, ...], docs_dir: Path | None, suites_dir: Path) -> None:
        with self._lock:
            self._send(("warm", names, docs_dir, suites_dir))
            self._owed.append(_Slot("warm"))

    def submit(self, request: dict[str, Any]) -> Callable[[], Any]:
        """Send dq_suites.run_suite's arguments (`request`) now; the returned function waits for the SuiteOutcome."""
        with self._lock:
            self._send(("run", request))
            slot = _Slot("result")
            self._owed.append(slot)
            if request["defer_docs"] and request["docs_dir"] is not None:
                self._owed.append(_Slot("docs"))  # the worker always answers a deferred build, even after a failure

        def result() -> Any:
            with self._lock:
                while slot.reply is None:
                    self._next()
            ok, value = slot.reply
            if not ok:
                raise value
            return value

        return result

    def run(self, request: dict[str, Any]) -> Any:
        return self.submit(request)()

    def wait_docs(self) -> None:
        with self._lock:
            while self._owed:
                self._next()

    def close(self) -> None:
        # Closing stdin lets the worker finish what it was asked (Data Docs included) and exit.
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):  # a dead worker: nothing left to tell it
                self.proc.stdin.close()


_WORKER: SuiteWorker | None = None
_START_LOCK = threading.Lock()


def start(names: tuple[str, ...], docs_dir: Path | None, suites_dir: Path) -> SuiteWorker:
    """The running worker (started if there is none), asked to get these suites ready."""
    global _WORKER
    with _START_LOCK:
        if _WORKER is None or not _WORKER.alive():
            _WORKER = SuiteWorker()
        worker = _WORKER
    worker.warm(names, docs_dir, suites_dir)
    return worker


def current() -> SuiteWorker | None:
    """The worker `start` launched, if any: a dead one is still returned, so its death is reported, not hidden."""
    return _WORKER


def wait_docs() -> None:
    """Wait until every Data Docs build deferred so far is written (no-op without a worker)."""
    if _WORKER is not None:
        _WORKER.wait_docs()


@atexit.register
def _close() -> None:
    if _WORKER is not None:
        _WORKER.close()


def _serve() -> None:
    from k2_assets.serving import dq_suites

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # GE's prints go to stderr, never into the reply stream
    requests = sys.stdin.buffer

    def reply(ok: bool, value: Any) -> None:
        pickle.dump((ok, value), replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()

    while True:
        try:
            kind, *args = pickle.load(requests)
        except EOFError:
            return
        if kind == "warm":
            names, docs_dir, suites_dir = args
            try:
                for name in names:
                    dq_suites.checkpoint_for(name, dq_suites.load_suite(name, suites_dir), docs_dir)
                reply(True, None)
            except Exception as exc:  # noqa: BLE001 - reported by the next run, with its context
                reply(False, QualityGateError(str(exc)))
            continue
        request: dict[str, Any] = args[0]
        defer = bool(request.pop("defer_docs")) and request["docs_dir"] is not None
        build_docs = None
        try:
            outcome, build_docs = dq_suites.validate_here(**request, docs_now=not defer)
            reply(True, outcome)
        except QualityGateError as exc:
            reply(False, exc)
        except Exception as exc:  # noqa: BLE001 - typed for the caller
            reply(False, QualityGateError(f"GE suite {request['name']!r} failed: {type(exc).__name__}: {exc}"))
        if defer:  # the client waits for this answer whatever happened above
            try:
                if build_docs is not None:
                    build_docs()
                reply(True, None)
            except Exception as exc:  # noqa: BLE001 - typed for the caller
                reply(False, QualityGateError(f"Data Docs of {request['name']!r} failed: {type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    _serve()
