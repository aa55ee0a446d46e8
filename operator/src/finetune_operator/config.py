"""Operator settings, read once from environment variables (the Helm chart sets them).

User-facing specs stay small; everything about how this cluster runs the work (images, GPU node
selectors, the object store) lives here.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

ENV_PREFIX = "FINETUNE_"


class GpuType(BaseModel):
    """How to reach the nodes of one GPU type."""

    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class OperatorConfig(BaseModel):
    """Each field is read from ``FINETUNE_<FIELD_NAME_IN_CAPITALS>``; the README lists them all."""

    namespace: str = Field(default="", description="watch only this namespace, or these (comma separated); empty watches all")
    trainer_image: str = Field(default="ghcr.io/finetune-dev/finetune-trainer:0.1.0", description="image of validate, train and evaluate Jobs")
    server_image: str = Field(default="", description="image of the builtin runtime; empty: the trainer image")
    vllm_image: str = Field(default="vllm/vllm-openai:v0.11.0", description="image of the vllm runtime")
    vllm_adapter_loading: Literal["runtime", "rollout"] = Field(
        default="runtime",
        description="runtime: a sidecar loads a vllm endpoint's adapters into the running server; rollout: each adapter change rolls the Deployment (needs a spare GPU)",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(default="IfNotPresent", description="imagePullPolicy of every container the operator makes")
    storage_endpoint: str = Field(default="minio.finetune-system.svc:9000", description="object store host:port")
    storage_secure: bool = Field(default=False, description="use HTTPS to the object store")
    storage_region: str = Field(default="", description="object store region, if it needs one")
    storage_bucket: str = Field(default="finetune", description="bucket for datasets, job artifacts and evaluation results")
    storage_secret: str = Field(default="finetune-storage", description="Secret (in each user namespace) with accessKey and secretKey")
    storage_scoped_keys: bool = Field(
        default=False,
        description="every namespace's store Secret holds a key scoped to it (storage_keys grant); pods wait for one",
    )
    storage_credentials_dir: str = Field(default="/var/run/secrets/finetune/storage", description="the operator's own mounted credentials")
    gpu_types: dict[str, GpuType] = Field(default_factory=dict, description="JSON: GPU type → nodeSelector and tolerations")
    gpu_resource: str = Field(default="nvidia.com/gpu", description="extended resource name GPUs are requested as")
    default_queue: str = Field(default="", description="Kueue LocalQueue for jobs that name none; empty: no Kueue")
    artifact_policy: Literal["keep", "delete"] = Field(default="keep", description="what happens to a deleted job's artifacts")
    peering: str = Field(default="", description="kopf peering name for several replicas; empty: standalone")
    log_format: Literal["json", "text"] = Field(default="json", description="json (one object per line) or text logs")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR")
    metrics_port: int = Field(default=8080, description="port of the Prometheus /metrics endpoint; 0 disables it")
    health_port: int = Field(default=8081, description="port of the /healthz liveness endpoint; 0 disables it")
    progress_interval_seconds: float = Field(default=10.0, gt=0, description="how often a running job's progress.json is read into status")
    watch_timeout_seconds: int = Field(default=300, gt=0, description="server-side watch timeout: a silent watch is re-opened after it")
    client_timeout_seconds: int = Field(default=60, gt=0, description="client-side timeout of every API request")
    backoff_limit: int = Field(default=3, ge=0, description="retries of a trainer pod before the job fails")
    default_cpu: str = Field(default="4", description="cpu of a trainer or server container whose spec names none")
    default_memory: str = Field(default="32Gi", description="memory of a trainer or server container whose spec names none")
    termination_grace_seconds: int = Field(default=120, ge=1, description="time a trainer gets to checkpoint on SIGTERM")
    pvc_mount_root: str = Field(default="/models", description="where pvc://claim/path base models are mounted in pods")
    shared_prefixes: list[str] = Field(
        default_factory=list,
        description="comma-separated s3:// prefixes every namespace may read (base models, say) and none may write",
    )
    allow_private_urls: bool = Field(default=False, description="let specs fetch from loopback, link-local and private addresses")
    ephemeral_storage: str = Field(default="64Gi", description="ephemeral-storage limit of every pod's container (its scratch and cache folders count)")
    validation_deadline_seconds: int = Field(default=3600, ge=60, description="activeDeadlineSeconds of a Dataset's validation Job")
    evaluation_deadline_seconds: int = Field(default=86400, ge=60, description="activeDeadlineSeconds of an Evaluation's Job")

    @field_validator("shared_prefixes", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
        return value

    @field_validator("shared_prefixes")
    @classmethod
    def _s3_prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not prefix.startswith("s3://") or len(prefix.rstrip("/").split("/")) < 4:
                raise ValueError(f"{prefix!r}: a shared prefix is s3://<bucket>/<folder>[/...], never a whole bucket")
        return value

    @field_validator("gpu_types", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @property
    def namespaces(self) -> list[str]:
        """The namespaces watched; empty: all."""
        return [n.strip() for n in self.namespace.split(",") if n.strip()]

    @property
    def effective_server_image(self) -> str:
        return self.server_image or self.trainer_image

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorConfig:
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in environ:
                values[name] = environ[key]
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            problems = "; ".join(f"{ENV_PREFIX}{'.'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors())
            raise SystemExit(f"invalid operator configuration: {problems}") from None


def env_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: the README's configuration table."""
    rows = []
    for name, info in OperatorConfig.model_fields.items():
        default = info.default if info.default_factory is None else info.default_factory()
        rows.append((ENV_PREFIX + name.upper(), json.dumps(default) if not isinstance(default, str) else default, info.description or ""))
    return rows
