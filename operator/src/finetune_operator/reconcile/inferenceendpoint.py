"""The InferenceEndpoint lifecycle as a pure function: (spec, observed world) → status, children, events.

The handler gathers what is observed (the FineTuneJobs the adapters name, the Deployment and its pods,
and what each ready builtin server says about its adapters) and applies the ``Plan``: the children it
lists are created, or patched where the live object differs from them (``differs``).

Phases are derived from conditions, never stored as the only truth:

    Ready False, reason InvalidSpec or DeploymentFailed  → Failed
    Ready False, reason SecretNotFound                   → Pending   (the user must create a Secret)
    Ready True                                           → Ready     (at least one replica answers)
    otherwise                                            → Deploying

An adapter that cannot be served (its FineTuneJob is missing or not Completed, its files are missing or
broken) never takes the endpoint down: the others keep serving, and condition AdaptersReady says which
adapter is missing and why. Once the FineTuneJob completes, the next reconcile serves its adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from finetune_operator.api.inferenceendpoint import AdapterSpec, ConditionType as C, InferenceEndpointSpec
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests.server import ServedAdapter, child_name, effective_runtime, served_model_name, service_url
from finetune_operator.reconcile.conditions import Conditions

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 63 - len("-server")


class Reason:
    # condition Ready
    READY = "Ready"
    DEPLOYING = "Deploying"
    NO_READY_REPLICAS = "NoReadyReplicas"
    INVALID_SPEC = "InvalidSpec"
    DEPLOYMENT_FAILED = "DeploymentFailed"
    SECRET_NOT_FOUND = "SecretNotFound"
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


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Observed:
    """What the handler read for one reconcile."""

    finetunejobs: dict[str, dict | None] = field(default_factory=dict)
    """Every FineTuneJob an adapter names, by name (None: it does not exist)."""
    deployment: dict | None = None
    pods: list[dict] = field(default_factory=list)
    server_adapters: list[list[dict]] | None = None
    """What each ready builtin server reports at /health (``adapters``: name, uri, status, error), one list per
    pod that answered; None when no server was asked (vllm, or none ready)."""


@dataclass
class Plan:
    status: dict[str, Any]
    apply: list[dict] = field(default_factory=list)
    """Children as they should be: created when missing, patched when they differ."""
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of children that must go (an HPA once min == max)."""
    events: list[Event] = field(default_factory=list)
    retry_after: float | None = None
    old_phase: str | None = None
    new_phase: str = "Pending"


@dataclass
class AdapterResolution:
    spec: AdapterSpec
    uri: str | None
    reason: str | None = None
    message: str | None = None


def derive_phase(conditions: Conditions) -> str:
    if conditions.is_true(C.READY):
        return "Ready"
    reason = conditions.reason(C.READY)
    if reason in (Reason.INVALID_SPEC, Reason.DEPLOYMENT_FAILED):
        return "Failed"
    if reason in (Reason.SECRET_NOT_FOUND, None):
        return "Pending"
    return "Deploying"


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{loc}: {err['msg']}")
    return "; ".join(parts)


def operator_side_problems(name: str, spec: InferenceEndpointSpec, config: OperatorConfig) -> list[str]:
    """What the CRD schema cannot check: names the children need, operator configuration, runtime rules."""
    problems = []
    if len(name) > MAX_NAME_LENGTH or not DNS_1035_LABEL.match(name):
        problems.append(
            f"metadata.name: must be a DNS label of at most {MAX_NAME_LENGTH} characters that starts with a letter "
            f"(the Service {child_name(name)!r} is named after it)"
        )
    if spec.resources.gpu_type and spec.resources.gpu_type not in config.gpu_types:
        known = ", ".join(sorted(config.gpu_types)) or "none are configured"
        problems.append(f"spec.resources.gpuType: unknown GPU type {spec.resources.gpu_type!r} (known: {known})")
    if spec.runtime == "vllm" and spec.resources.gpus == 0:
        problems.append("spec.runtime: vllm needs GPUs (resources.gpus > 0); use runtime builtin on CPU")
    names = [a.name for a in spec.adapters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"spec.adapters: names must be unique ({', '.join(duplicates)} repeated)")
    base_name = served_model_name(name, spec)
    if base_name in names:
        problems.append(f"spec.adapters: {base_name!r} is the base model's served name; give the adapter another name")
    return problems


def resolve_adapter(adapter: AdapterSpec, finetunejobs: dict[str, dict | None]) -> AdapterResolution:
    """An adapter's URI, or why it has none yet."""
    if adapter.uri:
        return AdapterResolution(adapter, adapter.uri)
    job_name = adapter.fine_tune_job or ""
    job = finetunejobs.get(job_name)
    if job is None:
        return AdapterResolution(adapter, None, Reason.FINETUNEJOB_NOT_FOUND, f"FineTuneJob {job_name} does not exist in this namespace")
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    model = status.get("outputModel") or {}
    if phase != "Completed" or not model.get("uri"):
        return AdapterResolution(adapter, None, Reason.FINETUNEJOB_NOT_COMPLETED, f"FineTuneJob {job_name} is {phase}; its adapter is served once it is Completed")
    if model.get("adapter") is False:
        return AdapterResolution(adapter, None, Reason.NOT_AN_ADAPTER, f"FineTuneJob {job_name} trained a full model, not a LoRA adapter; serve it as a baseModel instead")
    return AdapterResolution(adapter, model["uri"])


