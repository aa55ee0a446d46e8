"""Every field a user sets in a FineTuneJob's spec reaches the trainer's config, or is one the operator itself
acts on (listed, with what it does, in ``manifests.trainer_job.SPEC_FIELDS_FOR_THE_OPERATOR``). A field that
is dropped on the way (a forgotten copy) fails here instead of being silently ignored."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests.trainer_job import SPEC_FIELDS_FOR_THE_OPERATOR, TrainerInputs, trainer_config
from finetune_trainer import contract

CONFIG = OperatorConfig(trainer_image="trainer:1", storage_endpoint="minio:9000", storage_bucket="ft")
BASE = {"baseModel": {"uri": "hf://org/base"}, "dataset": "chats"}
INPUTS = TrainerInputs(train_data=["s3://ft/d/train.jsonl"], artifacts_uri="s3://ft/jobs/ns/j-1", output_model_name="ns/base:j")
# Values for the fields whose type alone does not say what a valid other value is.
CHOSEN: dict[str, Any] = {
    "baseModel.uri": "s3://models/other",
    "lora.targetModules": ["q_proj", "v_proj"],
    "hyperparameters.batchSize": 8,
    "validationSplit": 0.2,
}


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(camelCase path, annotation, FieldInfo) of every leaf field of ``model``."""
    out = []
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        inner = nested_model(info.annotation)
        if inner is not None:
            out += leaf_fields(inner, path + ".")
        else:
            out.append((path, info.annotation, info))
    return out


def nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else None
    return None


def another_value(path: str, annotation: Any, info: Any) -> Any:
    """A valid value that is not the field's default."""
    if path in CHOSEN:
        return CHOSEN[path]
    default = info.get_default(call_default_factory=True)
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is Literal:
        return next(v for v in typing.get_args(annotation) if v != default)
    kind = args[0]
    bounds = {type(m): m for m in info.metadata}
    low = next((getattr(bounds[t], n) for t, n in ((Ge, "ge"), (Gt, "gt")) if t in bounds), 0)
    high = next((getattr(bounds[t], n) for t, n in ((Le, "le"), (Lt, "lt")) if t in bounds), None)
    if kind is bool:
        return not default
    if kind is int:
        value = (default if isinstance(default, int) else low) + 1
        return value if high is None or value <= high else low
    if kind is float:
        value = (default or low or 0.0) / 2 if default else (low + (high if high is not None else 1)) / 2
        return value or 0.1
    raise AssertionError(f"no value for {path} ({annotation}): add it to CHOSEN")


def config_json(spec: dict) -> dict:
    return trainer_config("j", "ns", FineTuneJobSpec.model_validate(spec), INPUTS, CONFIG).model_dump(mode="json")


def set_path(spec: dict, path: str, value: Any) -> dict:
    out = {**spec}
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[parts[-1]] = value
    return out


def test_every_spec_field_reaches_the_trainer_config_or_is_the_operators():
    reference = config_json(BASE)
    for path, annotation, info in leaf_fields(FineTuneJobSpec):
        if path in SPEC_FIELDS_FOR_THE_OPERATOR or path.startswith("baseModel.secretRef"):
            continue
        spec = set_path(BASE, path, another_value(path, annotation, info))
        assert config_json(spec) != reference, f"spec.{path} does not reach the trainer's config"


def test_the_operator_only_list_names_real_fields():
    paths = {path for path, _, _ in leaf_fields(FineTuneJobSpec)}
    stale = [p for p in SPEC_FIELDS_FOR_THE_OPERATOR if p not in paths and not any(x.startswith(p + ".") for x in paths)]
    assert stale == []


def test_a_training_option_is_one_definition_with_the_same_limits_on_both_sides():
    """The API's hyperparameters are the contract's fields themselves (what the CRD schema and the trainer check)."""
    from finetune_operator.api.finetunejob import DpoSpec, Hyperparameters, LoraSpec

    for name, field in contract.TrainingOptions.model_fields.items():
        assert Hyperparameters.model_fields[name].metadata == field.metadata, name
        assert Hyperparameters.model_fields[name].default == field.default, name
    for name, field in contract.DpoOptions.model_fields.items():
        assert (DpoSpec.model_fields[name].metadata, DpoSpec.model_fields[name].default) == (field.metadata, field.default), name
    assert set(DpoSpec.model_fields) == set(contract.DpoOptions.model_fields)
    for name in contract.LoraOptions.model_fields:
        assert LoraSpec.model_fields[name].metadata == contract.LoraConfig.model_fields[name].metadata, name
    assert set(contract.Hyperparameters.model_fields) - set(Hyperparameters.model_fields) == {"max_grad_norm", "max_steps"}, (
        "trainer-only knobs, not part of the API"
    )
