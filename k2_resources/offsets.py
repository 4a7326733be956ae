"""Kafka offset ranges: plain values with no service imports, so worker processes and pickles can use them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class OffsetRange:
    """Kafka offsets [start, stop) of one partition."""

    topic: str
    partition: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return max(0, self.stop - self.start)


Watermarks = dict[str, dict[int, int]]  # topic -> partition -> next offset to commit
