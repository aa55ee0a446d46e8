"""The one module that talks to the Kubernetes API.

A small generic REST layer over the official client's connection handling (auth, TLS, kubeconfig):
every kind is addressed by (apiVersion, plural), so children of any kind are created, read, patched
and deleted the same way. Errors are mapped once, here:

* 404 on a read → ``None``; 409 AlreadyExists on create → the existing object (deterministic names
  make a retry after a crash find its own child instead of making a second one);
* 409 Conflict, 429 and 5xx → ``kopf.TemporaryError`` (retried with backoff, never shown as a failure);
* 400/422 → ``kopf.PermanentError`` with the server's message (a bug in a manifest, not the user's).

``REQUIRED_PERMISSIONS`` is the exact list of what this operator does with the API; the Helm chart's
RBAC is tested against it in both directions.
"""

from __future__ import annotations

import json
import os
import logging
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import kopf
import kubernetes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    api_version: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0] if "/" in self.api_version else ""

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.api_version}" if "/" in self.api_version else f"/api/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


CONFIGMAPS = Resource("v1", "configmaps")
SERVICES = Resource("v1", "services")
PODS = Resource("v1", "pods")
EVENTS = Resource("v1", "events")
SECRETS = Resource("v1", "secrets")
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
"""Accept header that asks the API server for an object's metadata only."""
JOBS = Resource("batch/v1", "jobs")
DEPLOYMENTS = Resource("apps/v1", "deployments")
HPAS = Resource("autoscaling/v2", "horizontalpodautoscalers")
NETWORK_POLICIES = Resource("networking.k8s.io/v1", "networkpolicies")
DATASETS = Resource("finetune.dev/v1alpha1", "datasets")
FINETUNEJOBS = Resource("finetune.dev/v1alpha1", "finetunejobs")
EVALUATIONS = Resource("finetune.dev/v1alpha1", "evaluations")
INFERENCEENDPOINTS = Resource("finetune.dev/v1alpha1", "inferenceendpoints")

BY_KIND: dict[str, Resource] = {
    "ConfigMap": CONFIGMAPS,
    "Service": SERVICES,
    "Pod": PODS,
    "Job": JOBS,
    "Deployment": DEPLOYMENTS,
    "HorizontalPodAutoscaler": HPAS,
    "NetworkPolicy": NETWORK_POLICIES,
    "Dataset": DATASETS,
    "FineTuneJob": FINETUNEJOBS,
    "Evaluation": EVALUATIONS,
    "InferenceEndpoint": INFERENCEENDPOINTS,
}

_CHILD_VERBS = ["get", "list", "watch", "create", "patch", "update", "delete"]

REQUIRED_PERMISSIONS: list[dict[str, list[str]]] = [
    # The four kinds: kopf watches them, writes its progress annotations and our finalizer (patch).
    {"apiGroups": ["finetune.dev"], "resources": ["datasets", "finetunejobs", "evaluations", "inferenceendpoints"], "verbs": ["get", "list", "watch", "patch", "update"]},
    {"apiGroups": ["finetune.dev"], "resources": ["datasets/status", "finetunejobs/status", "evaluations/status", "inferenceendpoints/status"], "verbs": ["get", "patch", "update"]},
    # Children: trainer configs, Jobs, server Deployments, their Services, NetworkPolicies and autoscalers.
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": _CHILD_VERBS},
    {"apiGroups": [""], "resources": ["services"], "verbs": _CHILD_VERBS},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": _CHILD_VERBS},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": _CHILD_VERBS},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": _CHILD_VERBS},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": _CHILD_VERBS},
    # Pods are only read: scheduling state, waiting reasons (a missing Secret), termination messages.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    # Secrets: only `get`, and only their metadata is asked for: the label by which their owner consents to
    # a spec naming them (tenancy.CONSENT_LABEL). Never list or watch, never the data.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # Events for every phase transition (kopf posts core/v1 events).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf's resource discovery and namespace scanning.
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
]

