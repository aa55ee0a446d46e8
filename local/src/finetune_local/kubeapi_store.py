"""The object store behind the local Kubernetes API server: what the real API server and its garbage
collector do to objects (resourceVersion, generation, status subresource, finalizers, owner references,
namespaces, CRD registration), and the event history that watches replay.

Everything here runs on the server's event loop thread; nothing is thread-safe on its own.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import dataclasses
import datetime
import json
import random
import re
import uuid
from collections.abc import Callable
from typing import Any

from finetune_local import kubeapi_defaults as defaults
from finetune_local import kubeapi_patch as patches
from finetune_local import kubeapi_schema as schemas
from finetune_local.kubeapi_resources import CustomResourceDefinitionError, ResourceRegistry, ResourceType, \
    resources_from_crd

ObjectKey = tuple[str, str]  # (namespace or "", name)
StorageKey = tuple[str, str]  # (group, plural)

NAMESPACES: StorageKey = ("", "namespaces")
CRDS: StorageKey = ("apiextensions.k8s.io", "customresourcedefinitions")
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_ANNOTATION_BYTES = 256 * 1024
"""The total size of an object's annotation keys and values (the real server's TotalAnnotationSizeLimitB)."""


class ApiError(Exception):
    """An error the server answers with a Status object, as the real API server does."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource.qualified_resource} "{name}" not found',
                    {"name": name, "group": resource.group, "kind": resource.plural})


def invalid(resource: ResourceType, name: str, causes: list[str]) -> ApiError:
    """422 Invalid with the real server's message: `Kind.group "name" is invalid: [a, b]`."""
    joined = causes[0] if len(causes) == 1 else "[" + ", ".join(causes) + "]"
    details_causes = []
    for cause in causes:
        field, _, message = cause.partition(": ")
        details_causes.append({"reason": "FieldValueInvalid", "message": cause, "field": field})
    return ApiError(422, "Invalid", f'{resource.qualified_kind} "{name}" is invalid: {joined}',
                    {"name": name, "group": resource.group, "kind": resource.kind, "causes": details_causes})


def conflict(resource: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource.qualified_resource} "{name}": {why}',
                    {"name": name, "group": resource.group, "kind": resource.plural})


def now_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class WatchEvent:
    """One change: the object after it (`obj`) and, for MODIFIED, before it (`old`)."""

    resource_version: int
    storage_key: StorageKey
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


@dataclasses.dataclass(eq=False)
class Subscription:
    """A watcher's queue of events for one kind."""

    storage_key: StorageKey
    queue: asyncio.Queue[WatchEvent | None]


class ResourceVersionTooOld(Exception):
    """The requested resourceVersion is older than the kept history (the watch answers 410 Gone)."""

    def __init__(self, requested: int, oldest: int):
        super().__init__(f"too old resource version: {requested} ({oldest})")


@dataclasses.dataclass
class WriteResult:
    """An object after a write, plus the warnings the server sends in `Warning` headers."""

    obj: dict[str, Any]
    warnings: list[str] = dataclasses.field(default_factory=list)
    created: bool = False


