"""Avro schemas of the Kafka values and the schema store that resolves their ids.

The local profile keeps schemas as files in this folder with fixed ids; a Confluent-compatible registry can serve
the same interface in production.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from functools import cache
from pathlib import Path
from typing import Any

from k2_resources.errors import UnknownSchemaIdError

SCHEMA_DIR = Path(__file__).parent
TICK_SUBJECT = "market.ticks-value"

# Schema ids are part of the wire format: never renumber, only add.
_FILE_SCHEMA_IDS: dict[int, str] = {1: "tick.avsc"}


class SchemaStore(ABC):
    """Resolves schema ids found in Confluent-framed values, and names the id producers write."""

    @abstractmethod
    def schema(self, schema_id: int) -> dict[str, Any]:
        """The parsed Avro schema for `schema_id`; raises UnknownSchemaIdError if there is none."""

    @abstractmethod
    def latest_id(self, subject: str) -> int:
        """The id producers should frame new values with."""


class FileSchemaStore(SchemaStore):
    """Schemas versioned with the code, in this folder."""

    def schema(self, schema_id: int) -> dict[str, Any]:
        name = _FILE_SCHEMA_IDS.get(schema_id)
        if name is None:
            known = ", ".join(str(i) for i in sorted(_FILE_SCHEMA_IDS))
            raise UnknownSchemaIdError(
                f"schema id {schema_id} is not registered (known: {known}); "
                "add the schema to k2_resources/schemas or point K2 at the registry that issued it"
            )
        return load_schema_file(name)

    def latest_id(self, subject: str) -> int:
        return max(_FILE_SCHEMA_IDS)


@cache
def load_schema_file(name: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text())
    return parsed
