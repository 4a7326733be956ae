"""Fault injection for the chaos tests (tests/chaos/): named points where a process dies or fails on purpose.

    K2_FAULT_POINT=<point>[:<action>]

is read here and nowhere else, each time a point is reached (never at import). Unset, which is how K2 always runs
outside the chaos tests, every point is a no-op and the catalog uses its ordinary FileIO.

Points (`<table>` is raw_ticks, ticks or quarantine):

    raw_ticks.after_read     the batch's Kafka records are read and decoded; no file written yet
    <table>.during_write     a Parquet data file of the table's next snapshot is being written (some bytes are out)
    <table>.before_commit    data files, manifests and the new metadata.json are written; only the catalog's
                             pointer swap (the commit) is left
    raw_ticks.after_commit   the Iceberg commit is done; the Kafka consumer-group offsets are not committed yet

Actions:

    kill     (default) SIGKILL this process, as the OOM killer or a lost node would: no finally, no cleanup
    enospc   raise OSError(ENOSPC) at that point, as a full disk would

The file points work by giving the catalog a FileIO that watches what pyiceberg writes (`py-io-impl`), which is
only installed while K2_FAULT_POINT is set.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from typing import Any

from pyiceberg.io import OutputFile, OutputStream
from pyiceberg.io.pyarrow import PyArrowFileIO

ENV_VAR = "K2_FAULT_POINT"
ACTIONS = ("kill", "enospc")
_TABLE_DIR = re.compile(r"/(?P<table>[^/]+)/(?P<kind>data|metadata)/(?:.*/)?(?P<file>[^/]+)$")
_METADATA_VERSION = re.compile(r"^(?P<version>\d+)-.*\.metadata\.json$")


def active() -> tuple[str, str] | None:
    """(point, action) armed by K2_FAULT_POINT, or None."""
    spec = os.environ.get(ENV_VAR, "").strip()
    if not spec:
        return None
    point, _, action = spec.partition(":")
    action = action or "kill"
    if action not in ACTIONS:
        raise ValueError(f"{ENV_VAR}={spec!r}: action must be one of {ACTIONS}")
    return point, action


def reach(point: str) -> None:
    """Called by K2 code at `point`: does nothing unless K2_FAULT_POINT names it."""
    armed = active()
    if armed is None or armed[0] != point:
        return
    if armed[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, f"No space left on device (injected by {ENV_VAR} at {point})")


def catalog_properties() -> dict[str, str]:
    """Extra catalog properties: the watching FileIO while a fault point is armed, else nothing."""
    if active() is None:
        return {}
    return {"py-io-impl": f"{__name__}.{FaultInjectingFileIO.__name__}"}


class FaultInjectingFileIO(PyArrowFileIO):
    """PyArrowFileIO that reaches `<table>.during_write` and `<table>.before_commit` as pyiceberg writes."""

    def new_output(self, location: str) -> OutputFile:  # type: ignore[override]
        return _WatchedOutputFile(super().new_output(location))


class _WatchedOutputFile(OutputFile):
    def __init__(self, inner: OutputFile) -> None:
        super().__init__(inner.location)
        self._inner = inner

    def __len__(self) -> int:
        return len(self._inner)

    def exists(self) -> bool:
        return self._inner.exists()

    def to_input_file(self) -> Any:
        return self._inner.to_input_file()

    def create(self, overwrite: bool = False) -> OutputStream:
        return _WatchedStream(self._inner.create(overwrite=overwrite), self.location)


class _WatchedStream(OutputStream):
    """Delegates to the real stream; data files fire on their second write (the file is then partly written),
    metadata files of a commit (version > 0, not the table's creation) fire once fully written and closed."""

    def __init__(self, inner: OutputStream, location: str) -> None:
        self._inner = inner
        self._writes = 0
        self._during: str | None = None
        self._before_commit: str | None = None
        match = _TABLE_DIR.search(location.replace("\\", "/"))
        if match is None:
            return
        table = match["table"]
        if match["kind"] == "data":
            self._during = f"{table}.during_write"
        else:
            version = _METADATA_VERSION.match(match["file"])
            if version is not None and int(version["version"]) > 0:
                self._before_commit = f"{table}.before_commit"

    def write(self, b: bytes) -> int:
        self._writes += 1
        if self._during is not None and self._writes == 2:
            reach(self._during)
        return self._inner.write(b)

    def close(self) -> None:
        self._inner.close()
        if self._before_commit is not None:
            point, self._before_commit = self._before_commit, None
            reach(point)

    def __enter__(self) -> _WatchedStream:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    # pyarrow's ParquetWriter treats a Python object with these as a writable file.
    def tell(self) -> int:
        return int(self._inner.tell())  # type: ignore[attr-defined]

    def flush(self) -> None:
        self._inner.flush()  # type: ignore[attr-defined]

    @property
    def closed(self) -> bool:
        return bool(self._inner.closed)  # type: ignore[attr-defined]

    def writable(self) -> bool:
        return True
