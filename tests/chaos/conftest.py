"""Chaos fixtures: repetitions (`--chaos-reps`, default 5), one fresh lake per case, the matrix of results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from k2_resources.broker import LocalKafkaBroker
from tests.chaos.harness import ChaosMatrix, Lake, make_lake

_MATRIX = ChaosMatrix()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rep" in metafunc.fixturenames:
        reps = int(metafunc.config.getoption("chaos_reps"))
        metafunc.parametrize("rep", range(1, reps + 1), ids=[f"rep{i}" for i in range(1, reps + 1)])


@pytest.fixture(scope="session")
def chaos_matrix(pytestconfig: pytest.Config) -> Iterator[ChaosMatrix]:
    """Every case records (fault, repetition, produced, lost, duplicated); written at the end of the session to
    --chaos-report (default .k2/chaos/matrix.json), which benchmarks/chaos_matrix.py prints as a table."""
    yield _MATRIX
    report = pytestconfig.getoption("chaos_report") or Path(pytestconfig.rootpath) / ".k2" / "chaos" / "matrix.json"
    _MATRIX.write(Path(report))


@pytest.fixture
def lake(tmp_path: Path, kafka_broker: LocalKafkaBroker) -> Lake:
    """A topic of its own on the session broker, and a fresh catalog and warehouse."""
    return make_lake(tmp_path, kafka_broker.bootstrap)
