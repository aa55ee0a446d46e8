"""The local runner's view of the Kubernetes API: plain-dict reads and writes, and list+watch caches.

Everything goes through the official ``kubernetes`` client's typed API classes with
``_preload_content=False``, so objects stay the JSON dicts the server sent (camelCase, no model
round trip) and the code works the same against a real API server and the project's test server.
Patches are JSON merge patches (``application/merge-patch+json``), which every server understands.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("finetune_local.runner")

MERGE_PATCH = "application/merge-patch+json"


def now_iso() -> str:
    """The current UTC time as Kubernetes writes it (RFC 3339, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp, or None."""
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Resource:
    """One resource type: which typed API class serves it and the stem of its method names."""

    api: str  # "CoreV1Api", "BatchV1Api", "AppsV1Api"
    stem: str  # "pod", "job", "deployment", "service", "config_map", "secret"

    @property
    def plural(self) -> str:
        return {"config_map": "configmaps"}.get(self.stem, self.stem + "s")


PODS = Resource("CoreV1Api", "pod")
SERVICES = Resource("CoreV1Api", "service")
CONFIG_MAPS = Resource("CoreV1Api", "config_map")
SECRETS = Resource("CoreV1Api", "secret")
JOBS = Resource("BatchV1Api", "job")
DEPLOYMENTS = Resource("AppsV1Api", "deployment")


class Kube:
    """Dict-in, dict-out calls for the few verbs the runner needs."""

    def __init__(self, api_client: kubernetes.client.ApiClient, request_timeout: float = 15.0) -> None:
        self.api_client = api_client
        self.request_timeout = request_timeout
        self._apis: dict[str, Any] = {}

    def close(self) -> None:
        self.api_client.close()

    def _method(self, resource: Resource, verb: str, namespaced: bool = True, suffix: str = "") -> Callable:
        api = self._apis.get(resource.api)
        if api is None:
            api = self._apis[resource.api] = getattr(kubernetes.client, resource.api)(self.api_client)
        if not namespaced:
            return getattr(api, f"{verb}_{resource.stem}_for_all_namespaces")
        return getattr(api, f"{verb}_namespaced_{resource.stem}{suffix}")

    def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self.request_timeout)
        try:
            response = fn(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            message = exc.reason or ""
            try:
                message = json.loads(exc.body or "{}").get("message") or message
            except (ValueError, AttributeError):
                pass
            raise KubeError(exc.status or 0, message) from None
        except Exception as exc:  # connection refused, timeouts, broken pipes
            raise KubeError(0, f"{type(exc).__name__}: {exc}") from None
        data = response.data
        return json.loads(data) if data else {}

    def list(self, resource: Resource, namespace: str | None) -> tuple[list[dict], str]:
        """Every object of a type (in one namespace or all) and the list's resourceVersion."""
        if namespace:
            body = self._call(self._method(resource, "list"), namespace)
        else:
            body = self._call(self._method(resource, "list", namespaced=False))
        return body.get("items") or [], (body.get("metadata") or {}).get("resourceVersion") or ""

    def get(self, resource: Resource, namespace: str, name: str) -> dict | None:
        try:
            return self._call(self._method(resource, "read"), name, namespace)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, resource: Resource, namespace: str, body: dict) -> dict:
        return self._call(self._method(resource, "create"), namespace, body)

    def patch(self, resource: Resource, namespace: str, name: str, body: dict, status: bool = False) -> dict:
        method = self._method(resource, "patch", suffix="_status" if status else "")
        return self._call(method, name, namespace, body, _content_type=MERGE_PATCH)

    def delete(
        self, resource: Resource, namespace: str, name: str, grace_period_seconds: int | None = None, uid: str | None = None
    ) -> None:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call(self._method(resource, "delete"), name, namespace, body=body)
        except KubeError as exc:
            if exc.status not in (404, 409):  # gone already, or a different object of that name now
                raise

    def watch(self, resource: Resource, namespace: str | None, resource_version: str, timeout_seconds: int):
        """Open a watch; returns the raw streaming HTTP response (read it with ``iter_events``)."""
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version or None,
            "timeout_seconds": timeout_seconds,
            "allow_watch_bookmarks": True,
            "_preload_content": False,
            "_request_timeout": (5, timeout_seconds + 15),
        }
        fn = self._method(resource, "list") if namespace else self._method(resource, "list", namespaced=False)
        args = (namespace,) if namespace else ()
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise KubeError(exc.status or 0, exc.reason or "watch failed") from None


