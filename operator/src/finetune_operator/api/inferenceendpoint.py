"""InferenceEndpoint: a base model and its LoRA adapters behind one OpenAI-compatible API."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from finetune_operator.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ApiModel,
    BaseModelRef,
    Condition,
    GpuResources,
    SecretKeyRef,
    cel,
    conditions_field,
)
from finetune_trainer.contract import VLLM_LORA_RANKS

KIND = "InferenceEndpoint"
PLURAL = "inferenceendpoints"
SINGULAR = "inferenceendpoint"
SHORT_NAMES = ["ftie"]

Phase = Literal["Pending", "Deploying", "Ready", "Failed"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]

SERVED_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"

LoraRank = Literal[VLLM_LORA_RANKS]  # type: ignore[valid-type]


class ConditionType:
    READY = "Ready"
    """The endpoint answers requests. Reasons: Ready, Deploying, NoReadyReplicas, InvalidSpec, DeploymentFailed,
    SecretNotFound."""
    AUTHENTICATED = "Authenticated"
    """Clients must send a key. Reasons: APIKeyRequired, NoAPIKey (anyone who can reach the Service may call it)."""
    ADAPTERS_READY = "AdaptersReady"
    """Every adapter is served. Reasons: AllAdaptersReady, AdapterNotReady (the others are still served). Each
    adapter's own reason (status.adapters[].reason): FineTuneJobNotFound, FineTuneJobNotCompleted, NotAnAdapter,
    WaitingForServer, AdapterLoading, AdapterLoadFailed."""


class Reason:
    # condition Ready
    READY = "Ready"
    DEPLOYING = "Deploying"
    NO_READY_REPLICAS = "NoReadyReplicas"
    INVALID_SPEC = "InvalidSpec"
    DEPLOYMENT_FAILED = "DeploymentFailed"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_NOT_ALLOWED = "SecretNotAllowed"
    # condition Authenticated
    API_KEY_REQUIRED = "APIKeyRequired"
    NO_API_KEY = "NoAPIKey"
    # condition AdaptersReady
    ALL_ADAPTERS_READY = "AllAdaptersReady"
    ADAPTER_NOT_READY = "AdapterNotReady"
    # per adapter (status.adapters[].reason)
    FINETUNEJOB_NOT_FOUND = "FineTuneJobNotFound"
    FINETUNEJOB_NOT_COMPLETED = "FineTuneJobNotCompleted"
    NOT_AN_ADAPTER = "NotAnAdapter"
    ADAPTER_LOADING = "AdapterLoading"
    ADAPTER_LOAD_FAILED = "AdapterLoadFailed"
    WAITING_FOR_SERVER = "WaitingForServer"


class AdapterSpec(ApiModel):
    """A LoRA adapter to serve: a FineTuneJob's output or a folder URI."""

    name: str = Field(description="name clients send as `model` to use this adapter.", max_length=128, pattern=SERVED_NAME)
    fine_tune_job: str | None = Field(
        default=None,
        description="fineTuneJob names a FineTuneJob of this namespace; its adapter is served once it is Completed.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    uri: str | None = Field(
        default=None,
        description="uri of an adapter folder (s3://...) with adapter_config.json and adapter_model.safetensors.",
        max_length=2048,
        pattern=r"^s3://[^\s]+$",
    )

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [cel("has(self.fineTuneJob) != has(self.uri)", "set exactly one of fineTuneJob and uri")]
    }


class ReplicaResources(GpuResources):
    """Compute resources of one server replica."""

    gpus: int = Field(
        default=0,
        ge=0,
        le=16,
        description="gpus per replica (nvidia.com/gpu by default). 0 serves on CPU with the builtin runtime. Default 0.",
    )


class ReplicaSpec(ApiModel):
    """How many server replicas run; an autoscaler is made when min < max."""

    min: int = Field(default=1, ge=0, le=100, description="min replicas. Default 1.")
    max: int = Field(default=1, ge=1, le=100, description="max replicas. Default 1.")
    target_concurrency: int = Field(
        default=8, ge=1, le=1024, description="targetConcurrency: in-flight requests per replica the autoscaler aims for (CPU utilisation is the fallback). Default 8."
    )

    crd_extra: ClassVar[dict[str, Any]] = {"x-kubernetes-validations": [cel("self.min <= self.max", "min must not exceed max")]}


