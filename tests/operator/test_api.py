"""The API as code: crds/ is generated from the pydantic models, documents every field, and keeps the
defaults a user of the hosted fine-tuning services expects."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from finetune_operator.api import KINDS, crdgen
from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.inferenceendpoint import InferenceEndpointSpec

REPO = Path(__file__).resolve().parents[2]


def load_crds() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))}


def test_crds_folder_is_what_the_generator_writes():
    differing = crdgen.generate(REPO, check=True)
    assert differing == [], f"crds/ is stale; run `make crds`: {[str(p.relative_to(REPO)) for p in differing]}"


def test_generator_check_notices_a_hand_edit(tmp_path):
    crdgen.generate(tmp_path)
    edited = tmp_path / "crds" / crdgen.file_name(KINDS[0])
    edited.write_text(edited.read_text().replace("minimum: 1", "minimum: 2", 1))
    assert crdgen.generate(tmp_path, check=True) == [edited]


def walk_properties(schema: dict, path: str = ""):
    for name, prop in schema.get("properties", {}).items():
        yield f"{path}.{name}", prop
        yield from walk_properties(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk_properties(schema["items"], f"{path}[]")


@pytest.mark.parametrize("crd_file", sorted(p.name for p in (REPO / "crds").glob("*.yaml")))
def test_every_field_has_a_description_and_a_structural_schema(crd_file):
    crd = load_crds()[crd_file]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [p for p, prop in walk_properties(schema) if p != ".metadata" and not prop.get("description")]
    assert missing == [], f"fields without description in {crd_file}: {missing}"
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "anyOf", "oneOf", "type: 'null'", "additionalProperties: false", "title:"):
        assert forbidden not in text, f"{forbidden} is not structural ({crd_file})"


def test_every_kind_has_status_subresource_category_short_names_and_columns():
    for kind in KINDS:
        crd = load_crds()[crdgen.file_name(kind)]
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert crd["spec"]["names"]["categories"] == ["finetune"]
        assert crd["spec"]["names"]["shortNames"]
        columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
        assert columns["Phase"]["jsonPath"] == ".status.phase"
        assert columns["Age"]["type"] == "date"
        for column in columns.values():
            if "conditions" in column["jsonPath"]:
                assert "@.type==" in column["jsonPath"], "conditions are picked by type, not by list position"


def spec_defaults(crd_file: str) -> dict:
    schema = load_crds()[crd_file]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]


def test_finetunejob_defaults_are_the_hosted_services_defaults():
    spec = FineTuneJobSpec.model_validate({"baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"}, "dataset": "chat"})
    assert spec.method == "lora"
    assert (spec.lora.r, spec.lora.alpha, spec.lora.target_modules) == (16, 32, ["all-linear"])
    assert spec.hyperparameters.epochs == 3
    assert spec.hyperparameters.batch_size == "auto"
    assert spec.hyperparameters.warmup_ratio == 0.03
    assert spec.hyperparameters.learning_rate is None  # resolved per method below
    assert spec.hyperparameters.effective_learning_rate(spec.method) == 1e-4
    assert spec.hyperparameters.effective_learning_rate("full") == 1e-5

    # The CRD carries the same defaults, so `kubectl get -o yaml` shows them.
    hp = spec_defaults("finetunejobs.finetune.dev.yaml")["properties"]["hyperparameters"]["properties"]
    assert hp["epochs"]["default"] == 3 and hp["batchSize"]["default"] == "auto" and hp["warmupRatio"]["default"] == 0.03


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"hyperparameters": {"epochs": 0}}, "hyperparameters.epochs"),
        ({"method": "dpo"}, "method"),
        ({"baseModel": {"uri": "ftp://x"}}, "baseModel.uri"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"numNodes": 0}, "numNodes"),
        ({"suffix": "Not_A_Label"}, "suffix"),
        ({"fromCheckpoint": "job:step-3"}, "fromCheckpoint"),
        ({"hyperparameters": {"batchSize": "max"}}, "hyperparameters.batchSize"),
        ({"unknownField": 1}, "unknownField"),
    ],
)
def test_bad_finetunejob_specs_name_the_field(patch, field):
    body = {"baseModel": {"uri": "hf://org/model"}, "dataset": "chat", **patch}
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate(body)
    locations = [".".join(str(p) for p in e["loc"] if not isinstance(p, int) or True) for e in info.value.errors()]
    assert any(loc.startswith(field) for loc in locations), locations


def test_crd_schema_carries_limits_and_cel_rules():
    spec = spec_defaults("finetunejobs.finetune.dev.yaml")
    props = spec["properties"]
    assert props["method"]["enum"] == ["lora", "qlora", "full"]
    assert props["numNodes"]["maximum"] == 64 and props["numNodes"]["minimum"] == 1
    assert props["suffix"]["maxLength"] == 40
    assert props["lora"]["properties"]["targetModules"]["maxItems"] == 64
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("oldSelf" in r and "baseModel" in r for r in rules), "baseModel must be immutable"
    assert any("validationDataset" in r and "validationSplit" in r for r in rules)


def test_inference_endpoint_defaults_to_cpu_and_one_replica():
    spec = InferenceEndpointSpec.model_validate({"baseModel": {"uri": "s3://models/tiny"}})
    assert spec.resources.gpus == 0 and spec.replicas.min == 1 and spec.replicas.max == 1
    assert spec.runtime is None  # resolved to builtin for CPU, vllm for GPUs
