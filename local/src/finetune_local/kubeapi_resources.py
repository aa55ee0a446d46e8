"""Resource types served by the local Kubernetes API server: the built-in kinds and those that CRDs add."""

from __future__ import annotations

import dataclasses
from typing import Any

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SUBRESOURCE_VERBS = ["get", "patch", "update"]


@dataclasses.dataclass
class PrinterColumn:
    """One column of `kubectl get` output, as in a CRD's additionalPrinterColumns."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclasses.dataclass
class ResourceType:
    """One resource (a plural name in one group/version) with what the server needs to serve it."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: list[str] = dataclasses.field(default_factory=list)
    categories: list[str] = dataclasses.field(default_factory=list)
    has_status: bool = False
    has_generation: bool = False
    # The kind's own field selectors (metadata.name and metadata.namespace are always allowed).
    field_labels: tuple[str, ...] = ()
    printer_columns: list[PrinterColumn] = dataclasses.field(default_factory=list)
    # The CRD's openAPIV3Schema for this version (custom resources only).
    schema: dict[str, Any] | None = None
    custom: bool = False
    # Default deletion propagation when the client does not say (batch/v1 Jobs orphan their pods).
    default_propagation: str = "Background"
    extra_subresources: tuple[str, ...] = ()
    # All versions the kind is served in (custom resources may have several).
    served_versions: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects of one kind share storage across the versions it is served in."""
        return (self.group, self.plural)

    @property
    def qualified_kind(self) -> str:
        """`FineTuneJob.finetune.dev` or `ConfigMap`, as the real server names kinds in errors."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def qualified_resource(self) -> str:
        """`finetunejobs.finetune.dev` or `configmaps`, as the real server names resources in errors."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def discovery_entries(self) -> list[dict[str, Any]]:
        """The APIResource entries of this resource for /api/v1 or /apis/<group>/<version>."""
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        entries = [main]
        subresources = (["status"] if self.has_status else []) + list(self.extra_subresources)
        for sub in subresources:
            verbs = ["get"] if sub == "log" else list(SUBRESOURCE_VERBS)
            kind = "Scale" if sub == "scale" else self.kind
            entry = {"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced,
                     "kind": kind, "verbs": verbs}
            if sub == "scale":
                entry["group"] = "autoscaling"
                entry["version"] = "v1"
            entries.append(entry)
        return entries


def _age() -> PrinterColumn:
    return PrinterColumn("Age", ".metadata.creationTimestamp", "date")


def _builtin(group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
             short: tuple[str, ...] = (), categories: tuple[str, ...] = (), status: bool = False,
             generation: bool = False, fields: tuple[str, ...] = (),
             columns: tuple[PrinterColumn, ...] = (), propagation: str = "Background",
             extra: tuple[str, ...] = (), age: bool = True) -> ResourceType:
    return ResourceType(
        group=group, version=version, plural=plural, singular=kind.lower(), kind=kind, namespaced=namespaced,
        short_names=list(short), categories=list(categories), has_status=status, has_generation=generation,
        field_labels=fields, printer_columns=[*columns, *([_age()] if age else [])], default_propagation=propagation,
        extra_subresources=extra, served_versions=(version,),
    )


def builtin_resources() -> list[ResourceType]:
    """The built-in kinds this server knows, with the shapes kubectl, kopf and the client expect."""
    pc = PrinterColumn
    return [
        _builtin("", "v1", "namespaces", "Namespace", namespaced=False, short=("ns",), status=True,
                 fields=("status.phase",), columns=(pc("Status", ".status.phase"),), extra=("finalize",)),
        _builtin("", "v1", "configmaps", "ConfigMap", short=("cm",),
                 columns=(pc("Data", ".data", "integer"),)),
        _builtin("", "v1", "secrets", "Secret", fields=("type",), columns=(pc("Type", ".type"),)),
        _builtin("", "v1", "services", "Service", short=("svc",), categories=("all",), status=True,
                 columns=(pc("Type", ".spec.type"), pc("Cluster-IP", ".spec.clusterIP"))),
        _builtin("", "v1", "pods", "Pod", short=("po",), categories=("all",), status=True, generation=True,
                 fields=("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                         "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"),
                 columns=(pc("Status", ".status.phase"),), extra=("log",)),
        _builtin("", "v1", "events", "Event", short=("ev",),
                 fields=("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                         "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                         "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"),
                 columns=(pc("Type", ".type"), pc("Reason", ".reason"), pc("Message", ".message"))),
        _builtin("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",)),
        _builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",), status=True,
                 columns=(pc("Status", ".status.phase"),)),
        _builtin("events.k8s.io", "v1", "events", "Event", short=("ev",),
                 fields=("regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid",
                         "reason", "reportingController", "type"),
                 columns=(pc("Type", ".type"), pc("Reason", ".reason"), pc("Note", ".note"))),
        _builtin("apps", "v1", "deployments", "Deployment", short=("deploy",), categories=("all",), status=True,
                 generation=True,
                 columns=(pc("Ready", ".status.readyReplicas", "integer"),
                          pc("Available", ".status.availableReplicas", "integer")),
                 extra=("scale",)),
        _builtin("apps", "v1", "statefulsets", "StatefulSet", short=("sts",), categories=("all",), status=True,
                 generation=True, columns=(pc("Ready", ".status.readyReplicas", "integer"),), extra=("scale",)),
        _builtin("apps", "v1", "replicasets", "ReplicaSet", short=("rs",), categories=("all",), status=True,
                 generation=True, columns=(pc("Ready", ".status.readyReplicas", "integer"),), extra=("scale",)),
        _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role"),
        _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding",
                 columns=(pc("Role", ".roleRef.name"),)),
        _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
        _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False,
                 columns=(pc("Role", ".roleRef.name"),)),
        _builtin("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short=("netpol",), generation=True),
        _builtin("networking.k8s.io", "v1", "ingresses", "Ingress", short=("ing",), status=True, generation=True),
        _builtin("batch", "v1", "jobs", "Job", categories=("all",), status=True, generation=True,
                 fields=("status.successful",),
                 columns=(pc("Succeeded", ".status.succeeded", "integer"), pc("Failed", ".status.failed", "integer")),
                 propagation="Orphan"),
        _builtin("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short=("hpa",),
                 categories=("all",), status=True, generation=True,
                 columns=(pc("MinPods", ".spec.minReplicas", "integer"), pc("MaxPods", ".spec.maxReplicas", "integer"),
                          pc("Replicas", ".status.currentReplicas", "integer"))),
        _builtin("coordination.k8s.io", "v1", "leases", "Lease",
                 columns=(pc("Holder", ".spec.holderIdentity"),)),
        _builtin("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",), status=True,
                 generation=True),
        _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                 namespaced=False, short=("crd", "crds"), categories=("api-extensions",), status=True,
                 generation=True, columns=(pc("Created At", ".metadata.creationTimestamp"),), age=False),
    ]


class CustomResourceDefinitionError(ValueError):
    """A CRD the real server would refuse; `causes` are (field path, message) pairs."""

    def __init__(self, causes: list[tuple[str, str]]):
        self.causes = causes
        super().__init__("; ".join(f"{field}: {message}" for field, message in causes))


def _check_schema_structure(schema: Any, path: str, causes: list[tuple[str, str]]) -> None:
    """The few structural-schema rules a CRD author trips over most often."""
    if not isinstance(schema, dict):
        return
    if "properties" in schema and schema.get("additionalProperties") not in (None, True):
        causes.append((f"{path}.additionalProperties",
                       "Forbidden: additionalProperties and properties are mutual exclusive"))
    for name, sub in (schema.get("properties") or {}).items():
        _check_schema_structure(sub, f"{path}.properties[{name}]", causes)
    if isinstance(schema.get("items"), dict):
        _check_schema_structure(schema["items"], f"{path}.items", causes)
    if isinstance(schema.get("additionalProperties"), dict):
        _check_schema_structure(schema["additionalProperties"], f"{path}.additionalProperties", causes)


def resources_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types (one per served version) a CustomResourceDefinition declares.

    Raises CustomResourceDefinitionError for what the real server rejects with 422 Invalid.
    """
    causes: list[tuple[str, str]] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    kind = names.get("kind") or ""
    scope = spec.get("scope")
    if not group:
        causes.append(("spec.group", "Required value"))
    elif "." not in group:
        causes.append(("spec.group", f'Invalid value: "{group}": should be a domain with at least one dot'))
    if not plural:
        causes.append(("spec.names.plural", "Required value"))
    if not kind:
        causes.append(("spec.names.kind", "Required value"))
    if scope not in ("Namespaced", "Cluster"):
        causes.append(("spec.scope", f'Unsupported value: "{scope}": supported values: "Cluster", "Namespaced"'))
    name = (crd.get("metadata") or {}).get("name")
    if plural and group and name != f"{plural}.{group}":
        causes.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(("spec.versions", "Required value: must have exactly one version marked as storage version"))
    storage_count = sum(1 for v in versions if v.get("storage"))
    if versions and storage_count != 1:
        causes.append(("spec.versions", "Invalid value: must have exactly one version marked as storage version"))
    for index, version in enumerate(versions):
        schema = ((version.get("schema") or {}).get("openAPIV3Schema"))
        if schema is None:
            causes.append((f"spec.versions[{index}].schema.openAPIV3Schema", "Required value: schemas are required"))
        else:
            _check_schema_structure(schema, f"spec.versions[{index}].schema.openAPIV3Schema", causes)
    if causes:
        raise CustomResourceDefinitionError(causes)

    resources = []
    served = tuple(v["name"] for v in versions if v.get("served", True))
    for version in versions:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        columns = [
            PrinterColumn(c["name"], c["jsonPath"], c.get("type", "string"), c.get("description", ""),
                          int(c.get("priority", 0)), c.get("format", ""))
            for c in version.get("additionalPrinterColumns") or []
        ]
        resources.append(ResourceType(
            group=group, version=version["name"], plural=plural,
            singular=names.get("singular") or kind.lower(), kind=kind, namespaced=scope == "Namespaced",
            short_names=list(names.get("shortNames") or []), categories=list(names.get("categories") or []),
            has_status="status" in subresources, has_generation=True,
            # As the real server (serveDefaultColumnsIfEmpty): Age only when the CRD declares no columns.
            printer_columns=columns or [_age()],
            schema=(version.get("schema") or {}).get("openAPIV3Schema"), custom=True,
            extra_subresources=("scale",) if "scale" in subresources else (),
            served_versions=served,
        ))
    return resources


