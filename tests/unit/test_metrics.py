"""Metrics: figures shared across processes, histogram exposition, and dashboards/alerts that only name metrics K2
exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from k2.serving.metrics import LakehouseCollector, build_registry
from k2_resources.env import Settings
from k2_resources.metrics import FIGURES, FigureStore

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "infra" / "grafana" / "dashboards").glob("*.json"))
METRIC = re.compile(r"\bk2_[a-z0-9_]+\b")


def exported_names(settings: Settings) -> set[str]:
    """Every sample name the endpoint emits a TYPE for (histograms as _bucket/_sum/_count)."""
    registry = build_registry(settings, live=False)
    registry.register(LakehouseCollector(settings, kafka_timeout_s=0.5))
    text = generate_latest(registry).decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)  # a counter's TYPE line already carries its _total name
    return names


def test_figures_recorded_by_separate_processes_add_up(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from k2_resources.metrics import FigureStore\n"
        "s = FigureStore(Path(sys.argv[1]))\n"
        "s.inc('k2_asset_runs', asset='raw_ticks', outcome='success')\n"
        "s.observe('k2_query_duration_seconds', [0.004, 0.03], action='ticks')\n"
        "s.flush()\n"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=REPO)
    store = FigureStore(tmp_path)
    store.inc("k2_asset_runs", asset="raw_ticks", outcome="success")
    store.observe("k2_query_duration_seconds", 400.0, action="ticks")
    store.flush()
    state = store.read()
    assert state["k2_asset_runs"] == {'["raw_ticks", "success"]': 3.0}
    histogram = state["k2_query_duration_seconds"]['["ticks"]']
    assert (histogram["count"], round(histogram["sum"], 3)) == (5, 400.068)


def test_histograms_are_exposed_with_cumulative_buckets(offline_lakehouse: Settings) -> None:
    store = FigureStore(offline_lakehouse.serving.metrics_dir)  # type: ignore[arg-type]
    store.observe("k2_query_duration_seconds", [0.004, 0.03, 400.0], action="bars")
    store.flush()
    text = generate_latest(build_registry(offline_lakehouse, live=False)).decode()
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "k2_query_duration_seconds"
        for s in family.samples
    }
    assert samples["k2_query_duration_seconds_bucket", "0.005"] == 1
    assert samples["k2_query_duration_seconds_bucket", "0.05"] == 2
    assert samples["k2_query_duration_seconds_bucket", "300.0"] == 2
    assert samples["k2_query_duration_seconds_bucket", "+Inf"] == 3
    assert samples["k2_query_duration_seconds_count", None] == 3


def test_undeclared_figures_and_wrong_labels_are_refused(tmp_path: Path) -> None:
    store = FigureStore(tmp_path)
    for bad in (lambda: store.inc("k2_nope"), lambda: store.inc("k2_asset_runs", asset="x")):
        try:
            bad()
        except KeyError:
            continue
        raise AssertionError("accepted an undeclared figure or label set")


def test_every_dashboard_panel_queries_metrics_the_code_exports(offline_lakehouse: Settings) -> None:
    exported = exported_names(offline_lakehouse)
    assert {p.stem for p in DASHBOARDS} == {"ingestion-health", "storage-health", "query-performance"}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["panels"], path
        for panel in dashboard["panels"]:
            exprs = [t["expr"] for t in panel["targets"]]
            named = {m for e in exprs for m in METRIC.findall(e)}
            assert named, f"{path.name}: panel {panel['title']!r} queries no K2 metric"
            unknown = named - exported
            assert not unknown, f"{path.name}: panel {panel['title']!r} queries {unknown}, which K2 does not export"


def test_alert_rules_and_scrape_config_match_the_endpoint(offline_lakehouse: Settings) -> None:
    exported = exported_names(offline_lakehouse)
    rules = yaml.safe_load((REPO / "infra" / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    for expr in exprs:
        assert set(METRIC.findall(expr)) <= exported, expr
    scrape = yaml.safe_load((REPO / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"127.0.0.1:{offline_lakehouse.serving.metrics_port}"]


def test_every_declared_figure_is_exported(offline_lakehouse: Settings) -> None:
    exported = exported_names(offline_lakehouse)
    for name, spec in FIGURES.items():
        sample = {"counter": f"{name}_total", "histogram": f"{name}_bucket"}.get(spec.kind, name)
        assert sample in exported, name
