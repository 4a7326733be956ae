"""Pipeline-wide knobs as a Dagster resource (built from Settings in definitions.py)."""

from __future__ import annotations

import dagster as dg

from k2_resources.env import Settings
from k2_resources.memory import retain_freed_memory
from k2_resources.schemas import FileSchemaStore, SchemaStore


class PipelineResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    exchange: str = "ASX"
    tick_topic: str = "market.ticks.asx"
    max_batch_per_partition: int = 500_000
    derivative_symbols: list[str] = []
    # Confluent-API schema registry (prod); None = the schema files shipped with the code.
    schema_registry_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineResource:
        return cls(
            exchange=settings.exchange,
            tick_topic=settings.tick_topic,
            max_batch_per_partition=settings.max_batch_per_partition,
            schema_registry_url=settings.schema_registry_url,
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Runs in the process that executes the batch: its buffers are reused from batch to batch, not refaulted.
        retain_freed_memory()

    def schema_store(self) -> SchemaStore:
        if self.schema_registry_url:
            from k2_resources.registry import RegistrySchemaStore

            return RegistrySchemaStore(self.schema_registry_url)
        return FileSchemaStore()
