"""Running the Great Expectations 1.x suites of `quality_suites/` directly (dagster-ge supports only GE < 1).

GE is imported lazily (the import takes seconds) and used through an ephemeral context built per run: suites come
from the versioned JSON files, validation results go to a filesystem store under <K2_HOME>/data_docs/.results so
the Data Docs index at <K2_HOME>/data_docs/index.html lists every run, not only the last one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from k2_resources.errors import QualityGateError

SUITES_DIR = Path(__file__).resolve().parents[2] / "quality_suites"
DOCS_SITE = "k2"
_MAX_OBSERVED = 2_000  # characters of an observed value kept in dq_results and Dagster metadata


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    observed: str  # JSON: the observed value, or the unexpected count, percentage and a sample
    element_count: int | None
    unexpected_count: int | None
    kwargs: str  # JSON of the expectation's arguments (parameters substituted)


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str  # name@version
    success: bool
    expectations: tuple[ExpectationOutcome, ...]
    seconds: float
    docs_index: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(e for e in self.expectations if not e.success)

    @property
    def pass_rate(self) -> float:
        return sum(e.success for e in self.expectations) / len(self.expectations) if self.expectations else 1.0


def load_suite(name: str, suites_dir: Path = SUITES_DIR) -> dict[str, Any]:
    path = suites_dir / f"{name}.json"
    try:
        suite: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QualityGateError(f"cannot load the GE suite {path}: {exc}; suites live in quality_suites/") from exc
    if suite.get("name") != name or not suite.get("expectations"):
        raise QualityGateError(f"{path}: a suite needs name {name!r} and a non-empty expectations list")
    return suite


def _context(docs_dir: Path | None):  # type: ignore[no-untyped-def]
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    if docs_dir is not None:
        config.stores["validation_results_store"] = {
            "class_name": "ValidationResultsStore",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir / ".results"),
            },
        }
        config.data_docs_sites = {
            DOCS_SITE: {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "validation_results_limit": 500},
            }
        }
    return gx.get_context(project_config=config, mode="ephemeral")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _observed(result: Mapping[str, Any]) -> str:
    if "observed_value" in result:
        payload: Any = result["observed_value"]
    else:
        payload = {
            "unexpected_count": result.get("unexpected_count"),
            "unexpected_percent": result.get("unexpected_percent"),
            "sample": list(result.get("partial_unexpected_list") or [])[:5],
        }
    return json.dumps(_jsonable(payload), default=str)[:_MAX_OBSERVED]


def _column_of(kwargs: Mapping[str, Any]) -> str | None:
    for key in ("column", "column_list", "column_set"):
        if key in kwargs:
            value = kwargs[key]
            return value if isinstance(value, str) else ",".join(map(str, value))
    if "column_A" in kwargs:
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    return None


# Building a GE context and registering a suite costs ~2 s; a checkpoint is reused for every batch of the process.
# Keyed by the suite's full spec, so an edited suite file gets a checkpoint of its own. The checkpoint has no
# actions: Data Docs are built by `validate_here`, at once or (in the GE worker) after the results went back.
_CHECKPOINTS: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_CHECKPOINTS_LOCK = threading.Lock()
_PREWARMS: dict[tuple[tuple[str, ...], str, str], threading.Thread] = {}


def checkpoint_for(name: str, spec: Mapping[str, Any], docs_dir: Path | None) -> tuple[Any, Any]:
    """(checkpoint, its GE context) of this suite, built once per process."""
    key = (name, json.dumps(spec, sort_keys=True, default=str), str(docs_dir))
    with _CHECKPOINTS_LOCK:
        cached = _CHECKPOINTS.get(key)
        if cached is not None:
            return cached
        import great_expectations as gx

        context = _context(docs_dir)
        suite = context.suites.add(
            gx.ExpectationSuite(name=name, expectations=spec["expectations"], meta=spec.get("meta", {}))
        )
        asset = context.data_sources.add_pandas("k2").add_dataframe_asset(name)
        batch = asset.add_batch_definition_whole_dataframe("batch")
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[definition], actions=[]))
        _CHECKPOINTS[key] = (checkpoint, context)
        return checkpoint, context


def prewarm(names: Sequence[str], docs_dir: Path | None, suites_dir: Path = SUITES_DIR) -> None:
    """Get GE imported and these suites' checkpoints built before a step runs them (importing GE and building a
    context take ~2.5 s). In the GE worker process (dq_worker) when it can start, so the import runs on the other
    core; otherwise in a background thread of this process. A failure here is left for run_suite to raise."""
    from k2_assets.serving import dq_worker

    try:
        dq_worker.start(tuple(names), docs_dir, suites_dir)
        return
    except OSError:  # no worker process possible here: warm this process instead
        pass

    def build() -> None:
        for name in names:
            with contextlib.suppress(Exception):
                checkpoint_for(name, load_suite(name, suites_dir), docs_dir)

    key = (tuple(names), str(docs_dir), str(suites_dir))
    with _CHECKPOINTS_LOCK:
        if key not in _PREWARMS:  # once per process: a retried commit asks again
            _PREWARMS[key] = threading.Thread(target=build, name="ge-prewarm", daemon=True)
            _PREWARMS[key].start()


def run_suite(
    name: str,
    frame: pd.DataFrame,
    parameters: Mapping[str, Any] | None = None,
    *,
    run_name: str,
    docs_dir: Path | None = None,
    suites_dir: Path = SUITES_DIR,
    defer_docs: bool = False,
) -> SuiteOutcome:
    """Validate `frame` against quality_suites/<name>.json; build Data Docs under `docs_dir` if given.

    In the GE worker process when `prewarm` started one, else here. `defer_docs`: with the worker, return once the
    results are stored and let it build the Data Docs meanwhile; dq_worker.wait_docs() waits for them."""
    return submit_suite(
        name, frame, parameters, run_name=run_name, docs_dir=docs_dir, suites_dir=suites_dir, defer_docs=defer_docs
    )()


def submit_suite(
    name: str,
    frame: pd.DataFrame,
    parameters: Mapping[str, Any] | None = None,
    *,
    run_name: str,
    docs_dir: Path | None = None,
    suites_dir: Path = SUITES_DIR,
    defer_docs: bool = False,
) -> Callable[[], SuiteOutcome]:
    """run_suite, started: the returned function waits for the outcome. With the GE worker the caller can work
    meanwhile; without it the suite has already run here."""
    from k2_assets.serving import dq_worker

    worker = dq_worker.current()
    if worker is not None:
        request = {"name": name, "frame": frame, "parameters": dict(parameters or {}), "run_name": run_name}
        pending: Callable[[], SuiteOutcome] = worker.submit(
            {**request, "docs_dir": docs_dir, "suites_dir": suites_dir, "defer_docs": defer_docs}
        )
        return pending
    outcome, _ = validate_here(name, frame, parameters, run_name=run_name, docs_dir=docs_dir, suites_dir=suites_dir)
    return lambda: outcome


def validate_here(
    name: str,
    frame: pd.DataFrame,
    parameters: Mapping[str, Any] | None = None,
    *,
    run_name: str,
    docs_dir: Path | None = None,
    suites_dir: Path = SUITES_DIR,
    docs_now: bool = True,
) -> tuple[SuiteOutcome, Callable[[], None]]:
    """run_suite in this process: the outcome (results stored) and the Data Docs build, done already if `docs_now`."""
    started = time.perf_counter()
    spec = load_suite(name, suites_dir)
    version = str(spec.get("meta", {}).get("version", "0"))
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    try:
        checkpoint, context = checkpoint_for(name, spec, docs_dir)
        result = checkpoint.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=dict(parameters or {}),
            run_id=RunIdentifier(run_name=run_name),
        )
    except Exception as exc:  # GE raises many untyped errors: one typed error with the cause
        raise QualityGateError(f"running the GE suite {name!r} failed: {type(exc).__name__}: {exc}") from exc

    def build_docs() -> None:
        # What GE's UpdateDataDocsAction does: the pages of this run's results and suite, then the index.
        if docs_dir is None:
            return
        for key, validation in result.run_results.items():
            context.build_data_docs(
                site_names=[DOCS_SITE],
                resource_identifiers=[key, ExpectationSuiteIdentifier(name=validation.suite_name)],
                dry_run=False,
                build_index=True,
            )

    if docs_now:
        try:
            build_docs()
        except Exception as exc:  # typed, as a failed action would have been
            raise QualityGateError(f"Data Docs of the GE suite {name!r} failed: {type(exc).__name__}: {exc}") from exc
    outcomes = []
    for validation in result.run_results.values():
        for item in validation.results:
            config = item.expectation_config
            kwargs = {k: v for k, v in (config.kwargs if config else {}).items() if k != "batch_id"}
            outcome = dict(item.result or {})
            if item.exception_info and item.exception_info.get("raised_exception"):
                outcome = {"observed_value": {"exception": item.exception_info.get("exception_message")}}
            outcomes.append(
                ExpectationOutcome(
                    expectation=config.type if config else "?",
                    column=_column_of(kwargs),
                    success=bool(item.success),
                    observed=_observed(outcome),
                    element_count=outcome.get("element_count"),
                    unexpected_count=outcome.get("unexpected_count"),
                    kwargs=json.dumps(_jsonable(kwargs), default=str)[:_MAX_OBSERVED],
                )
            )
    suite_outcome = SuiteOutcome(
        suite=f"{name}@{version}",
        success=bool(result.success),
        expectations=tuple(outcomes),
        seconds=time.perf_counter() - started,
        docs_index=(docs_dir / "index.html") if docs_dir else None,
        parameters=dict(parameters or {}),
    )
    return suite_outcome, build_docs
