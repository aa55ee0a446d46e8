"""docs/install.md stays true: its values file installs, its configuration table matches values.yaml, and the
files it tells people to apply exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART_DIR, REPO_ROOT, render_chart
from tests.chart.pod_security import check_restricted, pod_spec_of
from tests.chart.test_chart import _keys_with_their_comments

INSTALL_MD = REPO_ROOT / "docs" / "install.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", INSTALL_MD.read_text(), re.S)


def test_the_production_values_file_in_the_guide_installs_cleanly() -> None:
    (values_text,) = [block for block in code_blocks("yaml") if block.startswith("# values-prod.yaml")]
    values = yaml.safe_load(values_text)
    rendered = render_chart(values)
    config = rendered.one("ConfigMap", "ft-finetune-operator-config")["data"]
    assert config["FINETUNE_STORAGE_BUCKET"] == "acme-finetune-artifacts"
    assert set(json.loads(config["FINETUNE_GPU_TYPES"])) == {"a100-80gb", "h100-80gb"}
    assert rendered.of_kind("ServiceMonitor") and rendered.of_kind("PodMonitor")
    for obj in rendered.objects:
        pod = pod_spec_of(obj)
        if pod is not None:
            assert check_restricted(pod) == []


def _value_at(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("document", [INSTALL_MD, CHART_DIR / "README.md"], ids=["docs/install.md", "chart README"])
def test_configuration_table_lists_every_value_with_its_default(document: Path) -> None:
    rows = dict(re.findall(r"^\| `([A-Za-z0-9_.]+)` \| `(.*?)` \|", document.read_text(), re.M))
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    documented = [key for key, comments in _keys_with_their_comments(CHART_DIR / "values.yaml") if any(c.startswith("# --") for c in comments)]
    missing = [key for key in documented if key not in rows]
    assert missing == [], f"values missing from the configuration table in {document.name}"
    for key in documented:
        default = _value_at(values, key)
        shown = json.dumps(default) if (not isinstance(default, str) or default == "") else default
        assert rows[key] == shown, f"{key}: docs say {rows[key]}, values.yaml says {shown}"


def test_paths_the_guide_names_exist() -> None:
    text = INSTALL_MD.read_text()
    named = set(re.findall(r"\b((?:deploy|charts|crds)/[A-Za-z0-9_./-]+[A-Za-z0-9_])", text))
    named |= set(re.findall(r"\b(Dockerfile\.\w+)", text))
    assert len(named) > 10
    missing = sorted(path for path in named if not (REPO_ROOT / path).exists())
    assert missing == []


def test_the_readmes_operator_settings_are_every_setting_the_operator_reads() -> None:
    """The README's table of FINETUNE_* variables: each setting once, with the default and meaning the code has."""
    from finetune_operator.config import env_table

    readme = (REPO_ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(FINETUNE_[A-Z_]+)` \| (.*?) \| (.*) \|$", readme, re.M)
    expected = [(name, f"`{default}`" if default else "(empty)", meaning) for name, default, meaning in env_table()]
    assert rows == expected