class EndpointNetwork(ApiModel):
    """Who may reach the API. The operator makes a NetworkPolicy (where the admin keeps them on) that lets in
    only pods of the endpoint's own namespace, of the namespaces the admin lists for every endpoint (the
    operator's own, Prometheus', an ingress controller's) and of the namespaces named here."""

    allow_from_namespaces: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="allowFromNamespaces: namespaces (besides the endpoint's own) whose pods may call the API.",
        json_schema_extra={"items": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL}},
    )

    @field_validator("allow_from_namespaces")
    @classmethod
    def _namespace_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if len(name) > 63 or not re.match(DNS_LABEL, name):
                raise ValueError(f"{name!r} is not a namespace name (lower-case letters, digits and '-', at most 63)")
        return value


class InferenceEndpointSpec(ApiModel):
    base_model: BaseModelRef = Field(description="baseModel to serve.")
    served_model_name: str | None = Field(
        default=None,
        description="servedModelName is the name clients send for the base model. Default: the endpoint's name.",
        max_length=128,
        pattern=SERVED_NAME,
    )
    adapters: list[AdapterSpec] = Field(default_factory=list, max_length=64, description="adapters served beside the base model, each under its own name.")
    runtime: Literal["vllm", "builtin"] | None = Field(
        default=None,
        description="runtime: vllm (the vLLM OpenAI server, for GPUs) or builtin (the trainer image's server, "
        "for CPU and small models). Unset: vllm when resources.gpus > 0, else builtin.",
    )
    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec, description="replicas of the server.")
    resources: ReplicaResources = Field(default_factory=ReplicaResources, description="resources of each replica. Default: no GPU.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="apiKeySecretRef names a Secret whose key (default `apiKey`) clients must send as a bearer "
        "token. Unset: the endpoint needs no key (condition Authenticated says so).",
    )
    network: EndpointNetwork = Field(default_factory=EndpointNetwork, description="network: who may reach the API (a NetworkPolicy).")
    max_model_len: int = Field(default=4096, ge=64, le=1048576, description="maxModelLen: prompt plus completion tokens per request. Default 4096.")
    max_loras: int = Field(default=8, ge=1, le=256, description="maxLoras in one batch (vllm --max-loras). Default 8.")
    max_lora_rank: LoraRank = Field(
        default=64,
        description="maxLoraRank: the largest LoRA rank (`r`) an adapter may have (vllm --max-lora-rank). One of "
        f"{', '.join(map(str, VLLM_LORA_RANKS))}, the values vLLM accepts; an adapter of a higher rank is not served "
        "(its status says so). Default 64.",
    )

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [
            cel("!has(self.adapters) || self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))", "adapter names must be unique", field_path=".adapters"),
            cel("!has(self.runtime) || self.runtime != 'vllm' || (has(self.resources) && self.resources.gpus > 0)", "runtime vllm needs GPUs (resources.gpus > 0)", field_path=".runtime"),
        ]
    }


class AdapterStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str = Field(description="name clients send.", max_length=128)
    ready: bool = Field(description="ready is true when the adapter is served.")
    uri: str | None = Field(default=None, description="uri the adapter is loaded from.", max_length=2048)
    reason: str | None = Field(default=None, description="reason it is not served (e.g. FineTuneJobNotCompleted).", max_length=256)
    message: str | None = Field(default=None, description="message explains the reason.", max_length=1024)


class InferenceEndpointStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: Phase = Field(default="Pending", description="phase: Pending, Deploying, Ready or Failed.")
    message: str = Field(default="", description="message is the latest human-readable word on the endpoint.", max_length=4096)
    conditions: list[Condition] = conditions_field()
    observed_generation: int | None = Field(default=None, description="observedGeneration is the metadata.generation this status describes.")
    url: str | None = Field(default=None, description="url of the OpenAI-compatible API inside the cluster (…/v1).", max_length=1024)
    runtime: str | None = Field(default=None, description="runtime in use.", max_length=16)
    models: list[str] = Field(default_factory=list, max_length=65, description="models: the names served (base model and ready adapters).")
    adapters: list[AdapterStatus] = Field(default_factory=list, max_length=64, description="adapters and whether each is served.")
    replicas: int = Field(default=0, description="replicas that exist.")
    ready_replicas: int = Field(default=0, description="readyReplicas answering requests.")
    deployment_name: str | None = Field(default=None, description="deploymentName of the server Deployment.", max_length=253)
    service_name: str | None = Field(default=None, description="serviceName of the Service in front of it.", max_length=63)
