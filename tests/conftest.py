"""Shared fixtures. Integration and chaos tests get the real broker through `kafka_broker`, started once per session."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from k2_resources.broker import LocalKafkaBroker
from k2_resources.env import Settings, load_settings
from k2_resources.local_process import free_port
from k2_resources.postgres import LocalPostgres
from k2_resources.registry_server import LocalSchemaRegistry
from k2_resources.s3_server import LocalObjectStore

_topic_ids = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    chaos = parser.getgroup("k2 chaos", "fault-injection tests (tests/chaos)")
    chaos.addoption(
        "--chaos-reps",
        type=int,
        default=int(os.environ.get("K2_CHAOS_REPS") or 5),
        help="repetitions of every chaos case (default 5, or K2_CHAOS_REPS)",
    )
    chaos.addoption("--chaos-report", default=None, help="write the chaos matrix as JSON here")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaBroker]:
    """A real Apache Kafka 4.x broker (KRaft) on a free 127.0.0.1 port, for the whole test session."""
    port = int(os.environ.get("K2_TEST_KAFKA_PORT") or free_port())
    broker = LocalKafkaBroker(tmp_path_factory.mktemp("kafka"), port, controller_port=free_port())
    broker.start()
    yield broker
    broker.stop(timeout_s=5.0)  # a throwaway broker: no need to wait for a clean shutdown


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server (Debian's binaries, initdb into a temp dir) on a free 127.0.0.1 port, for the whole
    test session. Tests create databases of their own on it (`postgres.create_database(name)`)."""
    # Not under pytest's tmp dir: that is private to root, and the server runs as the `postgres` user under root.
    data_dir = Path(tempfile.mkdtemp(prefix="k2-pg-"))
    data_dir.chmod(0o755)
    server = LocalPostgres(data_dir, free_port())
    server.start()
    yield server
    server.stop(mode="immediate")
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalObjectStore]:
    """A real S3-compatible server on a free 127.0.0.1 port for the whole session: SeaweedFS when `make seaweedfs`
    has built it, else moto's standalone server (K2_TEST_S3=seaweedfs|moto forces one)."""
    store = LocalObjectStore(tmp_path_factory.mktemp("s3"), free_port(), kind=os.environ.get("K2_TEST_S3", "auto"))
    store.start()
    yield store
    store.stop()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory, postgres: LocalPostgres) -> Iterator[LocalSchemaRegistry]:
    """A real Confluent-API schema registry (Apicurio Registry from Maven Central, Java 21+) on a free 127.0.0.1
    port, storing its schemas in the session's PostgreSQL, for the whole session."""
    postgres.create_database("registry")
    registry = LocalSchemaRegistry(
        tmp_path_factory.mktemp("registry"),
        free_port(),
        jdbc_url=f"jdbc:postgresql://127.0.0.1:{postgres.port}/registry",
        jdbc_user=postgres.user,
        jdbc_password=postgres.password,
    )
    registry.start()
    yield registry
    registry.stop()


def make_settings(home: Path, bootstrap: str = "127.0.0.1:1", topic: str | None = None, **extra: str) -> Settings:
    environ = {
        "K2_HOME": str(home),
        "K2_KAFKA_BOOTSTRAP": bootstrap,
        "K2_TICK_TOPIC": topic or f"market.ticks.asx.t{next(_topic_ids)}",
        **extra,
    }
    return load_settings(environ)


@pytest.fixture
def lakehouse(tmp_path: Path, kafka_broker: LocalKafkaBroker) -> Settings:
    """Settings for a fresh catalog/warehouse and a topic of its own on the shared broker."""
    return make_settings(tmp_path, kafka_broker.bootstrap)


@pytest.fixture
def offline_lakehouse(tmp_path: Path) -> Settings:
    """Settings for a fresh catalog/warehouse with no broker (unit tests)."""
    return make_settings(tmp_path)


@pytest.fixture
def dagster_instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance
