"""The HTTP face of the local Kubernetes API server: paths, discovery, tables for kubectl, and watch streams."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import yaml
from aiohttp import web

from finetune_local.kubeapi_patch import Selector, SelectorError, json_patch, merge_patch, parse_field_selector, \
    parse_label_selector
from finetune_local.kubeapi_protobuf import ProtobufError, decode_object
from finetune_local.kubeapi_resources import ResourceRegistry, ResourceType
from finetune_local.kubeapi_store import ApiError, ObjectStore, ResourceVersionTooOld, WatchEvent

SERVER_VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "", "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.3", "compiler": "gc", "platform": "linux/amd64",
}
PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}
# A log provider answers (namespace, pod, container) with the pod's log text, or None when it has none.
LogProvider = Callable[[str, str, str | None], str | None]


@dataclasses.dataclass
class Route:
    """What a resource path names: /api/v1/namespaces/ns/pods/name/status and the like."""

    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    subresource: str | None
    legacy_watch: bool


def parse_route(path: str) -> Route | None:
    segments = [s for s in path.split("/") if s]
    if len(segments) >= 3 and segments[0] == "api":
        group, version, rest = "", segments[1], segments[2:]
    elif len(segments) >= 4 and segments[0] == "apis":
        group, version, rest = segments[1], segments[2], segments[3:]
    else:
        return None
    legacy_watch = bool(rest) and rest[0] == "watch"
    if legacy_watch:
        rest = rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    return Route(group, version, namespace, rest[0], rest[1] if len(rest) > 1 else None,
                 rest[2] if len(rest) > 2 else None, legacy_watch)


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version order: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > anything else."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (0, 0, 0)
    stability = {"alpha": 1, "beta": 2, None: 3}[match.group(2)]
    return (stability, int(match.group(1)), int(match.group(3) or 0))


def human_age(timestamp: str | None) -> str:
    """`5m`, `3h`, `2d`: the age kubectl shows, computed the way the real server fills table cells."""
    if not timestamp:
        return "<unknown>"
    created = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - created).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


_JSONPATH_TOKEN = re.compile(r"\.([A-Za-z0-9_\-/]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.]+)\s*==\s*[\"']([^\"']*)[\"']\)\]")


def evaluate_json_path(obj: Any, path: str) -> Any:
    """The JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.conditions[?(@.type=="Ready")].status`."""
    node = obj
    position = 0
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    while position < len(path):
        match = _JSONPATH_TOKEN.match(path, position)
        if not match:
            return None
        position = match.end()
        key, index, filter_key, filter_value = match.groups()
        if key is not None:
            node = node.get(key) if isinstance(node, dict) else None
        elif index is not None:
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
        else:
            found = None
            for item in node if isinstance(node, list) else []:
                value: Any = item
                for part in filter_key.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                if str(value) == filter_value:
                    found = item
                    break
            node = found
        if node is None:
            return None
    return node


class KubeApiApp:
    """The aiohttp application that serves the Kubernetes API from an ObjectStore."""

    def __init__(self, registry: ResourceRegistry, store: ObjectStore, *, bookmark_interval: float = 5.0,
                 log_provider: LogProvider | None = None) -> None:
        self.registry = registry
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.log_provider = log_provider
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    # ---------------------------------------------------------------------------------- dispatch

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except ApiError as error:
            return self._json(error.status(), error.code)
        except SelectorError as error:
            return self._json(ApiError(400, "BadRequest", str(error)).status(), 400)
        except (ValueError, yaml.YAMLError) as error:
            return self._json(ApiError(400, "BadRequest", f"the request could not be decoded: {error}").status(), 400)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return self._json(SERVER_VERSION)
        if path == "/api":
            host = request.host or "127.0.0.1"
            return self._json({"kind": "APIVersions", "versions": ["v1"],
                               "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})
        if path == "/apis":
            return self._json({"kind": "APIGroupList", "apiVersion": "v1",
                               "groups": [self._group_entry(g, v) for g, v in sorted(self.registry.groups().items())]})
        if path == "/api/v1":
            return self._json(self._resource_list("", "v1"))
        if path == "/openapi/v3":
            return self._json(self._openapi_index())
        if path.startswith("/openapi/v3/"):
            return self._json(self._openapi_group_version(path[len("/openapi/v3/"):]))
        segments = [s for s in path.split("/") if s]
        if segments[0] == "apis" and len(segments) == 2:
            versions = self.registry.groups().get(segments[1])
            if not versions:
                raise self._no_such_path()
            return self._json({"kind": "APIGroup", "apiVersion": "v1", **self._group_entry(segments[1], versions)})
        if segments[0] == "apis" and len(segments) == 3:
            if not self.registry.in_group_version(segments[1], segments[2]):
                raise self._no_such_path()
            return self._json(self._resource_list(segments[1], segments[2]))
        route = parse_route(path)
        if route is None:
            raise self._no_such_path()
        resource = self.registry.lookup(route.group, route.version, route.plural)
        if resource is None:
            raise self._no_such_path()
        if (route.namespace is not None and not resource.namespaced):
            raise self._no_such_path()
        if route.name is not None and resource.namespaced and route.namespace is None:
            raise self._no_such_path()
        if route.subresource == "status" and not resource.has_status:
            raise self._no_such_path()
        return await self._serve_resource(request, route, resource)

    @staticmethod
    def _no_such_path() -> ApiError:
        return ApiError(404, "NotFound", "the server could not find the requested resource",
                        {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})

    def _group_entry(self, group: str, versions: list[str]) -> dict[str, Any]:
        ordered = sorted(versions, key=_version_priority, reverse=True)
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources = []
        for resource in sorted(self.registry.in_group_version(group, version), key=lambda r: r.plural):
            resources.extend(resource.discovery_entries())
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    # ---------------------------------------------------------------------------------- openapi

    def _group_versions(self) -> list[tuple[str, str]]:
        return sorted({(r.group, r.version) for r in self.registry.all()})

    def _openapi_index(self) -> dict[str, Any]:
        """The OpenAPI v3 index kubectl reads to learn that the server validates fields itself."""
        paths = {}
        for group, version in self._group_versions():
            prefix = f"apis/{group}/{version}" if group else f"api/{version}"
            kinds = sorted(r.kind + r.plural for r in self.registry.in_group_version(group, version))
            digest = hashlib.sha256("|".join(kinds).encode()).hexdigest()[:16].upper()
            paths[prefix] = {"serverRelativeURL": f"/openapi/v3/{prefix}?hash={digest}"}
        return {"paths": paths}

    def _openapi_group_version(self, prefix: str) -> dict[str, Any]:
        """Paths (no schemas) of one group/version: enough for kubectl's field-validation and patch checks."""
        parts = prefix.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[0] == "apis" and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            raise self._no_such_path()
        resources = self.registry.in_group_version(group, version)
        if not resources:
            raise self._no_such_path()
        query_parameters = [{"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
                            for name in ("dryRun", "fieldManager", "fieldValidation", "force")]
        paths = {}
        for resource in resources:
            base = f"/{prefix.strip('/')}/"
            base += f"namespaces/{{namespace}}/{resource.plural}" if resource.namespaced else resource.plural
            gvk = {"group": resource.group, "version": resource.version, "kind": resource.kind}
            content = {t: {"schema": {"type": "object"}} for t in
                       ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")}
            if not resource.custom:
                content["application/strategic-merge-patch+json"] = {"schema": {"type": "object"}}
            paths[base + "/{name}"] = {
                "parameters": query_parameters,
                "get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk,
                        "responses": {"200": {"description": "OK"}}},
                "patch": {"x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk,
                          "parameters": query_parameters, "requestBody": {"content": content},
                          "responses": {"200": {"description": "OK"}}},
                "put": {"x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk,
                        "parameters": query_parameters, "responses": {"200": {"description": "OK"}}},
            }
            paths[base] = {
                "parameters": query_parameters,
                "post": {"x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk,
                         "parameters": query_parameters, "responses": {"201": {"description": "Created"}}},
            }
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
                "paths": paths, "components": {"schemas": {}}}

    # ---------------------------------------------------------------------------------- resources

    async def _serve_resource(self, request: web.Request, route: Route, resource: ResourceType) -> web.StreamResponse:
        query = request.query
        method = request.method
        dry_run = bool(query.getall("dryRun", []))
        strict = query.get("fieldValidation") == "Strict"
        if method == "GET" and route.name is None:
            selector = Selector(parse_label_selector(query.get("labelSelector")),
                                parse_field_selector(query.get("fieldSelector"), resource.field_labels))
            if route.legacy_watch or query.get("watch") in ("true", "1"):
                return await self._watch(request, resource, route.namespace, selector)
            return self._list(request, resource, route.namespace, selector)
        if route.legacy_watch:
            if route.name is None:
                raise self._no_such_path()
            selector = Selector([], parse_field_selector(f"metadata.name={route.name}", ()))
            return await self._watch(request, resource, route.namespace, selector)
        if method == "GET":
            if route.subresource == "log" and resource.kind == "Pod":
                return await self._pod_log(request, resource, route)
            if route.subresource == "scale" and "scale" in resource.extra_subresources:
                return self._json(self._scale_of(self.store.get(resource, route.namespace, route.name)))
            if route.subresource not in (None, "status"):
                raise self._no_such_path()
            obj = self.store.get(resource, route.namespace, route.name)
            if route.subresource is None and query.get("watch") in ("true", "1"):
                selector = Selector([], parse_field_selector(f"metadata.name={route.name}", ()))
                return await self._watch(request, resource, route.namespace, selector)
            if "as=PartialObjectMetadata" in request.headers.get("Accept", ""):
                # the metadata only, as the real server answers a client that asks for it (no data, no spec)
                return self._json({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
            return self._object_response(request, resource, obj)
        if method == "POST":
            if route.name is not None:
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            if resource.namespaced and route.namespace is None:
                raise self._no_such_path()
            result = self.store.create(resource, route.namespace, await self._body(request), dry_run=dry_run,
                                       strict_fields=strict)
            return self._object_response(request, resource, result.obj, 201, result.warnings)
        if method in ("PUT", "PATCH") and route.name is None:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if route.subresource == "scale" and "scale" in resource.extra_subresources and method in ("PUT", "PATCH"):
            return await self._write_scale(request, resource, route)
        if route.subresource not in (None, "status", "finalize"):
            raise self._no_such_path()
        if method == "PUT":
            result = self.store.update(resource, route.namespace, route.name, await self._body(request),
                                       subresource=route.subresource, dry_run=dry_run, strict_fields=strict)
            return self._object_response(request, resource, result.obj, 200, result.warnings)
        if method == "PATCH":
            content_type = request.content_type
            patch_type = PATCH_TYPES.get(content_type)
            if patch_type is None:
                raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                               f"accepted media types include: {', '.join(PATCH_TYPES)}")
            text = await request.text()
            patch = yaml.safe_load(text) if patch_type == "apply" else json.loads(text or "null")
            result = self.store.patch(resource, route.namespace, route.name, patch_type, patch,
                                      subresource=route.subresource, dry_run=dry_run, strict_fields=strict)
            return self._object_response(request, resource, result.obj, 201 if result.created else 200,
                                         result.warnings)
        if method == "DELETE":
            options = await self._delete_options(request)
            if route.name is None:
                return self._delete_collection(request, resource, route.namespace, options, dry_run)
            obj, gone = self.store.delete(resource, route.namespace, route.name, options, dry_run=dry_run)
            if gone and not resource.custom:
                return self._json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": {"name": route.name, "group": resource.group, "kind": resource.plural,
                                               "uid": obj["metadata"]["uid"]}})
            return self._object_response(request, resource, obj)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    async def _body(self, request: web.Request) -> Any:
        if request.content_type == "application/vnd.kubernetes.protobuf":
            try:
                return decode_object(await request.read())
            except ProtobufError as error:
                raise ApiError(415, "UnsupportedMediaType", str(error)) from None
        if request.content_type not in ("application/json", "application/yaml", "application/x-yaml", "text/yaml",
                                        "application/octet-stream", ""):
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                           "accepted media types include: application/json, application/yaml")
        text = await request.text()
        if not text.strip():
            raise ApiError(400, "BadRequest", "the request body is empty")
        if "yaml" in request.content_type:
            return yaml.safe_load(text)
        return json.loads(text)

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if request.can_read_body and request.content_type == "application/vnd.kubernetes.protobuf":
            try:
                options = decode_object(await request.read())
            except ProtobufError as error:
                raise ApiError(415, "UnsupportedMediaType", str(error)) from None
        else:
            text = await request.text() if request.can_read_body else ""
            if text.strip():
                options = json.loads(text) or {}
        for key in ("propagationPolicy", "gracePeriodSeconds"):
            if key in request.query:
                options[key] = request.query[key]
        if "orphanDependents" in request.query:
            options["orphanDependents"] = request.query["orphanDependents"] == "true"
        return options

    def _delete_collection(self, request: web.Request, resource: ResourceType, namespace: str | None,
                           options: dict[str, Any], dry_run: bool) -> web.Response:
        selector = Selector(parse_label_selector(request.query.get("labelSelector")),
                            parse_field_selector(request.query.get("fieldSelector"), resource.field_labels))
        items, _, _ = self.store.list(resource, namespace, selector)
        deleted = []
        for item in items:
            meta = item["metadata"]
            try:
                obj, _ = self.store.delete(resource, meta.get("namespace"), meta["name"], options, dry_run=dry_run)
            except ApiError as error:
                if error.code != 404:
                    raise
                continue
            deleted.append(self._present(resource, obj, in_list=True))
        return self._json({"kind": f"{resource.kind}List", "apiVersion": resource.group_version,
                           "metadata": {"resourceVersion": str(self.store.resource_version)}, "items": deleted})

    # ---------------------------------------------------------------------------------- pod logs

    def _log_text(self, namespace: str, pod: str, container: str | None) -> str:
        if self.log_provider is None:
            return ""
        return self.log_provider(namespace, pod, container) or ""

    async def _pod_log(self, request: web.Request, resource: ResourceType, route: Route) -> web.StreamResponse:
        """The pod's log from the log provider (empty without one); `tailLines` and `follow` work."""
        assert route.name is not None
        namespace, pod, container = route.namespace or "", route.name, request.query.get("container")
        self.store.get(resource, namespace, pod)
        text = self._log_text(namespace, pod, container)
        tail = request.query.get("tailLines")
        if tail and tail.isdigit():
            text = "".join(text.splitlines(keepends=True)[-int(tail):]) if int(tail) else ""
        if request.query.get("follow") not in ("true", "1"):
            return web.Response(text=text, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = len(self._log_text(namespace, pod, container))
        try:
            await response.write(text.encode())
            while True:  # until the pod is gone or finished and its log has been sent
                pod_object = self.store.objects[resource.storage_key].get((namespace, pod))
                finished = pod_object is None or (pod_object.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                current = self._log_text(namespace, pod, container)
                if len(current) > sent:
                    await response.write(current[sent:].encode())
                    sent = len(current)
                if finished:
                    break
                await asyncio.sleep(0.5)
        except ConnectionResetError:
            pass
        return response

    # ---------------------------------------------------------------------------------- scale

    @staticmethod
    def _scale_of(obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
                "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                           "selector": ",".join(f"{k}={v}" for k, v in selector.items())}}

    async def _write_scale(self, request: web.Request, resource: ResourceType, route: Route) -> web.Response:
        current = self._scale_of(self.store.get(resource, route.namespace, route.name))
        if request.method == "PUT":
            scale = await self._body(request)
        else:
            text = await request.text()
            patch = json.loads(text)
            scale = json_patch(current, patch) if request.content_type == "application/json-patch+json" \
                else merge_patch(current, patch)
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", f'Scale.autoscaling "{route.name}" is invalid: spec.replicas: '
                                           f'Invalid value: {json.dumps(replicas)}: must be greater than or equal to 0')
        result = self.store.patch(resource, route.namespace, route.name, "merge", {"spec": {"replicas": replicas}})
        return self._json(self._scale_of(result.obj))

    # ---------------------------------------------------------------------------------- reading

    def _present(self, resource: ResourceType, obj: dict[str, Any], *, in_list: bool = False) -> dict[str, Any]:
        """An object as served at the requested version (typed lists of built-ins omit kind and apiVersion)."""
        out = dict(obj)
        if in_list and not resource.custom:
            out.pop("kind", None)
            out.pop("apiVersion", None)
        else:
            out["apiVersion"] = resource.group_version
            out["kind"] = resource.kind
        return out

    def _list(self, request: web.Request, resource: ResourceType, namespace: str | None,
              selector: Selector) -> web.Response:
        limit_text = request.query.get("limit")
        limit = int(limit_text) if limit_text else None
        items, token, remaining = self.store.list(resource, namespace, selector, limit, request.query.get("continue"))
        version = str(self.store.resource_version)
        if self._wants_table(request):
            return self._json(self._table(request, resource, items, version))
        metadata: dict[str, Any] = {"resourceVersion": version}
        if token:
            metadata["continue"] = token
            metadata["remainingItemCount"] = remaining
        return self._json({"kind": f"{resource.kind}List", "apiVersion": resource.group_version, "metadata": metadata,
                           "items": [self._present(resource, item, in_list=True) for item in items]})

    def _object_response(self, request: web.Request, resource: ResourceType, obj: dict[str, Any],
                         status: int = 200, warnings: list[str] | None = None) -> web.Response:
        body = self._present(resource, obj)
        if request.method == "GET" and self._wants_table(request):
            body = self._table(request, resource, [obj], obj["metadata"].get("resourceVersion", ""))
        response = self._json(body, status)
        for warning in warnings or []:
            response.headers.add("Warning", f'299 - {json.dumps(warning)}')
        return response

    @staticmethod
    def _wants_table(request: web.Request) -> bool:
        return "as=Table" in request.headers.get("Accept", "")

    def _table(self, request: web.Request, resource: ResourceType, items: list[dict[str, Any]], version: str,
               *, with_columns: bool = True) -> dict[str, Any]:
        columns = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
        columns += [{"name": c.name, "type": c.type, "format": c.format, "priority": c.priority,
                     "description": c.description} for c in resource.printer_columns]
        include = request.query.get("includeObject", "Metadata")
        rows = []
        for item in items:
            cells: list[Any] = [item["metadata"]["name"]]
            for column in resource.printer_columns:
                value = evaluate_json_path(item, column.json_path)
                if column.type == "date":
                    value = human_age(value) if value else None
                elif column.type == "integer" and isinstance(value, (dict, list)):
                    value = len(value)
                elif isinstance(value, (dict, list)):
                    value = json.dumps(value)
                cells.append(value)
            row: dict[str, Any] = {"cells": cells}
            if include == "Object":
                row["object"] = self._present(resource, item)
            elif include == "Metadata":
                row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                 "metadata": item["metadata"]}
            rows.append(row)
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": version},
                "columnDefinitions": columns if with_columns else [], "rows": rows}

    # ---------------------------------------------------------------------------------- watch

    async def _watch(self, request: web.Request, resource: ResourceType, namespace: str | None,
                     selector: Selector) -> web.StreamResponse:
        query = request.query
        version_text = query.get("resourceVersion", "")
        send_initial = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        if version_text in ("", "0") or send_initial:
            since = None
        elif version_text.isdigit():
            since = int(version_text)
        else:
            raise ApiError(400, "BadRequest", f"invalid resource version: {version_text!r}")
        as_table = self._wants_table(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            replay, subscription = self.store.subscribe(resource.storage_key, since)
        except ResourceVersionTooOld as error:
            await response.prepare(request)
            gone = ApiError(410, "Expired", str(error)).status()
            await response.write((json.dumps({"type": "ERROR", "object": gone}) + "\n").encode())
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        first = True

        async def send(type_: str, obj: dict[str, Any]) -> None:
            nonlocal first
            if as_table and type_ != "BOOKMARK":
                obj = self._table(request, resource, [obj], obj["metadata"]["resourceVersion"], with_columns=first)
                first = False
            await response.write((json.dumps({"type": type_, "object": obj}) + "\n").encode())

        def bookmark(initial_end: bool = False) -> dict[str, Any]:
            metadata: dict[str, Any] = {"resourceVersion": str(self.store.resource_version)}
            if initial_end:
                metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
            return {"kind": resource.kind, "apiVersion": resource.group_version, "metadata": metadata}

        try:
            await response.prepare(request)
            for event in replay:
                visible = self._visible(event, resource, namespace, selector)
                if visible:
                    await send(*visible)
            if send_initial and bookmarks:
                await send("BOOKMARK", bookmark(initial_end=True))
            while True:
                waits = [self.bookmark_interval] if bookmarks else []
                if deadline is not None:
                    waits.append(deadline - loop.time())
                wait = min(waits) if waits else None
                if wait is not None and wait <= 0:
                    break
                try:
                    event = await asyncio.wait_for(subscription.queue.get(), wait)
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    await send("BOOKMARK", bookmark())
                    continue
                if event is None:
                    break
                visible = self._visible(event, resource, namespace, selector)
                if visible:
                    await send(*visible)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unsubscribe(subscription)
        return response

    def _visible(self, event: WatchEvent, resource: ResourceType, namespace: str | None,
                 selector: Selector) -> tuple[str, dict[str, Any]] | None:
        """The event as this watcher sees it: objects entering or leaving its selection appear as ADDED/DELETED."""

        def matches(obj: dict[str, Any] | None) -> bool:
            return obj is not None and (namespace is None or obj["metadata"].get("namespace") == namespace) \
                and selector.matches(obj)

        now_matches = matches(event.obj)
        type_ = event.type
        if type_ == "MODIFIED":
            before = matches(event.old)
            if now_matches and not before:
                type_ = "ADDED"
            elif before and not now_matches:
                type_ = "DELETED"
            elif not now_matches:
                return None
        elif not now_matches:
            return None
        return type_, self._present(resource, event.obj)

    @staticmethod
    def _json(body: Any, status: int = 200) -> web.Response:
        return web.Response(text=json.dumps(body), status=status, content_type="application/json")

