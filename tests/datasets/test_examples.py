"""The example datasets under deploy/examples/datasets are valid, and so are the Datasets that name them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finetune_operator.api.dataset import DatasetSpec
from finetune_trainer.data.validate import CheckOptions, check_file

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "datasets"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))


def test_there_is_a_chat_and_an_instruction_example():
    formats = {yaml.safe_load(m.read_text())["spec"]["format"] for m in MANIFESTS}
    assert {"chat", "instruction"} <= formats


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_an_example_dataset_passes_the_check_its_dataset_asks_for(manifest: Path):
    dataset = yaml.safe_load(manifest.read_text())
    spec = DatasetSpec.model_validate(dataset["spec"])
    assert (dataset["apiVersion"], dataset["kind"]) == ("finetune.dev/v1alpha1", "Dataset")

    data = EXAMPLES / spec.source.uri.rsplit("/", 1)[1]
    report = check_file(data, CheckOptions(format=spec.format, min_samples=spec.min_samples))

    assert report.is_check_passed, report.errors
    assert report.format == spec.format and report.num_samples >= 20


def test_the_readme_lists_every_rule():
    from finetune_trainer.data.validate import RULES

    readme = (EXAMPLES / "README.md").read_text()
    assert [rule for rule in RULES if f"| `{rule}` |" not in readme] == []
