"""InferenceEndpoint handlers: every trigger (the object itself, its Deployment and pods, the FineTuneJobs
its adapters name, a short timer while adapters load) ends in the same level-triggered
``reconcile_inferenceendpoint``."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

import kopf

from finetune_operator import kube as k
from finetune_operator import metrics, naming, runtime
from finetune_operator.api import FINETUNEJOB, INFERENCEENDPOINT
from finetune_operator.api.inferenceendpoint import KIND, InferenceEndpointSpec, Reason
from finetune_operator.handlers import common
from finetune_operator.manifests.common import differs
from finetune_operator.manifests.server import ADAPTER_LOADING_LABEL
from finetune_operator.reconcile import inferenceendpoint as rec

logger = logging.getLogger(__name__)

IE = INFERENCEENDPOINT.gvr
OWNER_LABEL = naming.owner_label(KIND)
SERVER_HEALTH_TIMEOUT = 2.0
ADAPTER_POLL_SECONDS = 5


def _pod_ready(pod: dict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions) and not pod["metadata"].get("deletionTimestamp")


def server_adapters(pod: dict) -> list[dict] | None:
    """What a ready builtin server reports about its adapters (GET /health on the pod, no key needed)."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    try:
        with urllib.request.urlopen(f"http://{host}:{naming.SERVER_PORT}/health", timeout=SERVER_HEALTH_TIMEOUT) as response:
            body = json.loads(response.read(1 << 20))
    except urllib.error.HTTPError as e:  # 503 while loading or draining still carries the report
        try:
            body = json.loads(e.read(1 << 20))
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    adapters = body.get("adapters") if isinstance(body, dict) else None
    return adapters if isinstance(adapters, list) else None


def _observe(body: dict, rt: runtime.Runtime) -> rec.Observed:
    meta, spec = body["metadata"], body.get("spec", {}) or {}
    ns, name = meta["namespace"], meta["name"]
    observed = rec.Observed()
    for adapter in spec.get("adapters") or []:
        job = adapter.get("fineTuneJob") if isinstance(adapter, dict) else None
        if job and job not in observed.finetunejobs:
            observed.finetunejobs[job] = rt.kube.get(k.FINETUNEJOBS, ns, job)
    observed.secrets = common.secret_labels(rt, ns, InferenceEndpointSpec, spec)
    observed.deployment = rt.kube.get(k.DEPLOYMENTS, ns, naming.server_name(name))
    if observed.deployment is not None:
        selector = ",".join(f"{key}={value}" for key, value in naming.server_selector_labels(name).items())
        observed.pods = rt.kube.list(k.PODS, ns, label_selector=selector)
        labels = observed.deployment["metadata"].get("labels") or {}
        if labels.get("finetune.dev/runtime") == "builtin" or labels.get(ADAPTER_LOADING_LABEL) == "runtime":
            reports = [r for r in (server_adapters(p) for p in observed.pods if _pod_ready(p)) if r is not None]
            observed.server_adapters = reports or None
    return observed


def _apply(rt: runtime.Runtime, namespace: str, plan: rec.InferenceEndpointPlan) -> None:
    """Create each child that is missing, patch each that differs, delete what must go."""
    for child in plan.apply:
        resource = k.BY_KIND[child["kind"]]
        live = rt.kube.get(resource, namespace, child["metadata"]["name"])
        if live is None:
            rt.kube.create(child)
            continue
        desired = {key: value for key, value in child.items() if key not in ("apiVersion", "kind", "metadata")}
        desired["metadata"] = {"labels": child["metadata"]["labels"]}
        if differs(desired, live):
            rt.kube.patch(resource, namespace, child["metadata"]["name"], desired)
            logger.info("%s/%s: updated %s %s", namespace, child["metadata"]["name"], child["kind"], child["metadata"]["name"])
    for kind, child_name_ in plan.delete:
        resource = k.BY_KIND[kind]
        if rt.kube.get(resource, namespace, child_name_) is not None:
            rt.kube.delete(resource, namespace, child_name_)