def _server_view(name: str, uri: str, reports: list[list[dict]]) -> tuple[bool, str | None, str | None]:
    """(ready, reason, message) of one adapter from what the ready servers report."""
    states = []
    for report in reports:
        entry = next((a for a in report if a.get("name") == name), None)
        states.append(entry if entry is not None and entry.get("uri") == uri else None)
    failed = next((s for s in states if s and s.get("status") == "failed"), None)
    if failed is not None:
        return False, Reason.ADAPTER_LOAD_FAILED, (failed.get("error") or "the server could not load the adapter")[:1024]
    if states and all(s and s.get("status") == "loaded" for s in states):
        return True, None, None
    return False, Reason.ADAPTER_LOADING, "the server is loading the adapter"


def _condition(obj: dict | None, type_: str) -> dict | None:
    for c in (obj or {}).get("status", {}).get("conditions", []) or []:
        if c.get("type") == type_:
            return c
    return None


def pod_problem(pods: list[dict]) -> tuple[str, str] | None:
    """(reason, message) when a server pod cannot start or keeps failing; the newest words first."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        for kind, statuses in (("init container", status.get("initContainerStatuses")), ("container", status.get("containerStatuses"))):
            for cs in statuses or []:
                state = cs.get("state") or {}
                waiting = state.get("waiting") or {}
                message = waiting.get("message") or ""
                secret = re.search(r'secret "([^"]+)" not found', message)
                if secret:
                    return Reason.SECRET_NOT_FOUND, f"Secret {secret.group(1)} does not exist in this namespace"
                if waiting.get("reason") in ("CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                    return Reason.DEPLOYMENT_FAILED, f"{kind} {cs.get('name')}: {waiting['reason']}" + (f": {message}" if message else "")
                terminated = state.get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
                if not terminated or terminated.get("exitCode", 0) == 0:
                    continue
                recovered = cs.get("ready") if kind == "container" else (state.get("terminated") or {}).get("exitCode") == 0
                if recovered:
                    continue  # it failed before and works now
                detail = (terminated.get("message") or "").strip()
                if detail and kind == "container":
                    detail = detail.splitlines()[-1].strip()  # the last line of a log tail says most
                words = detail or terminated.get("reason") or "Error"
                return Reason.DEPLOYMENT_FAILED, f"{kind} {cs.get('name')} exited with code {terminated.get('exitCode')}: {words}"[:4096]
    return None


def reconcile(
    *,
    name: str,
    namespace: str,
    generation: int | None,
    raw_spec: dict,
    status: dict | None,
    observed: Observed,
    config: OperatorConfig,
    build_children,
) -> Plan:
    """Decide the next status and children. ``build_children(spec, [ServedAdapter]) -> [ConfigMap, Deployment, ...]``."""
    status = dict(status or {})
    conditions = Conditions.from_status(status, generation)
    old_phase = status.get("phase")
    plan = Plan(status={}, old_phase=old_phase)
    out: dict[str, Any] = {"observedGeneration": generation}

    def finish() -> Plan:
        phase = derive_phase(conditions)
        out["phase"] = phase
        out["conditions"] = conditions.as_list()
        plan.status = out
        plan.new_phase = phase
        if phase != old_phase:
            plan.events.append(_transition_event(phase, out.get("message", "")))
        return plan

    try:
        spec = InferenceEndpointSpec.model_validate(raw_spec)
    except ValidationError as e:
        message = format_validation_error(e)
        conditions.set(C.READY, False, Reason.INVALID_SPEC, message)
        out["message"] = f"Invalid spec: {message}"
        return finish()
    problems = operator_side_problems(name, spec, config)
    if problems:
        message = "; ".join(problems)
        conditions.set(C.READY, False, Reason.INVALID_SPEC, message)
        out["message"] = f"Invalid spec: {message}"
        return finish()

    runtime = effective_runtime(spec)
    child = child_name(name)
    base_name = served_model_name(name, spec)
    out.update(runtime=runtime, deploymentName=child, serviceName=child, url=service_url(name, namespace))

    resolutions = [resolve_adapter(a, observed.finetunejobs) for a in spec.adapters]
    servable = [ServedAdapter(r.spec.name, r.uri) for r in resolutions if r.uri]
    plan.apply = build_children(spec, servable)
    if spec.replicas.min == spec.replicas.max:
        plan.delete.append(("HorizontalPodAutoscaler", child))

    deployment = observed.deployment
    dep_status = (deployment or {}).get("status") or {}
    ready_replicas = int(dep_status.get("readyReplicas") or 0)
    out["replicas"] = int(dep_status.get("replicas") or 0)
    out["readyReplicas"] = ready_replicas

    # Per-adapter state: resolved and reported by the servers (builtin), or resolved and deployed (vllm).
    adapters_status: list[dict] = []
    for r in resolutions:
        entry: dict[str, Any] = {"name": r.spec.name, "ready": False}
        if r.uri:
            entry["uri"] = r.uri
        if r.reason:
            entry.update(reason=r.reason, message=r.message)
        elif ready_replicas == 0:
            entry.update(reason=Reason.WAITING_FOR_SERVER, message="no server replica is ready yet")
        elif runtime == "builtin" and observed.server_adapters:
            ready, reason, message = _server_view(r.spec.name, r.uri or "", observed.server_adapters)
            entry["ready"] = ready
            if reason:
                entry.update(reason=reason, message=message)
        elif runtime == "vllm" and (failure := _fetch_failure(observed.pods, r.uri or "")):
            entry.update(reason=Reason.ADAPTER_LOAD_FAILED, message=failure)
        elif runtime == "vllm" and _rolled_out(deployment):
            entry["ready"] = True
        elif runtime == "vllm":
            entry.update(reason=Reason.ADAPTER_LOADING, message="the Deployment is rolling out the new adapter list")
        else:
            entry.update(reason=Reason.ADAPTER_LOADING, message="waiting for the server to report its adapters")
        adapters_status.append(entry)
    out["adapters"] = adapters_status
    out["models"] = [base_name] + [a["name"] for a in adapters_status if a["ready"]]
    missing = [a for a in adapters_status if not a["ready"]]
    if missing:
        words = "; ".join(f"{a['name']}: {a.get('reason')} ({a.get('message')})" for a in missing)
        conditions.set(C.ADAPTERS_READY, False, Reason.ADAPTER_NOT_READY, f"{len(missing)} of {len(adapters_status)} adapters not served: {words}")
    else:
        conditions.set(C.ADAPTERS_READY, True, Reason.ALL_ADAPTERS_READY, f"{len(adapters_status)} adapters served" if adapters_status else "no adapters")
    if any(a.get("reason") in (Reason.ADAPTER_LOADING, Reason.WAITING_FOR_SERVER) for a in missing):
        plan.retry_after = 5

    # Readiness of the endpoint itself.
    problem = pod_problem(observed.pods)
    if ready_replicas > 0:
        conditions.set(C.READY, True, Reason.READY, f"{ready_replicas} replica(s) ready")
        out["message"] = f"Serving {', '.join(out['models'])} at {out['url']}"
        if missing:
            out["message"] += f" ({len(missing)} adapter(s) not served: see status.adapters)"
    elif problem is not None:
        reason, message = problem
        conditions.set(C.READY, False, reason, message)
        out["message"] = message
        plan.retry_after = 15
    elif deployment is None:
        conditions.set(C.READY, False, Reason.DEPLOYING, f"creating Deployment {child}")
        out["message"] = f"Creating Deployment {child}"
    else:
        conditions.set(C.READY, False, Reason.NO_READY_REPLICAS if _condition(deployment, "Available") else Reason.DEPLOYING, "waiting for a server replica to be ready")
        out["message"] = "Waiting for a server replica to be ready (loading the model)"
    return finish()


def _fetch_failure(pods: list[dict], uri: str) -> str | None:
    """The fetch init container's termination message when it failed on this adapter's URI (vllm)."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
            state = cs.get("state") or {}
            terminated = state.get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            message = terminated.get("message") or ""
            if terminated.get("exitCode", 0) != 0 and uri and re.search(re.escape(uri.rstrip("/")) + r"(?![\w.-])", message):
                return message.strip()[:1024]
    return None


