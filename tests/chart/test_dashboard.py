"""The Grafana dashboard: valid JSON whose queries use only the metrics the operator, trainer and server export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART_DIR

DASHBOARD = CHART_DIR / "files" / "dashboards" / "finetune-operator.json"

HISTOGRAMS = {
    "finetune_reconcile_duration_seconds",
    "finetune_queue_wait_seconds",
    "finetune_server_request_duration_seconds",
    "finetune_server_time_to_first_token_seconds",
}
OTHER_METRICS = {
    "finetune_objects",
    "finetune_phase_transitions_total",
    "finetune_trainer_train_loss",
    "finetune_trainer_tokens_per_second",
}
EXPORTED = HISTOGRAMS | OTHER_METRICS | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}


def metric_names(expression: str) -> set[str]:
    """Metric names in a PromQL expression (every finetune_ identifier; label values are quoted and skipped)."""
    unquoted = re.sub(r'"[^"]*"', '""', expression)
    return set(re.findall(r"\bfinetune_[a-z0-9_]+\b", unquoted))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(panel.get("title", ""), target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]
    found += [
        (f"variable {v['name']}", v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", ""))
        for v in dashboard.get("templating", {}).get("list", [])
        if v.get("type") == "query"
    ]
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_queries_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    for where, expression in queries(dashboard):
        used = metric_names(expression)
        assert used, f"{where}: {expression!r} uses no finetune metric"
        assert used <= EXPORTED, f"{where}: unknown metrics {sorted(used - EXPORTED)}"
        for name in used:
            if name.endswith("_bucket"):
                assert "histogram_quantile" in expression, f"{where}: buckets outside histogram_quantile"


def test_dashboard_covers_jobs_queue_training_and_endpoints(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(expression) for _, expression in queries(dashboard)))
    base_names = {re.sub(r"_(bucket|sum|count)$", "", name) if name.endswith(("_bucket", "_sum", "_count")) else name for name in used}
    assert base_names >= HISTOGRAMS | OTHER_METRICS


def test_metric_name_extraction_ignores_label_values() -> None:
    assert metric_names('sum(finetune_objects{kind="finetune_fake"})') == {"finetune_objects"}


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "finetune-operator" and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", "panels follow the data source picker"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for _, expression in queries(dashboard):
        for variable in re.findall(r"\$(\w+)", expression):
            assert variable in variables | {"__rate_interval", "__interval", "__range"}, variable


def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query (Grafana's variables filled in) as a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make tools installs it)")
    rules = []
    for index, (_, expression) in enumerate(queries(dashboard)):
        if expression.startswith("label_values("):
            continue  # Grafana's own function, not PromQL
        filled = expression.replace("$__rate_interval", "5m").replace("$namespace", ".*")
        rules.append({"record": f"dashboard:query_{index}", "expr": filled})
    rules_file = tmp_path / "dashboard-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