def reconcile_inferenceendpoint(namespace: str, name: str, body: dict | None = None) -> rec.InferenceEndpointPlan | None:
    """Read, decide, act, write status. Serialised per object."""

    def decide(fresh: dict, rt: runtime.Runtime) -> rec.InferenceEndpointPlan:
        return rec.reconcile(fresh, _observe(fresh, rt), rt.config)

    done = common.reconcile_object(KIND, k.INFERENCEENDPOINTS, namespace, name, body, decide,
                                   lambda fresh, rt, plan: _apply(rt, namespace, plan))
    if done is None:
        return None
    fresh, plan = done
    _report_adapters(fresh, plan)
    return plan


def _report_adapters(body: dict, plan: rec.InferenceEndpointPlan) -> None:
    """An Event when an adapter becomes served, or fails to load."""
    old = {a.get("name"): a for a in ((body.get("status") or {}).get("adapters") or [])}
    for adapter in plan.status.get("adapters") or []:
        before = old.get(adapter["name"]) or {}
        if adapter["ready"] and not before.get("ready"):
            kopf.event(body, type="Normal", reason="AdapterReady", message=f"Adapter {adapter['name']} is served")
        elif adapter.get("reason") == Reason.ADAPTER_LOAD_FAILED and before.get("reason") != Reason.ADAPTER_LOAD_FAILED:
            kopf.event(body, type="Warning", reason="AdapterLoadFailed", message=f"Adapter {adapter['name']}: {adapter.get('message')}")


@kopf.on.resume(*IE)
@kopf.on.create(*IE)
@kopf.on.update(*IE)
def on_inferenceendpoint(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    reconcile_inferenceendpoint(namespace, name, body=dict(body))


def _waiting(status: dict | None, **_: Any) -> bool:
    """Something changes without an API event: a server loading an adapter, a pod that cannot start."""
    status = status or {}
    if status.get("phase") in ("Pending", "Deploying", "Failed"):
        return True
    loading = (Reason.ADAPTER_LOADING, Reason.WAITING_FOR_SERVER)
    return any(a.get("reason") in loading for a in status.get("adapters") or [])


@kopf.timer(*IE, interval=ADAPTER_POLL_SECONDS, initial_delay=ADAPTER_POLL_SECONDS, when=_waiting)
def poll_servers(namespace: str, name: str, **_: Any) -> None:
    """While an adapter loads (the kubelet refreshes a ConfigMap volume within about a minute, then the
    server loads it), ask the servers every few seconds."""
    reconcile_inferenceendpoint(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={OWNER_LABEL: kopf.PRESENT})
def on_server_deployment(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    reconcile_inferenceendpoint(namespace, labels[OWNER_LABEL])


@kopf.on.event("", "v1", "pods", labels={OWNER_LABEL: kopf.PRESENT})
def on_server_pod(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    reconcile_inferenceendpoint(namespace, labels[OWNER_LABEL])


@kopf.index(*IE)
def inferenceendpoints_by_finetunejob(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict:
    jobs = {a.get("fineTuneJob") for a in spec.get("adapters") or [] if isinstance(a, dict)}
    return {(namespace, job): name for job in jobs if job}


@kopf.on.field(*FINETUNEJOB.gvr, field="status.phase")
def on_adapter_job_phase(namespace: str, name: str, inferenceendpoints_by_finetunejob: kopf.Index, **_: Any) -> None:
    """A FineTuneJob completed (or was created, or failed): the endpoints serving its adapter move on."""
    for endpoint in set(inferenceendpoints_by_finetunejob.get((namespace, name), [])):
        reconcile_inferenceendpoint(namespace, endpoint)


@kopf.on.event(*FINETUNEJOB.gvr)
def on_adapter_job_event(type: str, namespace: str, name: str, inferenceendpoints_by_finetunejob: kopf.Index, **_: Any) -> None:
    """A FineTuneJob was deleted: its adapter is no longer resolvable."""
    if type == "DELETED":
        for endpoint in set(inferenceendpoints_by_finetunejob.get((namespace, name), [])):
            reconcile_inferenceendpoint(namespace, endpoint)


@kopf.on.delete(*IE, optional=True)
def on_inferenceendpoint_deleted(namespace: str, name: str, uid: str, **_: Any) -> None:
    """Children go with the owner (owner references); only the operator's own bookkeeping is left."""
    metrics.PHASES.set(KIND, namespace, name, None)
    runtime.forget(uid)
