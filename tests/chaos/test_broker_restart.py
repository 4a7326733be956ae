"""The broker stopped in the middle of a run and restarted: the run in flight still commits what it read (Iceberg
needs no broker), a run while it is down fails cleanly, the run after the restart completes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from k2_resources.broker import LocalKafkaBroker
from k2_resources.errors import BrokerUnavailableError
from k2_resources.kafka import KafkaResource
from k2_resources.local_process import free_port
from tests.chaos.harness import BATCH, ChaosMatrix, make_lake

pytestmark = pytest.mark.chaos

STOP_TIMEOUT_S = 1.0  # SIGTERM, then SIGKILL: a broker that goes away, cleanly or not


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaBroker]:
    """A broker of this module's own: the session broker stays up for every other test."""
    broker = LocalKafkaBroker(tmp_path_factory.mktemp("kafka-restart"), free_port(), controller_port=free_port())
    broker.start()
    yield broker
    broker.stop(timeout_s=STOP_TIMEOUT_S)


def test_a_broker_stopped_mid_run_and_restarted_loses_and_duplicates_nothing(
    tmp_path: Path, own_broker: LocalKafkaBroker, rep: int, chaos_matrix: ChaosMatrix
) -> None:
    own_broker.start()  # no-op when up
    lake = make_lake(tmp_path, own_broker.bootstrap)
    lake.produce()
    lake.ingest()
    lake.produce()

    impatient = KafkaResource(bootstrap_servers=own_broker.bootstrap, request_timeout_s=2.0, group_commit_timeout_s=1.0)
    in_flight = lake.ingest(before_commit=lambda: own_broker.stop(timeout_s=STOP_TIMEOUT_S), kafka=impatient)
    assert in_flight.outcome.rows_appended == BATCH
    assert in_flight.group_commit_error is not None, "the informational group commit cannot reach a stopped broker"

    with pytest.raises(BrokerUnavailableError):
        lake.ingest(kafka=impatient)

    own_broker.start()
    lake.produce()  # the log continues where it was
    after = lake.ingest()
    assert after.outcome.rows_appended == BATCH
    verdict = lake.verdict()
    chaos_matrix.record("broker stopped mid-run and restarted", rep, verdict)
    assert verdict.exactly_once and verdict.produced == 3 * BATCH, verdict