def _rolled_out(deployment: dict | None) -> bool:
    """Every replica runs the current pod template (the adapter list it names)."""
    if deployment is None:
        return False
    meta, spec, status = deployment.get("metadata") or {}, deployment.get("spec") or {}, deployment.get("status") or {}
    if (status.get("observedGeneration") or 0) < (meta.get("generation") or 0):
        return False
    want = spec.get("replicas", 1)
    return int(status.get("updatedReplicas") or 0) >= want and int(status.get("replicas") or 0) <= int(status.get("updatedReplicas") or 0)


def _transition_event(phase: str, message: str) -> Event:
    if phase == "Ready":
        return Event("Normal", "Ready", message or "Endpoint ready")
    if phase == "Deploying":
        return Event("Normal", "Deploying", message or "Deploying the server")
    if phase == "Pending":
        return Event("Normal", "Pending", message or "Waiting")
    return Event("Warning", "Failed", message or "Endpoint failed")


def differs(desired: Any, live: Any) -> bool:
    """True when ``desired`` is not contained in ``live``: some key it sets is missing or has another value.

    The API server adds defaults (``imagePullPolicy``, ``protocol``, ``terminationMessagePath`` ...), so a
    live object is compared against what the operator asks for, not for equality. Lists must have the
    same length and match item by item.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return True
        return any(differs(value, live.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return True
        return any(differs(d, item) for d, item in zip(desired, live, strict=True))
    if isinstance(desired, (int, float)) and not isinstance(desired, bool) and isinstance(live, str):
        return str(desired) != live
    return desired != live
