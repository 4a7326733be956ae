"""The validated_ticks asset and its blocking quality gate (write-audit-publish, ARCHITECTURE.md decision 3)."""

import dataclasses
import json
from typing import Any

import dagster as dg

from k2_assets.serving import dq_worker
from k2_assets.ticks.dlq import KafkaDeadLetters
from k2_assets.ticks.planning import ranges_to_config
from k2_assets.ticks.publish import PublishResult, ValidationTables, publish_validated
from k2_assets.ticks.quality import QualityResource
from k2_resources.iceberg import IcebergResource
from k2_resources.kafka import KafkaResource
from k2_resources.pipeline import PipelineResource
from k2_resources.tables import DQ_RESULTS, QUARANTINE, RAW_TICKS, SEQUENCE_GAPS, SYMBOL_STATE, TICKS

GATE_CHECK = "ticks_quality_gate"
BARS_LIVE = dg.AssetKey("bars_live")


def validation_tables(iceberg: IcebergResource) -> ValidationTables:
    catalog = iceberg.catalog()
    return ValidationTables(
        raw=iceberg.ensure_table(RAW_TICKS, catalog),
        ticks=iceberg.ensure_table(TICKS, catalog),
        quarantine=iceberg.ensure_table(QUARANTINE, catalog),
        gaps=iceberg.ensure_table(SEQUENCE_GAPS, catalog),
        state=iceberg.ensure_table(SYMBOL_STATE, catalog),
        dq_results=iceberg.ensure_table(DQ_RESULTS, catalog),
    )


def _offsets_covered(result: PublishResult) -> str:
    return ", ".join(f"{r.topic}[{r.partition}] {r.start}..{r.stop - 1}" for r in result.ranges) or "none"


def materialization_metadata(result: PublishResult) -> dict[str, Any]:
    validation, sequences, gate = result.validation, result.sequences, result.gate
    published = result.ticks.rows_appended if result.ticks else 0
    quarantined = result.quarantine.rows_appended if result.quarantine else 0
    metadata: dict[str, Any] = {
        "rows_in": result.rows_in,
        "rows_published": published,
        "rows_quarantined": quarantined,
        "quarantined_by_reason": dg.MetadataValue.json(validation.quarantined_by_reason if validation else {}),
        "duplicates": validation.duplicates.height if validation else 0,
        "duplicates_by_kind": dg.MetadataValue.json(validation.duplicates_by_kind if validation else {}),
        "gaps_opened": sequences.gaps_opened if sequences else 0,
        "missing_sequences": sequences.missing_sequences if sequences else 0,
        "gaps_closed": sequences.gaps_closed if sequences else 0,
        "sequence_resets": sequences.resets if sequences else 0,
        "dead_letters": result.dead_letters,
        "ranges": dg.MetadataValue.json(ranges_to_config(result.ranges)),
        "kafka_offsets": dg.MetadataValue.text(_offsets_covered(result)),
        "batch": result.batch,
        "published": result.published,
        "snapshot_id": str(result.ticks.snapshot_id if result.ticks and result.published else None),
        "audit_snapshot_id": str(result.staged.snapshot_id if result.staged else None),
        "dq_pass_rate": round(gate.pass_rate, 4) if gate else 1.0,
        "state_pinned_at": dg.MetadataValue.json(result.pins),
        "seconds": round(result.seconds, 3),
        "seconds_by_step": dg.MetadataValue.json({k: round(v, 3) for k, v in result.timings.items()}),
    }
    if gate is not None and gate.docs_index is not None:
        metadata["data_docs"] = dg.MetadataValue.path(str(gate.docs_index))
    return metadata


def _md_table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| expectation | column | success | observed |", "|---|---|---|---|"]
    lines += [f"| {e} | {c} | {s} | `{o.replace('|', '/')}` |" for e, c, s, o in rows]
    return "\n".join(lines)


def gate_check_result(result: PublishResult) -> dg.AssetCheckResult:
    gate = result.gate
    if gate is None:
        reason = "no new raw rows" if not result.ranges else "nothing staged (main already had the batch)"
        return dg.AssetCheckResult(
            check_name=GATE_CHECK, passed=True, severity=dg.AssetCheckSeverity.ERROR, metadata={"skipped": reason}
        )
    failed = gate.failed
    shown = failed if failed else gate.expectations
    table = [(e.expectation, e.column or "", "yes" if e.success else "NO", e.observed) for e in shown]
    metadata: dict[str, Any] = {
        "suites": ", ".join(s.suite for s in gate.suites),
        "expectations": len(gate.expectations),
        "failed": len(failed),
        "pass_rate": round(gate.pass_rate, 4),
        "failed_expectations" if failed else "results": dg.MetadataValue.md(_md_table(table)),
        "parameters": dg.MetadataValue.json(json.loads(json.dumps(gate.parameters, default=str))),
        "audit_snapshot_id": str(result.staged.snapshot_id if result.staged else None),
        "batch": result.batch,
        "published_to_main": result.published,
        "seconds": round(gate.seconds, 3),
    }
    if gate.docs_index is not None:
        metadata["data_docs"] = dg.MetadataValue.path(str(gate.docs_index))
    return dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=gate.success,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None
        if gate.success
        else "blocked: main untouched; "
        + ", ".join(f"{e.expectation}({e.column}) observed {e.observed[:120]}" for e in failed),
    )


@dg.asset(
    group_name="ticks",
    deps=[dg.AssetKey("raw_ticks")],
    kinds={"polars", "iceberg", "greatexpectations"},
    description="Validated, deduplicated ticks. Each batch is staged on the `audit` branch, gated by the GE suites "
    "in quality_suites/ (ticks, ticks_batch) and published to main only if they pass; failing rows go to "
    "market_data.quarantine with reason codes, gaps to market_data.sequence_gaps, undecodable values also to "
    "the dead-letter topic.",
    check_specs=[
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset="validated_ticks",
            blocking=True,
            description="Great Expectations on exactly the staged batch (write-audit-publish); a failure leaves "
            "main untouched and blocks the bars.",
        )
    ],
)
def validated_ticks(
    context: dg.AssetExecutionContext,
    iceberg: IcebergResource,
    pipeline: PipelineResource,
    kafka: KafkaResource,
    quality: QualityResource,
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    config = quality.config(frozenset(pipeline.derivative_symbols))
    # bars_live runs next in this process when the batch publishes: the gate's Data Docs can be built meanwhile (it
    # waits for them). Any other way this step ends, it waits for them itself.
    bars_next = BARS_LIVE in context.job_def.asset_layer.selected_asset_keys
    config = dataclasses.replace(config, gate=dataclasses.replace(config.gate, defer_docs=bars_next))
    try:
        result = publish_validated(
            validation_tables(iceberg),
            batch_id=context.run_id,
            max_per_partition=pipeline.max_batch_per_partition,
            config=config,
            dead_letters=KafkaDeadLetters(kafka.bootstrap_servers, quality.dlq_topic),
        )
    except BaseException:
        dq_worker.wait_docs()
        raise
    if not result.published:
        dq_worker.wait_docs()
    if result.blocked:
        context.log.error(
            f"validated_ticks: batch {result.batch} failed the quality gate; main untouched "
            f"(audit snapshot {result.staged.snapshot_id if result.staged else None})"
        )
    return dg.MaterializeResult(metadata=materialization_metadata(result), check_results=[gate_check_result(result)])
