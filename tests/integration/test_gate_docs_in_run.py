"""An ingest run that publishes lets the GE worker build the ticks gate's Data Docs while the bars are computed, and
still ends with every suite's Data Docs of the run written (the compliance report)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from k2_assets.serving import dq_worker
from k2_resources.env import Settings
from tests.integration.helpers import produce, run


def test_a_published_run_ends_with_the_data_docs_of_all_its_gates(
    lakehouse: Settings, dagster_instance: dg.DagsterInstance
) -> None:
    produce(lakehouse, 3_000, seed=21)
    summary = run(lakehouse, dagster_instance)
    worker = dq_worker.current()
    assert worker is not None and worker.alive()  # the gates ran in the GE worker
    assert worker._owed == []  # nothing left building when the run ended
    docs = Path(lakehouse.home) / "data_docs"
    for run_id in summary.run_ids:
        pages = {p.parts[len(docs.parts)] + "/" + p.parts[len(docs.parts) + 1] for p in docs.rglob(f"*{run_id}*")}
        assert {"validations/ticks", "validations/ticks_batch"} <= pages, pages
    assert (docs / "index.html").exists()
