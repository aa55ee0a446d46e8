"""The objects ``create`` commands write, built from the API models (the single source of truth), so a bad
flag is refused here with the field's name and rule, and what is applied is what a user would apply."""

from __future__ import annotations

from typing import Any

from finetune_operator.api import BY_KIND
from finetune_operator.api.common import API_VERSION
from finetune_operator.cli.base import EXIT_USAGE, CliError


def _location(loc: tuple[Any, ...]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def build(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``{apiVersion, kind, metadata, spec}`` with the spec checked by the kind's pydantic model and the checks
    the operator makes that need no cluster configuration; the first problems in one line (exit 2)."""
    import re

    from pydantic import ValidationError

    from finetune_operator.api.common import DNS_SUBDOMAIN
    from finetune_operator.config import OperatorConfig

    model = BY_KIND[kind]
    if len(name) > model.max_name_length or not re.match(DNS_SUBDOMAIN, name):
        raise CliError(
            f"name {name!r}: must be at most {model.max_name_length} lowercase letters, digits, '-' or '.', starting and ending "
            "with a letter or digit",
            EXIT_USAGE,
        )
    try:
        checked = model.spec.model_validate(spec)
    except ValidationError as e:
        problems = "; ".join(f"{_location(err['loc'])}: {err['msg']}" for err in e.errors()[:3])
        raise CliError(f"invalid {kind}: {problems}", EXIT_USAGE) from None
    problems: list[str] = []
    if kind == "FineTuneJob":
        from finetune_operator.api.finetunejob import spec_problems

        problems = spec_problems(checked, OperatorConfig(), name)
    elif kind == "Evaluation":
        from finetune_operator.api.evaluation import spec_problems

        problems = spec_problems(checked, OperatorConfig())
    elif kind == "InferenceEndpoint":
        problems = endpoint_problems(name, checked)
    problems = [p for p in problems if "gpuType" not in p]  # the cluster's GPU types are the operator's to judge
    if problems:
        raise CliError(f"invalid {kind}: {'; '.join(problems[:3])}", EXIT_USAGE)
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": checked.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True),
    }


def endpoint_problems(name: str, spec: Any) -> list[str]:
    """The InferenceEndpoint's CEL rules (the pydantic model leaves them to the API server), said before it is sent."""
    problems = []
    if spec.runtime == "vllm" and spec.resources.gpus == 0:
        problems.append("spec.runtime: runtime vllm needs GPUs (resources.gpus > 0); use runtime builtin on CPU")
    names = [a.name for a in spec.adapters]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"spec.adapters: adapter names must be unique ({', '.join(repeated)} repeated)")
    base = spec.served_model_name or name
    if base in names:
        problems.append(f"spec.adapters: {base!r} is the base model's served name; give the adapter another name")
    for i, adapter in enumerate(spec.adapters):
        if (adapter.fine_tune_job is None) == (adapter.uri is None):
            problems.append(f"spec.adapters[{i}]: set exactly one of fineTuneJob and uri")
    return problems
