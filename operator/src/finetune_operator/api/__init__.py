"""The API of the four kinds as pydantic models: the single source of truth for crds/.

``KINDS`` lists each kind with its names, its spec and status models and its printer columns;
``finetune_operator.api.crdgen`` turns it into CustomResourceDefinitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

from finetune_operator.api import dataset, evaluation, finetunejob, inferenceendpoint
from finetune_operator.api.common import API_VERSION, CATEGORY, GROUP, VERSION, ApiModel


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: list[str]
    spec: type[ApiModel]
    status: type[ApiModel]
    description: str
    printer_columns: list[dict] = field(default_factory=list)
    max_name_length: int = 52
    """Names are limited so children (`<name>-train`, `<name>-validate-<hash>`) fit in 63 characters."""

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def gvr(self) -> tuple[str, str, str]:
        """(group, version, plural), as kopf's handler decorators take them."""
        return (GROUP, VERSION, self.plural)


def _condition_column(name: str, type_: str, priority: int = 0) -> dict:
    return {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{type_}")].status',
        "priority": priority,
        "description": f"status of the {type_} condition",
    }


def _describe(module: ModuleType) -> str:
    """The module docstring's paragraphs, each on one line (kubectl explain wraps them)."""
    paragraphs = (module.__doc__ or "").strip().split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs).replace("``", "`")


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

FINETUNEJOB = Kind(
    kind=finetunejob.KIND,
    plural=finetunejob.PLURAL,
    singular=finetunejob.SINGULAR,
    short_names=finetunejob.SHORT_NAMES,
    spec=finetunejob.FineTuneJobSpec,
    status=finetunejob.FineTuneJobStatus,
    description=_describe(finetunejob),
    printer_columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "phase of the job"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary", "description": "steps done"},
        {"name": "Model", "type": "string", "jsonPath": ".status.outputModel.name", "description": "the fine-tuned model"},
        _condition_column("Succeeded", "Succeeded", priority=1),
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.trainLoss", "priority": 1, "description": "latest training loss"},
        {"name": "ETA", "type": "integer", "jsonPath": ".status.progress.etaSeconds", "priority": 1, "description": "seconds left, estimated"},
        _AGE,
    ],
)

DATASET = Kind(
    kind=dataset.KIND,
    plural=dataset.PLURAL,
    singular=dataset.SINGULAR,
    short_names=dataset.SHORT_NAMES,
    spec=dataset.DatasetSpec,
    status=dataset.DatasetStatus,
    description=_describe(dataset),
    printer_columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "phase of the dataset"},
        {"name": "Samples", "type": "integer", "jsonPath": ".status.numSamples", "description": "examples in the file"},
        {"name": "Format", "type": "string", "jsonPath": ".status.format", "description": "format of the file"},
        _condition_column("Ready", "Ready", priority=1),
        {"name": "SHA256", "type": "string", "jsonPath": ".status.sha256", "priority": 1, "description": "hash of the file"},
        _AGE,
    ],
)

INFERENCEENDPOINT = Kind(
    kind=inferenceendpoint.KIND,
    plural=inferenceendpoint.PLURAL,
    singular=inferenceendpoint.SINGULAR,
    short_names=inferenceendpoint.SHORT_NAMES,
    spec=inferenceendpoint.InferenceEndpointSpec,
    status=inferenceendpoint.InferenceEndpointStatus,
    description=_describe(inferenceendpoint),
    printer_columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "phase of the endpoint"},
        _condition_column("Ready", "Ready"),
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "ready replicas"},
        {"name": "Model", "type": "string", "jsonPath": ".spec.baseModel.uri", "description": "base model"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1, "description": "API URL in the cluster"},
        _AGE,
    ],
)

EVALUATION = Kind(
    kind=evaluation.KIND,
    plural=evaluation.PLURAL,
    singular=evaluation.SINGULAR,
    short_names=evaluation.SHORT_NAMES,
    spec=evaluation.EvaluationSpec,
    status=evaluation.EvaluationStatus,
    description=_describe(evaluation),
    printer_columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "phase of the evaluation"},
        {"name": "Score", "type": "string", "jsonPath": ".status.headline", "description": "headline score and delta"},
        _condition_column("Passed", "Passed"),
        {"name": "Dataset", "type": "string", "jsonPath": ".spec.dataset", "priority": 1, "description": "dataset evaluated on"},
        _AGE,
    ],
)

KINDS: list[Kind] = [DATASET, FINETUNEJOB, EVALUATION, INFERENCEENDPOINT]
BY_KIND: dict[str, Kind] = {k.kind: k for k in KINDS}

__all__ = ["API_VERSION", "BY_KIND", "CATEGORY", "DATASET", "EVALUATION", "FINETUNEJOB", "GROUP", "INFERENCEENDPOINT", "KINDS", "Kind", "VERSION"]