PEERING_PERMISSIONS: list[dict[str, list[str]]] = [
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"], "verbs": ["get", "list", "watch", "patch"]},
]
"""Needed only when several replicas run with kopf peering (FINETUNE_PEERING)."""


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, causes: tuple[str, ...] = ()):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes
        """The ``reason`` of each of the Status's ``details.causes``."""

    @property
    def namespace_terminating(self) -> bool:
        return self.status == 403 and ("NamespaceTerminating" in self.causes or "because it is being terminated" in self.message)


class NamespaceTerminating(Exception):
    """The object's namespace is being deleted: nothing may be created in it, and nothing needs to be."""


def load_client_config(timeout_seconds: int | None = None) -> kubernetes.client.Configuration:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # The client reads KUBECONFIG once, at import; read it at call time so a changed environment counts.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                           client_configuration=configuration)
    return configuration


class Kube:
    """Synchronous, thread-safe access to the API (kopf runs sync handlers in worker threads)."""

    def __init__(self, configuration: kubernetes.client.Configuration | None = None, timeout_seconds: int = 60):
        self.configuration = configuration or load_client_config()
        self.timeout = timeout_seconds
        self._local = threading.local()
        self._written_lock = threading.Lock()
        self._status_written: dict[str, str] = {}
        """uid → resourceVersion of the last status this process wrote."""

    @property
    def api(self) -> kubernetes.client.ApiClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = kubernetes.client.ApiClient(self.configuration)
            self._local.client = client
        return client

    # -- raw requests ----------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None, content_type: str = "application/json",
                accept: str = "application/json") -> Any:  # fmt: skip
        if query:
            path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        headers = {"Accept": accept, "Content-Type": content_type}
        _, url, headers, serialized, _ = self.api.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self.api.call_api(method, url, header_params=headers, body=serialized, _request_timeout=self.timeout)
        except kubernetes.client.ApiException as e:  # connection-level failures
            raise kopf.TemporaryError(f"API request {method} {path} failed: {e.reason}", delay=5) from None
        except Exception as e:  # urllib3 errors: the API server is away
            raise kopf.TemporaryError(f"API request {method} {path} failed: {type(e).__name__}", delay=5) from None
        data = response.read()
        if response.status >= 400:
            try:
                status = json.loads(data)
            except ValueError:
                status = {}
            causes = tuple(c.get("reason", "") for c in (status.get("details") or {}).get("causes") or [] if isinstance(c, dict))
            raise ApiError(response.status, status.get("reason", response.reason or ""), status.get("message", data[:500].decode(errors="replace")), causes)
        return json.loads(data) if data else None

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request`` with the common error mapping applied."""
        try:
            return self.request(method, path, **kwargs)
        except ApiError as e:
            if e.status == 409 or e.status == 429 or e.status >= 500:
                raise kopf.TemporaryError(f"{method} {path}: {e.message}", delay=2 if e.status == 409 else 10) from None
            raise

    # -- typed helpers ---------------------------------------------------------------------------
    def get(self, resource: Resource, namespace: str | None, name: str) -> dict | None:
        try:
            return self._call("GET", resource.path(namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise kopf.PermanentError(str(e)) from None

    def list(self, resource: Resource, namespace: str | None, label_selector: str | None = None) -> list[dict]:
        result = self._call("GET", resource.path(namespace), query={"labelSelector": label_selector})
        return result.get("items", [])

    def create(self, obj: dict) -> tuple[dict, bool]:
        """Create ``obj``; when it exists already (a retry), return the existing one. → (object, created)."""
        resource = BY_KIND[obj["kind"]]
        namespace = obj["metadata"].get("namespace")
        try:
            return self.request("POST", resource.path(namespace), body=obj), True
        except ApiError as e:
            if e.status == 409 and e.reason == "AlreadyExists":
                existing = self.get(resource, namespace, obj["metadata"]["name"])
                if existing is None:
                    raise kopf.TemporaryError(f"{obj['kind']} {obj['metadata']['name']} is being deleted", delay=2) from None
                return existing, False
            if e.namespace_terminating:
                raise NamespaceTerminating(namespace) from None
            if e.status in (409, 429) or e.status >= 500:
                raise kopf.TemporaryError(f"create {obj['kind']}: {e.message}", delay=5) from None
            raise kopf.PermanentError(f"create {obj['kind']} {obj['metadata']['name']}: {e.message}") from None

    def patch(self, resource: Resource, namespace: str | None, name: str, patch: dict, subresource: str | None = None) -> dict | None:
        """JSON merge patch; None when the object is gone."""
        try:
            return self._call("PATCH", resource.path(namespace, name, subresource), body=patch, content_type="application/merge-patch+json")
        except ApiError as e:
            if e.status == 404:
                return None
            raise kopf.PermanentError(str(e)) from None

    def patch_status(self, resource: Resource, namespace: str, name: str, status: dict) -> dict | None:
        result = self.patch(resource, namespace, name, {"status": status}, subresource="status")
        if result is not None:
            meta = result.get("metadata") or {}
            with self._written_lock:
                self._status_written[meta.get("uid", "")] = meta.get("resourceVersion", "")
        return result

    def wrote_status_since(self, obj: dict) -> bool:
        """Whether this process has written the object's status since this copy of it was read (a copy
        whose status this process never touched, or that is the result of its own last write, is current)."""
        meta = obj.get("metadata") or {}
        with self._written_lock:
            written = self._status_written.get(meta.get("uid", ""))
        return written is not None and written != meta.get("resourceVersion")

    def forget(self, uid: str) -> None:
        with self._written_lock:
            self._status_written.pop(uid, None)

    def secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        """The labels of a Secret (its owner's consent to its use), None when it does not exist. Only the
        metadata is asked for (PartialObjectMetadata): the operator never reads a Secret's data."""
        try:
            meta = self._call("GET", SECRETS.path(namespace, name), accept=METADATA_ONLY)
        except ApiError as e:
            if e.status == 404:
                return None
            raise kopf.TemporaryError(f"reading Secret {name}'s labels: {e.message}", delay=10) from None
        return dict(((meta or {}).get("metadata") or {}).get("labels") or {})

    def post_event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        """Create an Event now (not queued): a reconcile posts its transition's Event before it writes the
        status that records the transition, so a crash in between repeats the Event instead of losing it.
        A server that cannot take it now makes the reconcile retry; an Event it refuses is logged and skipped."""
        import datetime as dt

        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self._call("POST", EVENTS.path(obj["metadata"]["namespace"]), body=event_body(obj, type_, reason, message, now))
        except ApiError as e:
            if e.namespace_terminating:
                return
            logger.warning("could not post Event %s for %s/%s: %s", reason, obj["metadata"]["namespace"], obj["metadata"]["name"], e.message)

    def delete(self, resource: Resource, namespace: str | None, name: str, propagation: str = "Background") -> bool:
        try:
            self._call("DELETE", resource.path(namespace, name), body={"propagationPolicy": propagation})
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise kopf.PermanentError(str(e)) from None


EVENT_MESSAGE_LIMIT = 1024
REPORTING_COMPONENT = "finetune-operator"


def event_body(obj: dict, type_: str, reason: str, message: str, now: str) -> dict:
    """A core/v1 Event about ``obj``, as ``kubectl describe`` and ``kubectl get events`` show them."""
    meta = obj["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", ""),
            "kind": obj.get("kind", ""),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "reason": reason,
        "message": message if len(message) <= EVENT_MESSAGE_LIMIT else message[: EVENT_MESSAGE_LIMIT - 1] + "…",
        "type": type_,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": REPORTING_COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": os.environ.get("HOSTNAME", REPORTING_COMPONENT)[:128],
    }


def owner_reference(owner: dict, controller: bool = True) -> dict:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }
