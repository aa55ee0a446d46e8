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

from finetune_operator import naming, tenancy
from finetune_operator.api.inferenceendpoint import InferenceEndpointSpec, InferenceEndpointStatus, Reason
from finetune_operator.api.inferenceendpoint import ConditionType as C
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests.server import ServedAdapter, build_server_children, effective_runtime, served_model_name
from finetune_operator.reconcile.common import Event, Plan, Reconciliation
from finetune_operator.reconcile.conditions import Conditions
from finetune_operator.reconcile.inputs import AdapterResolution, resolve_adapter

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = naming.MAX_NAME_LENGTH - len(naming.SERVER_SUFFIX)


@dataclass
class Observed:
    """What the handler read for one reconcile."""

    finetunejobs: dict[str, dict | None] = field(default_factory=dict)
    """Every FineTuneJob an adapter names, by name (None: it does not exist)."""
    deployment: dict | None = None
    pods: list[dict] = field(default_factory=list)
    secrets: dict[str, dict[str, str] | None] | None = None
    """The labels of each Secret the spec names (None: missing); None: not read."""
    server_adapters: list[list[dict]] | None = None
    """What each ready builtin server reports at /health (``adapters``: name, uri, status, error), one list per
    pod that answered; None when no server was asked (vllm, or none ready)."""