class ResourceRegistry:
    """The resource types the server serves right now, by group/version and plural (or kind)."""

    def __init__(self) -> None:
        self._by_path: dict[tuple[str, str, str], ResourceType] = {}
        self._crd_resources: dict[str, list[ResourceType]] = {}
        for resource in builtin_resources():
            self.add(resource)

    def add(self, resource: ResourceType) -> None:
        self._by_path[(resource.group, resource.version, resource.plural)] = resource

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def register_crd(self, crd_name: str, resources: list[ResourceType]) -> None:
        self.unregister_crd(crd_name)
        self._crd_resources[crd_name] = resources
        for resource in resources:
            self.add(resource)

    def unregister_crd(self, crd_name: str) -> list[ResourceType]:
        removed = self._crd_resources.pop(crd_name, [])
        for resource in removed:
            self._by_path.pop((resource.group, resource.version, resource.plural), None)
        return removed

    def all(self) -> list[ResourceType]:
        return list(self._by_path.values())

    def groups(self) -> dict[str, list[str]]:
        """Group name → versions served (core group "" excluded), in a stable order."""
        result: dict[str, list[str]] = {}
        for resource in self._by_path.values():
            if resource.group:
                versions = result.setdefault(resource.group, [])
                if resource.version not in versions:
                    versions.append(resource.version)
        return result

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [r for r in self._by_path.values() if r.group == group and r.version == version]

    def for_kind(self, group: str, kind: str) -> ResourceType | None:
        """Any served version of a kind (used to find owners for garbage collection)."""
        for resource in self._by_path.values():
            if resource.group == group and resource.kind == kind:
                return resource
        return None

    def by_storage_key(self, key: tuple[str, str]) -> ResourceType | None:
        for resource in self._by_path.values():
            if resource.storage_key == key:
                return resource
        return None