def _spec_part(obj: dict[str, Any], with_status: bool) -> dict[str, Any]:
    """Everything a generation bump looks at: the object without metadata (and status, when it is a subresource)."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind") and
            not (with_status and k == "status")}


class ObjectStore:
    """All objects, the global resourceVersion counter, the watch history and the garbage collector."""

    def __init__(self, registry: ResourceRegistry, *, history_limit: int = 10_000,
                 schedule: Callable[[float, Callable[[], None]], None] | None = None,
                 orphan_gc_delay: float = 1.0) -> None:
        self.registry = registry
        self.objects: dict[StorageKey, dict[ObjectKey, dict[str, Any]]] = collections.defaultdict(dict)
        self.by_uid: dict[str, tuple[StorageKey, ObjectKey]] = {}
        self.resource_version = 0
        self.history: collections.deque[WatchEvent] = collections.deque()
        self.history_limit = history_limit
        self.compacted_version = 0
        self.subscriptions: set[Subscription] = set()
        self.pending_propagation: dict[str, str] = {}
        # owner uid -> the objects whose ownerReferences name it (what the garbage collector visits)
        self.dependents: dict[str, set[tuple[StorageKey, ObjectKey]]] = collections.defaultdict(set)
        self._schedule = schedule
        self._service_ips = 0
        self.orphan_gc_delay = orphan_gc_delay
        namespace_type = registry.lookup("", "v1", "namespaces")
        assert namespace_type is not None
        for name in INITIAL_NAMESPACES:
            self.create(namespace_type, None, {"metadata": {"name": name}})

    # ------------------------------------------------------------------------------ versions & events

    def _next_version(self) -> str:
        self.resource_version += 1
        return str(self.resource_version)

    def _emit(self, storage_key: StorageKey, type_: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        event = WatchEvent(int(obj["metadata"]["resourceVersion"]), storage_key, type_, copy.deepcopy(obj),
                           copy.deepcopy(old) if old is not None else None)
        self.history.append(event)
        while len(self.history) > self.history_limit:
            self.compacted_version = self.history.popleft().resource_version
        for subscription in self.subscriptions:
            if subscription.storage_key == storage_key:
                subscription.queue.put_nowait(event)

    def _index_owners(self, storage_key: StorageKey, key: ObjectKey, before: dict[str, Any] | None,
                      after: dict[str, Any] | None) -> None:
        def owners(obj: dict[str, Any] | None) -> set[str]:
            refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
            return {ref.get("uid", "") for ref in refs if isinstance(ref, dict)}

        old_owners, new_owners = owners(before), owners(after)
        for uid in old_owners - new_owners:
            self.dependents[uid].discard((storage_key, key))
            if not self.dependents[uid]:
                del self.dependents[uid]
        for uid in new_owners - old_owners:
            self.dependents[uid].add((storage_key, key))

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: watches from any older resourceVersion get 410 Gone."""
        self.history.clear()
        self.compacted_version = self.resource_version

    def subscribe(self, storage_key: StorageKey, since: int | None) -> tuple[list[WatchEvent], Subscription]:
        """Events to replay (all current objects as ADDED when since is None) and a queue for what follows."""
        if since is None:
            replay = [
                WatchEvent(int(obj["metadata"]["resourceVersion"]), storage_key, "ADDED", copy.deepcopy(obj))
                for _, obj in sorted(self.objects[storage_key].items())
            ]
        else:
            if since < self.compacted_version:
                raise ResourceVersionTooOld(since, self.compacted_version + 1)
            replay = [e for e in self.history if e.storage_key == storage_key and e.resource_version > since]
        subscription = Subscription(storage_key, asyncio.Queue())
        self.subscriptions.add(subscription)
        return replay, subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    def close_subscriptions(self) -> None:
        for subscription in self.subscriptions:
            subscription.queue.put_nowait(None)

    # ------------------------------------------------------------------------------------- reading

    def _find(self, resource: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects[resource.storage_key].get((namespace or "", name))
        if obj is None:
            raise not_found(resource, name)
        return obj

    def get(self, resource: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._find(resource, namespace, name))

    def list(self, resource: ResourceType, namespace: str | None, selector: patches.Selector,
             limit: int | None = None, continue_token: str | None = None) -> tuple[list[dict[str, Any]], str, int]:
        """Matching objects sorted by namespace and name; returns (items, continue token, remaining count)."""
        start_after: list[str] | None = None
        if continue_token:
            try:
                start_after = json.loads(base64.urlsafe_b64decode(continue_token.encode()))["start"]
            except (ValueError, KeyError, TypeError) as error:
                raise ApiError(400, "BadRequest", f"continue key is not valid: {error}") from None
        items = []
        for key, obj in sorted(self.objects[resource.storage_key].items()):
            if namespace and key[0] != namespace:
                continue
            if start_after is not None and list(key) <= start_after:
                continue
            if selector.matches(obj):
                items.append((key, obj))
        token, remaining = "", 0
        if limit and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            token = base64.urlsafe_b64encode(json.dumps({"start": list(items[-1][0])}).encode()).decode()
        return [copy.deepcopy(obj) for _, obj in items], token, remaining

    def exists_uid(self, uid: str) -> bool:
        return uid in self.by_uid

    # ------------------------------------------------------------------------------------- creating

    def create(self, resource: ResourceType, namespace: str | None, body: dict[str, Any],
               *, dry_run: bool = False, strict_fields: bool = False) -> WriteResult:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {}) or {}
        obj["metadata"] = metadata
        self._check_kind(resource, obj)
        obj["apiVersion"] = resource.group_version
        obj["kind"] = resource.kind
        if resource.namespaced:
            body_namespace = metadata.get("namespace")
            if namespace and body_namespace and body_namespace != namespace:
                raise ApiError(400, "BadRequest",
                               "the namespace of the provided object does not match the namespace sent on the request")
            namespace = namespace or body_namespace
            if not namespace:
                raise ApiError(400, "BadRequest", "the server could not find the requested resource: namespace "
                                                  "is required for a namespaced resource")
            metadata["namespace"] = namespace
            self._check_namespace_open(namespace)
        else:
            metadata.pop("namespace", None)
            namespace = None
        if not metadata.get("name"):
            if metadata.get("generateName"):
                metadata["name"] = metadata["generateName"] + "".join(random.choices(_GENERATE_ALPHABET, k=5))
            else:
                raise invalid(resource, "", ["metadata.name: Required value: name or generateName is required"])
        name = metadata["name"]
        for field in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation", "selfLink", "managedFields"):
            metadata.pop(field, None)
        if resource.has_status:
            obj.pop("status", None)  # status is written through the status subresource only
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now_timestamp()
        if resource.has_generation:
            metadata["generation"] = 1
        warnings = self._admit(resource, obj, None)
        self._check_unknown(warnings, strict_fields)
        key = (namespace or "", name)
        if key in self.objects[resource.storage_key]:
            raise ApiError(409, "AlreadyExists", f'{resource.qualified_resource} "{name}" already exists',
                           {"name": name, "group": resource.group, "kind": resource.plural})
        if resource.storage_key == CRDS:
            self._prepare_crd(obj)
        if dry_run:
            return WriteResult(obj, warnings, created=True)
        metadata["resourceVersion"] = self._next_version()
        self.objects[resource.storage_key][key] = obj
        self.by_uid[metadata["uid"]] = (resource.storage_key, key)
        self._index_owners(resource.storage_key, key, None, obj)
        self._emit(resource.storage_key, "ADDED", obj)
        if resource.storage_key == CRDS:
            self.registry.register_crd(name, resources_from_crd(obj))
        self._watch_for_missing_owners(resource, obj)
        return WriteResult(copy.deepcopy(obj), warnings, created=True)

    def _check_kind(self, resource: ResourceType, obj: dict[str, Any]) -> None:
        kind = obj.get("kind")
        if kind and kind != resource.kind:
            raise ApiError(400, "BadRequest", f"the API version in the data ({obj.get('apiVersion')}) or kind "
                                              f"({kind}) does not match the endpoint ({resource.group_version}, "
                                              f"{resource.kind})")

    def _check_namespace_open(self, namespace: str) -> None:
        ns = self.objects[NAMESPACES].get(("", namespace))
        if ns is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"unable to create new content in namespace {namespace} because it "
                                             f"is being terminated",
                           {"name": namespace, "kind": "namespaces",
                            "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]})

    @staticmethod
    def _check_unknown(warnings: list[str], strict: bool) -> None:
        """With fieldValidation=Strict (what kubectl sends), unknown fields are an error, not a warning."""
        unknown = [w for w in warnings if w.startswith("unknown field")]
        if strict and unknown:
            message = "strict decoding error: " + ", ".join(unknown)
            raise ApiError(400, "BadRequest", message)

    # ------------------------------------------------------------------------------------- admission

    def _admit(self, resource: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
        """Validate and default an object before it is stored; returns warnings, raises 422 Invalid."""
        metadata = obj["metadata"]
        name = metadata.get("name", "")
        errors: list[str] = []
        warnings: list[str] = []
        label_name = resource.storage_key in (NAMESPACES, ("", "services"))
        pattern, limit = (_DNS_LABEL, 63) if label_name else (_DNS_SUBDOMAIN, 253)
        if resource.storage_key == CRDS:
            pattern = _DNS_SUBDOMAIN
        if old is None and (len(name) > limit or not pattern.match(name)):
            what = "RFC 1123 label" if label_name else "RFC 1123 subdomain"
            allowed = "'-'" if label_name else "'-' or '.'"
            errors.append(f'metadata.name: Invalid value: "{name}": a lowercase {what} must consist of lower case '
                          f"alphanumeric characters, {allowed}, and must start and end with an alphanumeric "
                          f"character")
        for key, value in (metadata.get("labels") or {}).items():
            prefix, _, label = key.rpartition("/")
            if not _LABEL_NAME.match(label) or len(label) > 63 or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
                errors.append(f'metadata.labels: Invalid value: "{key}": name part must consist of alphanumeric '
                              f"characters, '-', '_' or '.', and must start and end with an alphanumeric character")
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                errors.append(f'metadata.labels: Invalid value: {json.dumps(value)}: a valid label must be an empty '
                              f"string or consist of alphanumeric characters, '-', '_' or '.', and must start and "
                              f"end with an alphanumeric character, at most 63 characters")
        for key, value in (metadata.get("annotations") or {}).items():
            if not isinstance(value, str):
                errors.append(f"metadata.annotations: Invalid value: {json.dumps(value)}: must be a string")
        annotation_bytes = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in (metadata.get("annotations") or {}).items())
        if annotation_bytes > MAX_ANNOTATION_BYTES:
            errors.append(f"metadata.annotations: Too long: may not be more than {MAX_ANNOTATION_BYTES} bytes")
        for index, ref in enumerate(metadata.get("ownerReferences") or []):
            for field in ("apiVersion", "kind", "name", "uid"):
                if not ref.get(field):
                    errors.append(f"metadata.ownerReferences[{index}].{field}: Required value")
        if resource.custom:
            admitted, unknown, schema_errors = schemas.admit_custom_resource(obj, resource.schema, old)
            obj.clear()
            obj.update(admitted)
            errors.extend(schema_errors)
            warnings.extend(f'unknown field "{path}"' for path in unknown)
        else:
            errors.extend(self._admit_builtin(resource, obj, old))
        if errors:
            raise invalid(resource, name, errors)
        return warnings

    def _admit_builtin(self, resource: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
        """The built-in kinds' own rules that an operator is most likely to trip over."""
        errors: list[str] = []
        key = resource.storage_key
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        if key == ("", "secrets"):
            string_data = obj.pop("stringData", None) or {}
            data = obj.setdefault("data", {}) if string_data else obj.get("data") or {}
            for item, value in string_data.items():
                data[item] = base64.b64encode(str(value).encode()).decode()
            for item, value in data.items():
                try:
                    base64.b64decode(value, validate=True)
                except (ValueError, TypeError):
                    errors.append(f"data[{item}]: Invalid value: \"<secret contents redacted>\": illegal base64 data")
            obj.setdefault("type", "Opaque")
        if key in (("", "configmaps"), ("", "secrets")) and old is not None and old.get("immutable"):
            for field in ("data", "binaryData", "immutable"):
                if obj.get(field) != old.get(field):
                    errors.append(f"{field}: Forbidden: field is immutable when `immutable` is set")
        if key in (("", "configmaps"), ("", "secrets")):
            size = sum(len(str(k)) + len(str(v)) for field in ("data", "binaryData")
                       for k, v in (obj.get(field) or {}).items())
            if size > MAX_CONFIG_BYTES:
                errors.append(f"[]: Too long: must have at most {MAX_CONFIG_BYTES} bytes")
        if key == NAMESPACES and old is None:
            obj["status"] = {"phase": "Active"}
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        if key == ("", "pods"):
            containers = spec.get("containers")
            if not containers:
                errors.append("spec.containers: Required value")
            for index, container in enumerate(containers or []):
                if not container.get("name"):
                    errors.append(f"spec.containers[{index}].name: Required value")
                if not container.get("image"):
                    errors.append(f"spec.containers[{index}].image: Required value")
            defaults.default_pod(obj)
            if old is None:
                obj["status"] = {"phase": "Pending", "qosClass": defaults.pod_qos_class(spec)}
            elif (obj.get("status") or {}).get("qosClass") != (old.get("status") or {}).get("qosClass"):
                # set once at creation, as the real server does; a later change is refused
                value = (obj.get("status") or {}).get("qosClass")
                errors.append(f"status.qosClass: Invalid value: {json.dumps(value or '')}: field is immutable")
            elif old.get("spec") != spec and not self._pod_spec_change_allowed(old.get("spec") or {}, spec):
                errors.append("spec: Forbidden: pod updates may not change fields other than "
                              "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                              "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing "
                              "tolerations) or `spec.terminationGracePeriodSeconds`")
        if key == ("", "persistentvolumeclaims") and old is None:
            obj["status"] = {"phase": "Pending"}
        if key in (("apps", "deployments"), ("apps", "statefulsets"), ("apps", "replicasets")):
            errors.extend(self._selector_matches_template(spec))
            if key == ("apps", "deployments"):
                defaults.default_deployment(spec)
            else:
                spec.setdefault("replicas", 1)
                defaults.default_template(spec)
        if key == ("", "services"):
            defaults.default_service(spec, (old or {}).get("spec"), self._allocate_service_ip)
            obj["spec"] = spec
        if key == ("batch", "jobs"):
            errors.extend(self._admit_job(obj, spec, old))
        return errors

    def _allocate_service_ip(self) -> str:
        self._service_ips += 1
        return f"10.96.{self._service_ips // 250}.{self._service_ips % 250 + 1}"

    @staticmethod
    def _pod_spec_change_allowed(old: dict[str, Any], new: dict[str, Any]) -> bool:
        def without_mutable(spec: dict[str, Any]) -> dict[str, Any]:
            spec = copy.deepcopy(spec)
            for field in ("containers", "initContainers"):
                for container in spec.get(field) or []:
                    container.pop("image", None)
            for field in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
                spec.pop(field, None)
            return spec
        return without_mutable(old) == without_mutable(new)

    @staticmethod
    def _selector_matches_template(spec: dict[str, Any]) -> list[str]:
        selector = (spec.get("selector") or {}).get("matchLabels")
        if not spec.get("selector"):
            return ["spec.selector: Required value"]
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if selector and any(labels.get(k) != v for k, v in selector.items()):
            return [f"spec.template.metadata.labels: Invalid value: {json.dumps(labels)}: `selector` does not "
                    f"match template `labels`"]
        return []

    @staticmethod
    def _admit_job(obj: dict[str, Any], spec: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
        errors = []
        template = spec.get("template") or {}
        pod_spec = template.get("spec") or {}
        if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
            errors.append("spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"")
        if not pod_spec.get("containers"):
            errors.append("spec.template.spec.containers: Required value")
        defaults.default_template(spec)
        if old is None:
            uid = obj["metadata"]["uid"]
            name = obj["metadata"]["name"]
            controller_labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                                 "controller-uid": uid, "job-name": name}
            if not spec.get("manualSelector"):
                spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
                template.setdefault("metadata", {}).setdefault("labels", {}).update(controller_labels)
            spec.setdefault("backoffLimit", 6)
            if "completions" not in spec and "parallelism" not in spec:
                spec["completions"] = 1
                spec["parallelism"] = 1
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
        else:
            old_spec = old.get("spec") or {}
            if old_spec.get("template") != spec.get("template") and not old_spec.get("suspend"):
                errors.append("spec.template: Invalid value: \"object\": field is immutable")
            if old_spec.get("selector") != spec.get("selector"):
                errors.append("spec.selector: Invalid value: \"object\": field is immutable")
            if old_spec.get("completionMode") != spec.get("completionMode"):
                errors.append("spec.completionMode: Invalid value: \"object\": field is immutable")
        return errors

    def _prepare_crd(self, crd: dict[str, Any], previous_status: dict[str, Any] | None = None) -> None:
        """Check a CRD as the real server does and give it the status it reports once established."""
        try:
            resources_from_crd(crd)
        except CustomResourceDefinitionError as error:
            resource = self.registry.by_storage_key(CRDS)
            assert resource is not None
            raise invalid(resource, crd["metadata"].get("name", ""),
                          [f"{field}: {message}" for field, message in error.causes]) from None
        names = dict(crd["spec"]["names"])
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
        if previous_status and previous_status.get("acceptedNames") == names:
            crd["status"] = copy.deepcopy(previous_status)
            return
        crd["status"] = {
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now_timestamp()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now_timestamp()},
            ],
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
        }

    # ------------------------------------------------------------------------------------- updating

    def update(self, resource: ResourceType, namespace: str | None, name: str, body: dict[str, Any],
               *, subresource: str | None = None, dry_run: bool = False, strict_fields: bool = False,
               precondition_version: str | None = None) -> WriteResult:
        """PUT: replace an object (or its status); a stale metadata.resourceVersion is a 409 Conflict."""
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        old = self._find(resource, namespace, name)
        self._check_kind(resource, body)
        metadata = body.get("metadata") or {}
        if metadata.get("name") and metadata["name"] != name:
            raise ApiError(400, "BadRequest", f'the name of the object ({metadata["name"]}) does not match the '
                                              f'name on the URL ({name})')
        requested = metadata.get("resourceVersion") or precondition_version
        if requested and requested != old["metadata"]["resourceVersion"]:
            raise conflict(resource, name, "the object has been modified; please apply your changes to the latest "
                                           "version and try again")
        return self._commit(resource, old, copy.deepcopy(body), subresource, dry_run, strict_fields)

    def patch(self, resource: ResourceType, namespace: str | None, name: str, patch_type: str, patch: Any,
              *, subresource: str | None = None, dry_run: bool = False, strict_fields: bool = False,
              force_create: bool = False) -> WriteResult:
        """PATCH with a merge, JSON, strategic merge or apply patch; a resourceVersion in it is a precondition."""
        current = self.objects[resource.storage_key].get(((namespace or "") if resource.namespaced else "", name))
        if current is None:
            if patch_type == "apply" and isinstance(patch, dict):
                body = copy.deepcopy(patch)
                body.setdefault("metadata", {})["name"] = name
                return self.create(resource, namespace, body, dry_run=dry_run, strict_fields=strict_fields)
            raise not_found(resource, name)
        base = copy.deepcopy(current)
        try:
            if patch_type == "json":
                patched = patches.json_patch(base, patch)
            elif patch_type == "strategic":
                if resource.custom:
                    raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                   "accepted media types include: application/json-patch+json, "
                                   "application/merge-patch+json, application/apply-patch+yaml")
                patched = patches.strategic_merge_patch(base, patch)
            elif patch_type in ("merge", "apply"):
                if not isinstance(patch, dict):
                    raise patches.PatchError("merge patch must be a JSON object")
                patched = patches.merge_patch(base, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {patch_type!r}")
        except patches.PatchError as error:
            raise ApiError(422, "Invalid", str(error)) from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patch produced something that is not an object")
        requested = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
        if requested and requested != current["metadata"]["resourceVersion"]:
            raise conflict(resource, name, "the object has been modified; please apply your changes to the latest "
                                           "version and try again")
        return self._commit(resource, current, patched, subresource, dry_run, strict_fields)

    def _commit(self, resource: ResourceType, old: dict[str, Any], new: dict[str, Any], subresource: str | None,
                dry_run: bool, strict_fields: bool) -> WriteResult:
        name = old["metadata"]["name"]
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif subresource not in (None, "finalize"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        else:
            if resource.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        new["apiVersion"] = old["apiVersion"]
        new["kind"] = old["kind"]
        metadata = new.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
            new["metadata"] = metadata
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation", "resourceVersion"):
            if field in old["metadata"]:
                metadata[field] = old["metadata"][field]
            else:
                metadata.pop(field, None)
        metadata.pop("managedFields", None)
        old_finalizers = old["metadata"].get("finalizers") or []
        new_finalizers = metadata.get("finalizers") or []
        if "finalizers" in metadata and not new_finalizers:
            metadata.pop("finalizers")
        if old["metadata"].get("deletionTimestamp"):
            added = [f for f in new_finalizers if f not in old_finalizers]
            if added:
                raise invalid(resource, name, [f"metadata.finalizers: Forbidden: no new finalizers can be added if "
                                               f"the object is being deleted, found new finalizers {added}"])
        warnings = self._admit(resource, new, old)
        self._check_unknown(warnings, strict_fields)
        if resource.storage_key == CRDS:
            self._prepare_crd(new, old.get("status"))
        if resource.has_generation and subresource != "status" and \
                _spec_part(new, resource.has_status) != _spec_part(old, resource.has_status):
            metadata["generation"] = old["metadata"].get("generation", 0) + 1
        if new == old:
            return WriteResult(copy.deepcopy(old), warnings)
        if dry_run:
            return WriteResult(new, warnings)
        metadata["resourceVersion"] = self._next_version()
        key = (metadata.get("namespace", ""), name)
        self.objects[resource.storage_key][key] = new
        self._index_owners(resource.storage_key, key, old, new)
        self._emit(resource.storage_key, "MODIFIED", new, old)
        if resource.storage_key == CRDS:
            self.registry.register_crd(name, resources_from_crd(new))
        if metadata.get("deletionTimestamp") and not metadata.get("finalizers") and \
                not (resource.storage_key == NAMESPACES and self._namespace_has_content(name)):
            self._remove(resource.storage_key, key)
            return WriteResult(copy.deepcopy(new), warnings)
        if metadata.get("ownerReferences") != old["metadata"].get("ownerReferences"):
            self._watch_for_missing_owners(resource, new)
        return WriteResult(copy.deepcopy(new), warnings)

    # ------------------------------------------------------------------------------------- deleting

    def delete(self, resource: ResourceType, namespace: str | None, name: str, options: dict[str, Any],
               *, dry_run: bool = False) -> tuple[dict[str, Any], bool]:
        """DELETE; returns (the object as it is now, whether it is gone already)."""
        obj = self._find(resource, namespace, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != obj["metadata"]["uid"]:
            raise conflict(resource, name, f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                                           f"UID in object meta: {obj['metadata']['uid']}")
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise conflict(resource, name, "the object has been modified; please apply your changes to the latest "
                                           "version and try again")
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        policy = policy or resource.default_propagation
        if policy not in ("Orphan", "Background", "Foreground"):
            raise ApiError(422, "Invalid", f'DeleteOptions.propagationPolicy: Unsupported value: "{policy}": '
                                           f'supported values: "Foreground", "Background", "Orphan"')
        if dry_run:
            return copy.deepcopy(obj), False
        key = (obj["metadata"].get("namespace", ""), name)
        if obj["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(obj), False
        is_namespace = resource.storage_key == NAMESPACES
        if is_namespace and name in ("default", "kube-system", "kube-public"):
            raise ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                           {"name": name, "kind": "namespaces"})
        self.pending_propagation[obj["metadata"]["uid"]] = policy
        if obj["metadata"].get("finalizers") or is_namespace:
            old = copy.deepcopy(obj)
            obj["metadata"]["deletionTimestamp"] = now_timestamp()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            if resource.has_generation:
                obj["metadata"]["generation"] = obj["metadata"].get("generation", 0) + 1
            if is_namespace:
                obj.setdefault("status", {})["phase"] = "Terminating"
            obj["metadata"]["resourceVersion"] = self._next_version()
            self._emit(resource.storage_key, "MODIFIED", obj, old)
            if is_namespace:
                self._empty_namespace(name)
                if key in self.objects[NAMESPACES] and not self._namespace_has_content(name) and \
                        not obj["metadata"].get("finalizers"):
                    self._remove(NAMESPACES, key)
                return copy.deepcopy(obj), key not in self.objects[NAMESPACES]
            return copy.deepcopy(obj), False
        self._remove(resource.storage_key, key)
        return copy.deepcopy(obj), True

    def _remove(self, storage_key: StorageKey, key: ObjectKey) -> None:
        """Remove an object for good: a DELETED event, then garbage collection of its dependents."""
        obj = self.objects[storage_key].pop(key, None)
        if obj is None:
            return
        uid = obj["metadata"]["uid"]
        self.by_uid.pop(uid, None)
        self._index_owners(storage_key, key, obj, None)
        obj["metadata"]["resourceVersion"] = self._next_version()
        self._emit(storage_key, "DELETED", obj)
        policy = self.pending_propagation.pop(uid, "Background")
        if storage_key == CRDS:
            for resource in self.registry.unregister_crd(obj["metadata"]["name"]):
                for child_key in list(self.objects[resource.storage_key]):
                    self._remove(resource.storage_key, child_key)
        self._collect_dependents(uid, policy)
        namespace = key[0]
        if namespace:
            ns = self.objects[NAMESPACES].get(("", namespace))
            if ns is not None and ns["metadata"].get("deletionTimestamp") and not self._namespace_has_content(namespace) \
                    and not ns["metadata"].get("finalizers"):
                self._remove(NAMESPACES, ("", namespace))

    def _namespace_has_content(self, namespace: str) -> bool:
        return any(key[0] == namespace for objects in self.objects.values() for key in objects)

    def _empty_namespace(self, namespace: str) -> None:
        for storage_key, objects in list(self.objects.items()):
            resource = self.registry.by_storage_key(storage_key)
            for key in [k for k in objects if k[0] == namespace]:
                if resource is not None and key in objects:
                    self.delete(resource, namespace, key[1], {"propagationPolicy": "Background"})

    def _collect_dependents(self, owner_uid: str, policy: str) -> None:
        """What the garbage collector does once an owner is gone: delete (or orphan) its dependents."""
        for storage_key, key in sorted(self.dependents.get(owner_uid, ())):
            resource = self.registry.by_storage_key(storage_key)
            obj = self.objects[storage_key].get(key)
            if resource is None or obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            remaining = [ref for ref in refs if ref.get("uid") != owner_uid]
            if policy == "Orphan" or any(self.exists_uid(ref.get("uid", "")) for ref in remaining):
                self._set_owner_references(resource, key, obj, remaining)
            else:
                self.delete(resource, key[0] or None, key[1], {"propagationPolicy": "Background"})

    def _set_owner_references(self, resource: ResourceType, key: ObjectKey, obj: dict[str, Any],
                              refs: list[dict[str, Any]]) -> None:
        old = copy.deepcopy(obj)
        if refs:
            obj["metadata"]["ownerReferences"] = refs
        else:
            obj["metadata"].pop("ownerReferences", None)
        obj["metadata"]["resourceVersion"] = self._next_version()
        self._index_owners(resource.storage_key, key, old, obj)
        self._emit(resource.storage_key, "MODIFIED", obj, old)

    def _watch_for_missing_owners(self, resource: ResourceType, obj: dict[str, Any]) -> None:
        """The garbage collector deletes dependents none of whose owners exist (a wrong owner uid, say)."""
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs or self._schedule is None or any(self.exists_uid(ref.get("uid", "")) for ref in refs):
            return
        storage_key = resource.storage_key
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        uid = obj["metadata"]["uid"]

        def collect() -> None:
            current = self.objects[storage_key].get(key)
            if current is None or current["metadata"]["uid"] != uid:
                return
            current_refs = current["metadata"].get("ownerReferences") or []
            if current_refs and not any(self.exists_uid(ref.get("uid", "")) for ref in current_refs):
                live = self.registry.by_storage_key(storage_key)
                if live is not None:
                    self.delete(live, key[0] or None, key[1], {"propagationPolicy": "Background"})

        self._schedule(self.orphan_gc_delay, collect)
