"""Batch processes keep freed buffers for reuse instead of faulting fresh memory in for every batch."""

from __future__ import annotations

import subprocess
import sys

# Allocates and frees 64 MB buffers (above glibc's largest default mmap threshold, so by default each one is a fresh
# mapping) and prints the minor page faults they cost.
_SCRIPT = """
import resource, sys
import numpy as np
from k2_resources.memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory() and retain_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    buffer = np.ones(8_000_000)
    del buffer
before = faults()
for _ in range(10):
    buffer = np.ones(8_000_000)
    del buffer
print(faults() - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_freed_batch_buffers_are_reused_not_faulted_in_again() -> None:
    default, retained = _faults("default"), _faults("retain")
    assert retained * 4 < default, (retained, default)
