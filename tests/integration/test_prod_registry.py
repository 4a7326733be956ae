"""The schema registry of the prod profile: a real Confluent-API registry (Apicurio) enforcing BACKWARD
compatibility; producers frame with its ids and the pipeline resolves them through it."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from k2.feed.producer import produce_feed
from k2.feed.simulator import Feed, generate
from k2_resources.broker import LocalKafkaBroker
from k2_resources.errors import IncompatibleSchemaError, UnknownSchemaIdError
from k2_resources.kafka import KafkaResource
from k2_resources.registry import SHIPPED_SCHEMAS, RegistrySchemaStore, register_shipped_schemas
from k2_resources.registry_server import LocalSchemaRegistry
from k2_resources.schemas import SCHEMA_DIR, TICK_SUBJECT, FileSchemaStore, load_schema_file
from tests.conftest import make_settings
from tests.integration.helpers import SESSION, query, run

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _fresh_subject() -> str:
    return f"k2-test-{uuid.uuid4().hex[:8]}-value"


def _with_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    evolved = copy.deepcopy(schema)
    evolved["fields"].append(field)
    return evolved


def test_registry_accepts_backward_compatible_tick_changes_and_rejects_incompatible_ones(
    schema_registry: LocalSchemaRegistry,
) -> None:
    store = RegistrySchemaStore(schema_registry.url)
    subject, tick = _fresh_subject(), load_schema_file("tick.avsc")
    store.set_compatibility("BACKWARD", subject)
    first = store.register(subject, tick)
    assert store.register(subject, tick) == first  # idempotent
    assert store.schema(first) == tick and store.latest_id(subject) == first

    optional = _with_field(tick, {"name": "venue", "type": ["null", "string"], "default": None})
    assert store.check_compatibility(subject, optional)[0]
    second = store.register(subject, optional)
    assert second != first and store.latest_id(subject) == second

    # New readers could not read old ticks: a required field without a default, or a retyped field.
    required = _with_field(optional, {"name": "venue_id", "type": "long"})
    retyped = copy.deepcopy(optional)
    next(f for f in retyped["fields"] if f["name"] == "volume")["type"] = "string"
    for incompatible in (required, retyped):
        assert store.check_compatibility(subject, incompatible)[0] is False
        with pytest.raises(IncompatibleSchemaError):
            store.register(subject, incompatible)
    assert store.latest_id(subject) == second
    with pytest.raises(UnknownSchemaIdError):
        store.schema(10_000_000)


def _file_versions(name: str) -> list[dict[str, Any]]:
    """Every committed version of a shipped schema, oldest first, then the working copy."""
    path = (SCHEMA_DIR / name).relative_to(REPO).as_posix()
    log = subprocess.run(
        ["git", "-C", str(REPO), "log", "--reverse", "--format=%H", "--", path], capture_output=True, text=True
    )
    versions = []
    for commit in log.stdout.split() if log.returncode == 0 else []:
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{path}"], capture_output=True, text=True)
        if shown.returncode == 0:
            versions.append(json.loads(shown.stdout))
    return [*versions, json.loads((SCHEMA_DIR / name).read_text())]


def test_every_version_of_the_shipped_schemas_is_backward_compatible_with_the_one_before(
    schema_registry: LocalSchemaRegistry,
) -> None:
    """The CI check for schema changes: replaying a schema file's history into the registry must never be refused."""
    store = RegistrySchemaStore(schema_registry.url)
    for subject, name in SHIPPED_SCHEMAS.items():
        replay = f"{subject}-history-{uuid.uuid4().hex[:8]}"
        store.set_compatibility("BACKWARD", replay)
        for number, version in enumerate(_file_versions(name), 1):
            ok, reasons = store.check_compatibility(replay, version)
            assert ok, f"{name} version {number} is not BACKWARD compatible with version {number - 1}: {reasons}"
            store.register(replay, version)


def test_pipeline_resolves_registry_ids_of_an_evolved_tick_schema(
    tmp_path: Path, kafka_broker: LocalKafkaBroker, schema_registry: LocalSchemaRegistry
) -> None:
    """Producers register tick.avsc, then a BACKWARD-compatible v2 (a new optional field), and frame values with v2's
    id; the pipeline decodes them with the writer schema it fetched from the registry by that id."""
    store = RegistrySchemaStore(schema_registry.url)
    v1_id = register_shipped_schemas(store)[TICK_SUBJECT]
    assert store.compatibility(TICK_SUBJECT) == "BACKWARD"
    v2 = _with_field(load_schema_file("tick.avsc"), {"name": "venue", "type": ["null", "string"], "default": None})
    v2_id = store.register(TICK_SUBJECT, v2)
    assert store.latest_id(TICK_SUBJECT) == v2_id and v2_id != v1_id and v2_id != 1
    with pytest.raises(UnknownSchemaIdError):
        FileSchemaStore().schema(v2_id)  # only the registry can decode what follows

    settings = make_settings(tmp_path, kafka_broker.bootstrap, K2_SCHEMA_REGISTRY_URL=schema_registry.url)
    feed = generate(3_000, seed=9, day=SESSION)
    feed = Feed(feed.ticks.with_columns(pl.lit("XASX").alias("venue")), feed.undecodable_rows, feed.manifest)
    produce_feed(KafkaResource.from_settings(settings), settings.tick_topic, feed, store, settings.topic_partitions)
    with dg.DagsterInstance.ephemeral() as instance:
        run(settings, instance)
    landed = query(settings, "SELECT count(*) AS n, count(decode_error) AS bad FROM raw_ticks").row(0)
    assert landed == (3_000, 0)
    assert query(settings, "SELECT count(*) AS n FROM ticks")["n"][0] == 3_000
