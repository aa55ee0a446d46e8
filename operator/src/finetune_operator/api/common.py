"""Types shared by the four kinds: the base model class, conditions, references, resources.

Every field carries a description that starts with its JSON name; the CRD generator copies these into
the CRD schema, so ``kubectl explain`` shows them. Fields default to ``None`` where the user may leave
them out; ``None`` never reaches the API server (models are dumped with ``exclude_none``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "finetune"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
MODEL_URI = r"^(hf|s3|pvc)://[^\s]+$"


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry (a CEL rule the API server checks)."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def immutable(field: str) -> dict[str, str]:
    """A transition rule on the parent: ``field`` may not change, be added or be removed after creation."""
    return cel(
        f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})",
        f"{field} is immutable",
        field_path=f".{field}",
    )


class ApiModel(BaseModel):
    """Base of every API type: camelCase JSON, snake_case Python, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    # Extra schema entries the CRD generator puts on the object schema (CEL rules and the like).
    crd_extra: ClassVar[dict[str, Any]] = {}

    def dump(self) -> dict[str, Any]:
        """JSON-ready dict with camelCase keys and without unset (None) fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """The state of one aspect of an object, in the shape of metav1.Condition."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    type: str = Field(description="type of condition in CamelCase, e.g. Ready, Succeeded, Failed.", max_length=316)
    status: ConditionStatus = Field(description="status of the condition: True, False or Unknown.")
    reason: str = Field(
        default="Unknown",
        description="reason is a machine-readable CamelCase word for the condition's last transition; "
        "each condition type documents its reasons.",
        max_length=1024,
    )
    message: str = Field(default="", description="message is a human-readable explanation of the last transition.", max_length=32768)
    last_transition_time: dt.datetime | None = Field(
        default=None, description="lastTransitionTime is when the condition last changed status (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="observedGeneration is the metadata.generation the condition was set for."
    )


CONDITIONS_SCHEMA_EXTRA = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


def conditions_field() -> Any:
    return Field(
        default_factory=list,
        max_length=16,
        description="conditions are the latest observations of the object's state, one per type. The phase is "
        "derived from them.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )


class SecretKeyRef(ApiModel):
    """A Secret in the object's own namespace. Its content is mounted as files, never copied."""

    name: str = Field(description="name of the Secret in the same namespace.", max_length=253, pattern=DNS_SUBDOMAIN)
    key: str | None = Field(
        default=None,
        description="key within the Secret. Defaults depend on the use: `token` for a Hugging Face token, "
        "`apiKey` for an API key; object store credentials use the keys accessKey and secretKey.",
        max_length=253,
    )


class BaseModelRef(ApiModel):
    """Where the base model's weights come from."""

    uri: str = Field(
        description="uri of the base model: hf://org/name[@revision] (Hugging Face Hub), s3://bucket/prefix "
        "(a folder in the object store) or pvc://claim/path (a PersistentVolumeClaim in the same namespace). "
        "Immutable.",
        max_length=1024,
        pattern=MODEL_URI,
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="secretRef names a Secret with credentials for the source: a Hugging Face token (key "
        "`token`) for hf://, object store keys for s3:// when they differ from the operator's.",
    )


class GpuResources(ApiModel):
    """Compute resources of one node (FineTuneJob) or one replica (InferenceEndpoint)."""

    gpus: int = Field(
        default=1,
        ge=0,
        le=16,
        description="gpus per node (or per replica): the count of the operator's GPU resource "
        "(nvidia.com/gpu by default). 0 runs on CPU. Default 1.",
    )
    gpu_type: str | None = Field(
        default=None,
        description="gpuType names a GPU type from the operator's configuration (e.g. a100-80gb, h100); it "
        "selects the nodes (node selector and tolerations) configured for it. Unset: any GPU node.",
        max_length=63,
        pattern=DNS_LABEL,
    )
    cpu: str | None = Field(
        default=None,
        description="cpu request and limit as a Kubernetes quantity (e.g. `8`, `500m`). Unset: the operator's default.",
        max_length=32,
        pattern=QUANTITY,
    )
    memory: str | None = Field(
        default=None,
        description="memory request and limit as a Kubernetes quantity (e.g. `64Gi`). Unset: the operator's default.",
        max_length=32,
        pattern=QUANTITY,
    )


def schema_title(kind: str) -> str:
    return f"{kind} ({API_VERSION})"