@dataclass
class InferenceEndpointPlan(Plan):
    apply: list[dict] = field(default_factory=list)
    """Children as they should be: created when missing, patched when they differ."""
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of children that must go (an HPA once min == max)."""


def derive_phase(conditions: Conditions) -> str:
    if conditions.is_true(C.READY):
        return "Ready"
    reason = conditions.reason(C.READY)
    if reason in (Reason.INVALID_SPEC, Reason.DEPLOYMENT_FAILED):
        return "Failed"
    if reason in (Reason.SECRET_NOT_FOUND, Reason.SECRET_NOT_ALLOWED, None):
        return "Pending"
    return "Deploying"


def operator_side_problems(name: str, spec: InferenceEndpointSpec, config: OperatorConfig) -> list[str]:
    """What the CRD schema cannot check: names the children need, operator configuration, runtime rules."""
    problems = []
    if len(name) > MAX_NAME_LENGTH or not DNS_1035_LABEL.match(name):
        problems.append(
            f"metadata.name: must be a DNS label of at most {MAX_NAME_LENGTH} characters that starts with a letter "
            f"(the Service {naming.server_name(name)!r} is named after it)"
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


def reconcile(obj: dict, observed: Observed, config: OperatorConfig) -> InferenceEndpointPlan:
    """Decide the next status and children of the InferenceEndpoint ``obj`` (as read from the API)."""
    r = Reconciliation(obj, derive_phase, _transition_event, InferenceEndpointStatus)
    plan = InferenceEndpointPlan(status={})
    spec, problem = r.parse(InferenceEndpointSpec)
    if spec is not None:
        problem = "; ".join(operator_side_problems(r.name, spec, config) + tenancy.endpoint_problems(spec, r.namespace, config)) or None
    if problem:
        r.conditions.set(C.READY, False, Reason.INVALID_SPEC, problem)
        r.out["message"] = f"Invalid spec: {problem}"
        return r.finish(plan)
    secret = tenancy.secret_problem(spec, observed.secrets, r.namespace, config)
    if secret:
        r.conditions.set(C.READY, False, *secret)
        r.out["message"] = secret[1]
        plan.retry_after = 15
        return r.finish(plan)
    runtime = effective_runtime(spec)
    child = naming.server_name(r.name)
    r.out.update(runtime=runtime, deploymentName=child, serviceName=child, url=naming.server_url(r.name, r.namespace))
    max_rank = spec.max_lora_rank if runtime == "vllm" else None
    resolutions = [resolve_adapter(a, observed.finetunejobs, r.namespace, config, max_rank) for a in spec.adapters]
    servable = [ServedAdapter(res.spec.name, res.uri) for res in resolutions if res.uri]
    at_run_time = runtime == "vllm" and config.vllm_adapter_loading == "runtime"
    plan.apply = build_server_children(obj, spec, servable, config, runtime_lora_loading=at_run_time)
    if spec.replicas.min == spec.replicas.max:
        plan.delete.append(("HorizontalPodAutoscaler", child))
    if not config.network_policies:
        plan.delete.append(("NetworkPolicy", child))
    _authentication(r, spec)
    dep_status = (observed.deployment or {}).get("status") or {}
    ready_replicas = int(dep_status.get("readyReplicas") or 0)
    r.out["replicas"] = int(dep_status.get("replicas") or 0)
    r.out["readyReplicas"] = ready_replicas
    reported = runtime == "builtin" or at_run_time
    missing = _adapters(r, plan, resolutions, observed, reported, ready_replicas, served_model_name(r.name, spec))
    return _readiness(r, plan, observed, ready_replicas, missing, child)


def _authentication(r: Reconciliation, spec: InferenceEndpointSpec) -> None:
    """Whether clients must send a key: an open endpoint is a choice the status shows, not a default it hides."""
    if spec.api_key_secret_ref is not None:
        r.conditions.set(C.AUTHENTICATED, True, Reason.API_KEY_REQUIRED, f"clients send the key in Secret {spec.api_key_secret_ref.name}")
    else:
        r.conditions.set(C.AUTHENTICATED, False, Reason.NO_API_KEY, "no apiKeySecretRef: anyone who can reach the Service may call the API")


def _adapters(r: Reconciliation, plan: InferenceEndpointPlan, resolutions: list[AdapterResolution], observed: Observed,
              reported: bool, ready_replicas: int, base_name: str) -> list[dict]:  # fmt: skip
    """Per-adapter state: resolved and reported by the servers (``reported``: the builtin server, or vLLM's
    adapter sidecar), or resolved and rolled out (vllm whose adapters change by rollout).
    Returns the adapters not served."""
    adapters_status: list[dict] = []
    for res in resolutions:
        entry: dict[str, Any] = {"name": res.spec.name, "ready": False}
        if res.uri:
            entry["uri"] = res.uri
        if res.reason:
            entry.update(reason=res.reason, message=res.message)
        elif ready_replicas == 0:
            entry.update(reason=Reason.WAITING_FOR_SERVER, message="no server replica is ready yet")
        elif reported and observed.server_adapters:
            ready, reason, message = _server_view(res.spec.name, res.uri or "", observed.server_adapters)
            entry["ready"] = ready
            if reason:
                entry.update(reason=reason, message=message)
        elif not reported and (failure := _fetch_failure(observed.pods, res.uri or "")):
            entry.update(reason=Reason.ADAPTER_LOAD_FAILED, message=failure)
        elif not reported and _rolled_out(observed.deployment):
            entry["ready"] = True
        elif not reported:
            entry.update(reason=Reason.ADAPTER_LOADING, message="the Deployment is rolling out the new adapter list")
        else:
            entry.update(reason=Reason.ADAPTER_LOADING, message="waiting for the server to report its adapters")
        adapters_status.append(entry)
    r.out["adapters"] = adapters_status
    r.out["models"] = [base_name] + [a["name"] for a in adapters_status if a["ready"]]
    missing = [a for a in adapters_status if not a["ready"]]
    if missing:
        words = "; ".join(f"{a['name']}: {a.get('reason')} ({a.get('message')})" for a in missing)
        r.conditions.set(C.ADAPTERS_READY, False, Reason.ADAPTER_NOT_READY, f"{len(missing)} of {len(adapters_status)} adapters not served: {words}")
    else:
        r.conditions.set(C.ADAPTERS_READY, True, Reason.ALL_ADAPTERS_READY, f"{len(adapters_status)} adapters served" if adapters_status else "no adapters")
    if any(a.get("reason") in (Reason.ADAPTER_LOADING, Reason.WAITING_FOR_SERVER) for a in missing):
        plan.retry_after = 5
    return missing


def _readiness(r: Reconciliation, plan: InferenceEndpointPlan, observed: Observed, ready_replicas: int, missing: list[dict], child: str) -> InferenceEndpointPlan:
    """Readiness of the endpoint itself: a ready replica, a pod that cannot start, or still deploying."""
    problem = pod_problem(observed.pods)
    if ready_replicas > 0:
        r.conditions.set(C.READY, True, Reason.READY, f"{ready_replicas} replica(s) ready")
        r.out["message"] = f"Serving {', '.join(r.out['models'])} at {r.out['url']}"
        if missing:
            r.out["message"] += f" ({len(missing)} adapter(s) not served: see status.adapters)"
    elif problem is not None:
        r.conditions.set(C.READY, False, *problem)
        r.out["message"] = problem[1]
        plan.retry_after = 15
    elif observed.deployment is None:
        r.conditions.set(C.READY, False, Reason.DEPLOYING, f"creating Deployment {child}")
        r.out["message"] = f"Creating Deployment {child}"
    else:
        reason = Reason.NO_READY_REPLICAS if _condition(observed.deployment, "Available") else Reason.DEPLOYING
        r.conditions.set(C.READY, False, reason, "waiting for a server replica to be ready")
        r.out["message"] = "Waiting for a server replica to be ready (loading the model)"
    return r.finish(plan)


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


def _transition_event(phase: str, message: str, out: dict, old: dict) -> Event:
    if phase == "Ready":
        return Event("Normal", "Ready", message or "Endpoint ready")
    if phase == "Deploying":
        return Event("Normal", "Deploying", message or "Deploying the server")
    if phase == "Pending":
        return Event("Normal", "Pending", message or "Waiting")
    return Event("Warning", "Failed", message or "Endpoint failed")
