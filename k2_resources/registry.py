"""`RegistrySchemaStore`: the SchemaStore of the prod profile, speaking the Confluent Schema Registry REST API
(Apicurio's ccompat API locally, Confluent's or any compatible one in a deployment).

Producers register the shipped schemas (`register_shipped_schemas`) and frame values with the id the registry
gave; consumers resolve ids with `schema(id)`, cached forever (a registered id never changes). BACKWARD
compatibility is enforced by the registry: registering an incompatible version raises IncompatibleSchemaError.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from k2_resources.errors import IncompatibleSchemaError, RegistryError, UnknownSchemaIdError
from k2_resources.schemas import TICK_SUBJECT, SchemaStore, load_schema_file

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# Subject -> schema file shipped with the code.
SHIPPED_SCHEMAS = {TICK_SUBJECT: "tick.avsc"}
COMPATIBILITY_LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)


class RegistrySchemaStore(SchemaStore):
    """A Confluent-API schema registry at `url` (e.g. http://127.0.0.1:8080/apis/ccompat/v7)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._by_id: dict[int, dict[str, Any]] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                payload = json.loads(detail)
            except json.JSONDecodeError:
                payload = {"message": detail}
            code = int(payload.get("error_code", exc.code))
            message = f"{method} {path}: HTTP {exc.code} ({code}) {payload.get('message', '')}".strip()
            if exc.code == 409:
                raise IncompatibleSchemaError(
                    f"{message}; make the change BACKWARD compatible (add fields with defaults, never remove or retype)"
                ) from exc
            if code in (40401, 40402, 40403, 40408) or exc.code == 404:
                raise LookupError(message) from exc
            raise RegistryError(message) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"the schema registry at {self.url} did not answer: {exc}") from exc

    @staticmethod
    def _subject(subject: str) -> str:
        return urllib.parse.quote(subject, safe="")

    # --- SchemaStore -----------------------------------------------------------------------------------------------

    def schema(self, schema_id: int) -> dict[str, Any]:
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            found = self._call("GET", f"/schemas/ids/{int(schema_id)}")
        except LookupError as exc:
            raise UnknownSchemaIdError(
                f"schema id {schema_id} is not in the registry at {self.url}; was the value produced against another "
                "registry?"
            ) from exc
        parsed: dict[str, Any] = json.loads(found["schema"])
        self._by_id[schema_id] = parsed
        return parsed

    def latest_id(self, subject: str) -> int:
        try:
            return int(self._call("GET", f"/subjects/{self._subject(subject)}/versions/latest")["id"])
        except LookupError as exc:
            raise UnknownSchemaIdError(
                f"subject {subject} has no schema in the registry at {self.url}: register it first "
                "(register_shipped_schemas, done by producers)"
            ) from exc

    # --- registry operations ---------------------------------------------------------------------------------------

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register `schema` under `subject` (idempotent: an identical schema returns its existing id)."""
        body = {"schema": json.dumps(schema, separators=(",", ":")), "schemaType": "AVRO"}
        schema_id = int(self._call("POST", f"/subjects/{self._subject(subject)}/versions", body)["id"])
        self._by_id.setdefault(schema_id, schema)
        return schema_id

    def check_compatibility(self, subject: str, schema: dict[str, Any]) -> tuple[bool, list[str]]:
        """(compatible, reasons) of `schema` against the subject's latest version, under the subject's level."""
        body = {"schema": json.dumps(schema, separators=(",", ":")), "schemaType": "AVRO"}
        path = f"/compatibility/subjects/{self._subject(subject)}/versions/latest?verbose=true"
        try:
            result = self._call("POST", path, body)
        except LookupError:
            return True, []  # no version yet: anything is compatible with nothing
        return bool(result.get("is_compatible")), [str(m) for m in result.get("messages", [])]

    def set_compatibility(self, level: str, subject: str | None = None) -> None:
        if level not in COMPATIBILITY_LEVELS:
            raise RegistryError(f"compatibility {level!r}: use one of {', '.join(COMPATIBILITY_LEVELS)}")
        path = f"/config/{self._subject(subject)}" if subject else "/config"
        self._call("PUT", path, {"compatibility": level})

    def compatibility(self, subject: str | None = None) -> str:
        path = f"/config/{self._subject(subject)}" if subject else "/config"
        try:
            result = self._call("GET", path)
        except LookupError:
            result = self._call("GET", "/config")
        return str(result.get("compatibilityLevel") or result.get("compatibility"))

    def subjects(self) -> list[str]:
        return [str(s) for s in self._call("GET", "/subjects")]


def register_shipped_schemas(store: RegistrySchemaStore, level: str = "BACKWARD") -> dict[str, int]:
    """Set `level` on each shipped subject and register the schema files versioned with the code; subject -> id."""
    ids = {}
    for subject, name in SHIPPED_SCHEMAS.items():
        store.set_compatibility(level, subject)
        ids[subject] = store.register(subject, load_schema_file(name))
    return ids