def iter_events(response: Any) -> Iterator[dict]:
    """The watch events (``{"type", "object"}``) on a streaming response."""
    for line in iter_resp_lines(response):
        if line.strip():
            yield json.loads(line)


def _older(candidate: dict, current: dict) -> bool:
    """Whether ``candidate`` is an older version of the same object than ``current``.

    resourceVersions are opaque, but every server in practice (etcd, the test server) uses integers.
    """
    if candidate["metadata"].get("uid") != current["metadata"].get("uid"):
        return False
    try:
        return int(candidate["metadata"]["resourceVersion"]) < int(current["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return False


def _newer_than_version(obj: dict, resource_version: str) -> bool:
    try:
        return int(obj["metadata"]["resourceVersion"]) > int(resource_version)
    except (KeyError, TypeError, ValueError):
        return False


def key_of(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Informer:
    """A list+watch cache of one resource type, kept current by a background thread.

    A watch that ends (server timeout, dropped connection) resumes from the last resourceVersion;
    a ``410 Gone`` or any error relists, with a growing back-off while the server is unreachable.
    ``on_change(kind, obj)`` is called for every added, modified or deleted object.
    """

    WATCH_TIMEOUT_SECONDS = 20

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        namespace: str | None,
        on_change: Callable[[str, dict], None],
        stopping: threading.Event,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.namespace = namespace
        self.on_change = on_change
        self.stopping = stopping
        self.synced = threading.Event()
        self._objects: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{resource.plural}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        response = self._response
        if response is not None:
            for close in ("shutdown", "close"):
                try:
                    getattr(response, close)()
                except Exception:  # noqa: BLE001 - best effort to unblock a read
                    pass

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # cache access ------------------------------------------------------------------------------

    def items(self) -> list[dict]:
        with self._lock:
            return list(self._objects.values())

    def get(self, namespace: str, name: str) -> dict | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def put(self, obj: dict) -> None:
        """Record an object this process just wrote, before its watch event arrives (never a stale one)."""
        with self._lock:
            current = self._objects.get(key_of(obj))
            if current is None or not _older(obj, current):
                self._objects[key_of(obj)] = obj

    def forget(self, obj: dict) -> None:
        with self._lock:
            current = self._objects.get(key_of(obj))
            if current is not None and current["metadata"].get("uid") == obj["metadata"].get("uid"):
                del self._objects[key_of(obj)]

    # the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        resource_version = ""
        while not self.stopping.is_set():
            try:
                if not resource_version:
                    resource_version = self._relist()
                resource_version = self._watch(resource_version)
                failures = 0
            except KubeError as exc:
                if exc.status == 410:
                    resource_version = ""
                    continue
                failures += 1
                resource_version = ""
                if not self.stopping.is_set():
                    log.warning("watching %s failed (%s); retrying", self.resource.plural, exc)
            except Exception as exc:  # noqa: BLE001 - a dropped connection, a bad line: relist and go on
                failures += 1
                resource_version = ""
                if not self.stopping.is_set():
                    log.warning("watch of %s dropped (%s: %s); relisting", self.resource.plural, type(exc).__name__, exc)
            if failures:
                self.stopping.wait(min(0.2 * 2**failures, 5.0))

    def _relist(self) -> str:
        items, resource_version = self.kube.list(self.resource, self.namespace)
        fresh = {key_of(obj): obj for obj in items}
        with self._lock:
            old = self._objects
            for key, obj in old.items():  # written here while the list was on its way: keep it
                if key not in fresh and _newer_than_version(obj, resource_version):
                    fresh[key] = obj
            self._objects = fresh
        for key, obj in old.items():
            if key not in fresh or fresh[key]["metadata"].get("uid") != obj["metadata"].get("uid"):
                self.on_change("DELETED", obj)
        for obj in items:
            self.on_change("MODIFIED", obj)
        self.synced.set()
        return resource_version

    def _watch(self, resource_version: str) -> str:
        response = self.kube.watch(self.resource, self.namespace, resource_version, self.WATCH_TIMEOUT_SECONDS)
        self._response = response
        try:
            for event in iter_events(response):
                if self.stopping.is_set():
                    break
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise KubeError(int(obj.get("code") or 500), obj.get("message") or "watch error")
                resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                if kind == "BOOKMARK":
                    continue
                with self._lock:
                    if kind == "DELETED":
                        self._objects.pop(key_of(obj), None)
                    else:
                        self._objects[key_of(obj)] = obj
                self.on_change(kind, obj)
        finally:
            self._response = None
            try:
                response.release_conn()
            except Exception:  # noqa: BLE001
                pass
        return resource_version


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; returns whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
