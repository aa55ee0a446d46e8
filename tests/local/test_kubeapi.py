"""The local Kubernetes API server behaves like a real one for the official client, raw HTTP, kubectl and kopf."""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client import ApiException

GROUP, VERSION, PLURAL = "example.dev", "v1", "widgets"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "shortNames": ["wdg"],
                  "categories": ["examples"]},
        "versions": [{
            "name": VERSION, "served": True, "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                                         {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "x-kubernetes-validations": [
                            {"rule": "self.size <= self.maxSize", "message": "size must not exceed maxSize"},
                            {"rule": "has(self.color) || has(self.pattern)", "message": "color or pattern is required"},
                            {"rule": "!has(self.tags) || size(self.tags) <= 1 || self.size > 1", "reason": "FieldValueForbidden",
                             "fieldPath": ".tags", "message": "one tag per unit of size"},
                        ],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 100},
                            "maxSize": {"type": "integer", "default": 10},
                            "color": {"type": "string", "enum": ["red", "blue"]},
                            "pattern": {"type": "string", "maxLength": 8, "pattern": "^[a-z]+$"},
                            "owner": {"type": "string", "x-kubernetes-validations": [
                                {"rule": "self == oldSelf", "message": "owner is immutable"}]},
                            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                            "limits": {"type": "object", "default": {},
                                       "properties": {"cpu": {"type": "string", "default": "1"}}},
                        },
                    },
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }},
        }],
    },
}


# --------------------------------------------------------------------------------------------- helpers

class Http:
    """Raw HTTP against the server, as any Kubernetes client sees it."""

    def __init__(self, url: str):
        self.url = url

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type, "Authorization": "Bearer any"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def watch(self, path: str, timeout: float = 10) -> Iterator[dict[str, Any]]:
        request = urllib.request.Request(self.url + path)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for line in response:
                if line.strip():
                    yield json.loads(line)


@pytest.fixture(scope="module")
def kube_api(local_kube_api: Any) -> Any:
    """These tests are of the project's own API server (what it shares with a real one is checked against both
    in tests/controlplane/test_conformance.py)."""
    return local_kube_api


@pytest.fixture
def namespace(local_namespace: str) -> str:
    return local_namespace


@pytest.fixture(scope="module")
def widgets(kube_api: Any) -> Iterator[kubernetes.client.CustomObjectsApi]:
    """The Widget CRD registered, and a CustomObjectsApi to use it."""
    with kube_api.client() as api:
        extensions = kubernetes.client.ApiextensionsV1Api(api)
        extensions.create_custom_resource_definition(WIDGET_CRD)
        try:
            yield kubernetes.client.CustomObjectsApi(api)
        finally:
            extensions.delete_custom_resource_definition(WIDGET_CRD["metadata"]["name"])


@pytest.fixture
def core(kube_api: Any) -> Iterator[kubernetes.client.CoreV1Api]:
    with kube_api.client() as api:
        yield kubernetes.client.CoreV1Api(api)


@pytest.fixture
def http(kube_api: Any) -> Http:
    return Http(kube_api.url)


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name},
            "spec": {"size": 1, "color": "red", **spec}}


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def gone(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as error:
        return error.status == 404
    return False


# ------------------------------------------------------------------------------------------- discovery

def test_discovery_lists_builtin_kinds_with_their_subresources(http: Http) -> None:
    status, core_v1 = http.request("GET", "/api/v1")
    assert status == 200
    resources = {r["name"]: r for r in core_v1["resources"]}
    assert resources["configmaps"]["shortNames"] == ["cm"]
    assert resources["pods"]["namespaced"] is True and "watch" in resources["pods"]["verbs"]
    assert "pods/status" in resources and "pods/log" in resources
    assert resources["namespaces"]["namespaced"] is False

    _, groups = http.request("GET", "/apis")
    names = {g["name"] for g in groups["groups"]}
    assert {"apps", "batch", "autoscaling", "coordination.k8s.io", "policy", "events.k8s.io",
            "apiextensions.k8s.io"} <= names
    _, batch = http.request("GET", "/apis/batch/v1")
    assert {r["name"] for r in batch["resources"]} >= {"jobs", "jobs/status"}
    _, version = http.request("GET", "/version")
    assert version["major"] == "1"


def test_creating_a_crd_registers_its_resource_in_discovery_at_once(http: Http, widgets: Any) -> None:
    _, group = http.request("GET", f"/apis/{GROUP}")
    assert group["preferredVersion"]["groupVersion"] == f"{GROUP}/{VERSION}"
    _, listing = http.request("GET", f"/apis/{GROUP}/{VERSION}")
    entries = {r["name"]: r for r in listing["resources"]}
    assert entries[PLURAL]["kind"] == "Widget"
    assert entries[PLURAL]["shortNames"] == ["wdg"] and entries[PLURAL]["categories"] == ["examples"]
    assert entries[f"{PLURAL}/status"]["verbs"] == ["get", "patch", "update"]
    _, crd = http.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}")
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"


def test_repository_crds_are_applied_by_the_fixture(http: Http) -> None:
    crd_files = [p for p in (Path(__file__).resolve().parents[2] / "crds").glob("*.yaml")]
    _, crds = http.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    served = {c["metadata"]["name"] for c in crds["items"]}
    assert {p.name.removesuffix(".yaml") for p in crd_files} <= served


# ------------------------------------------------------------------------------------- object semantics

def test_create_fills_in_identity_and_a_global_resource_version(core: Any, namespace: str) -> None:
    first = core.create_namespaced_config_map(namespace, {"metadata": {"name": "first"}, "data": {"a": "1"}})
    second = core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "second-"}})
    assert first.metadata.uid and first.metadata.creation_timestamp
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert second.metadata.name.startswith("second-") and len(second.metadata.name) == len("second-") + 5


def test_errors_are_status_objects_with_the_real_codes(core: Any, http: Http, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "taken"}})
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "taken"}})
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"

    status, missing = http.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/nowhere")
    assert status == 404
    assert missing == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": 'configmaps "nowhere" not found', "reason": "NotFound", "code": 404,
                       "details": {"name": "nowhere", "group": "", "kind": "configmaps"}}

    status, nameless = http.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {}})
    assert status == 422 and nameless["reason"] == "Invalid"
    assert "metadata.name: Required value" in nameless["message"]

    status, bad_label = http.request("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                                     {"metadata": {"name": "labelled", "labels": {"model": "x" * 64}}})
    assert status == 422 and "metadata.labels" in bad_label["message"]

    status, _ = http.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/taken/status")
    assert status == 404  # configmaps have no status subresource

    status, no_namespace = http.request("POST", "/api/v1/namespaces/absent/configmaps", {"metadata": {"name": "a"}})
    assert status == 404 and no_namespace["message"] == 'namespaces "absent" not found'


def test_replace_with_a_stale_resource_version_is_a_conflict(core: Any, namespace: str) -> None:
    original = core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"a": "1"}})
    original.data = {"a": "2"}
    updated = core.replace_namespaced_config_map("settings", namespace, original)
    assert updated.data == {"a": "2"}
    original.data = {"a": "3"}  # still carries the resourceVersion it was read with
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("settings", namespace, original)
    assert stale.value.status == 409
    assert "the object has been modified" in json.loads(stale.value.body)["message"]


def test_generation_counts_spec_changes_only(widgets: Any, namespace: str) -> None:
    created = widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("gen"))
    assert created["metadata"]["generation"] == 1
    labelled = widgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gen",
                                                      {"metadata": {"labels": {"team": "ml"}}})
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    resized = widgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gen", {"spec": {"size": 2}})
    assert resized["metadata"]["generation"] == 2
    unchanged = widgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gen", {"spec": {"size": 2}})
    assert unchanged["metadata"]["resourceVersion"] == resized["metadata"]["resourceVersion"]


def test_status_subresource_separates_spec_writes_from_status_writes(widgets: Any, namespace: str) -> None:
    body = widget("sub")
    body["status"] = {"phase": "Ignored"}
    created = widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert "status" not in created

    through_main = widgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "sub",
                                                          {"status": {"phase": "Ignored"}})
    assert "status" not in through_main

    through_status = widgets.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "sub", {"status": {"phase": "Ready"}, "spec": {"size": 50}})
    assert through_status["status"] == {"phase": "Ready"}
    assert through_status["spec"]["size"] == 1
    assert through_status["metadata"]["generation"] == 1


def test_deleting_an_object_with_finalizers_waits_for_them(widgets: Any, namespace: str) -> None:
    body = widget("held")
    body["metadata"]["finalizers"] = ["example.dev/cleanup"]
    widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    pending = widgets.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")
    assert pending["metadata"]["deletionTimestamp"]
    assert pending["metadata"]["deletionGracePeriodSeconds"] == 0
    still_there = widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")
    assert still_there["metadata"]["finalizers"] == ["example.dev/cleanup"]

    with pytest.raises(ApiException) as adding:
        widgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held",
                                               {"metadata": {"finalizers": ["example.dev/cleanup", "other/x"]}})
    assert adding.value.status == 422

    widgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held",
                                           {"metadata": {"finalizers": None}})
    assert gone(lambda: widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held"))


def test_deleting_an_owner_collects_its_dependents_unless_orphaned(core: Any, widgets: Any, namespace: str) -> None:
    def owned_config_map(name: str, owner: dict[str, Any]) -> dict[str, Any]:
        reference = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "name": owner["metadata"]["name"],
                     "uid": owner["metadata"]["uid"], "controller": True}
        return {"metadata": {"name": name, "ownerReferences": [reference]}}

    owner = widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("owner"))
    core.create_namespaced_config_map(namespace, owned_config_map("child", owner))
    widgets.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owner")
    assert wait_for(lambda: gone(lambda: core.read_namespaced_config_map("child", namespace)))

    keeper = widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("keeper"))
    core.create_namespaced_config_map(namespace, owned_config_map("orphan", keeper))
    widgets.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "keeper",
                                            propagation_policy="Orphan")
    orphan = core.read_namespaced_config_map("orphan", namespace)
    assert orphan.metadata.owner_references is None

    stray = {"apiVersion": "v1", "kind": "ConfigMap", "name": "never-existed", "uid": "0000"}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "stray", "ownerReferences": [stray]}})
    assert wait_for(lambda: gone(lambda: core.read_namespaced_config_map("stray", namespace)))


def test_deleting_a_namespace_removes_what_is_in_it(core: Any) -> None:
    created = core.create_namespace({"metadata": {"generateName": "doomed-"}})
    name = created.metadata.name
    core.create_namespaced_config_map(name, {"metadata": {"name": "inside"}})
    core.delete_namespace(name)
    assert gone(lambda: core.read_namespaced_config_map("inside", name))
    assert gone(lambda: core.read_namespace(name))
    with pytest.raises(ApiException) as forbidden:
        core.delete_namespace("default")
    assert forbidden.value.status == 403


# -------------------------------------------------------------------------------------- lists & selectors

def test_label_and_field_selectors_and_paging(core: Any, http: Http, namespace: str) -> None:
    for name, labels in [("a", {"tier": "gpu", "team": "ml"}), ("b", {"tier": "cpu"}), ("c", {"team": "ops"})]:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs: Any) -> list[str]:
        return [cm.metadata.name for cm in core.list_namespaced_config_map(namespace, **kwargs).items]

    assert names(label_selector="tier=gpu") == ["a"]
    assert names(label_selector="tier==cpu") == ["b"]
    assert names(label_selector="tier!=gpu") == ["b", "c"]
    assert names(label_selector="tier in (gpu,cpu)") == ["a", "b"]
    assert names(label_selector="tier notin (gpu),team") == ["c"]
    assert names(label_selector="!tier") == ["c"]
    assert names(label_selector="tier,team=ml") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]

    first_page = core.list_namespaced_config_map(namespace, limit=2)
    assert [cm.metadata.name for cm in first_page.items] == ["a", "b"]
    assert first_page.metadata.remaining_item_count == 1
    second_page = core.list_namespaced_config_map(namespace, limit=2, _continue=first_page.metadata._continue)
    assert [cm.metadata.name for cm in second_page.items] == ["c"] and not second_page.metadata._continue

    status, error = http.request("GET", f"/api/v1/namespaces/{namespace}/configmaps?fieldSelector=data.x%3D1")
    assert status == 400 and "is not a known field selector" in error["message"]
    everywhere = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={namespace}")
    assert len(everywhere.items) == 3


# ------------------------------------------------------------------------------------------------ watch

def test_watch_replays_from_a_resource_version_and_applies_selectors(core: Any, http: Http, namespace: str) -> None:
    start = core.list_namespaced_config_map(namespace).metadata.resource_version
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "w1", "labels": {"app": "x"}}})
    core.patch_namespaced_config_map("w1", namespace, {"data": {"k": "v"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "w2", "labels": {"app": "y"}}})
    core.patch_namespaced_config_map("w2", namespace, {"metadata": {"labels": {"app": "x"}}})
    core.patch_namespaced_config_map("w1", namespace, {"metadata": {"labels": {"app": "z"}}})
    core.delete_namespaced_config_map("w2", namespace)

    path = (f"/api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion={start}"
            f"&labelSelector=app%3Dx&timeoutSeconds=1")
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in http.watch(path)]
    assert events == [("ADDED", "w1"), ("MODIFIED", "w1"), ("ADDED", "w2"), ("DELETED", "w1"), ("DELETED", "w2")]


def test_legacy_watch_paths_and_initial_events(core: Any, http: Http, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "present"}})
    legacy = list(http.watch(f"/api/v1/watch/namespaces/{namespace}/configmaps?timeoutSeconds=1"))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in legacy] == [("ADDED", "present")]
    initial = list(http.watch(f"/api/v1/namespaces/{namespace}/configmaps?watch=true&sendInitialEvents=true"
                              f"&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1"))
    assert [e["type"] for e in initial][:2] == ["ADDED", "BOOKMARK"]
    assert initial[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watch_streams_live_events_to_many_watchers(core: Any, http: Http, namespace: str) -> None:
    version = core.list_namespaced_config_map(namespace).metadata.resource_version
    seen: list[list[str]] = [[], [], []]

    def watch(index: int) -> None:
        path = f"/api/v1/namespaces/{namespace}/configmaps?watch=1&resourceVersion={version}&timeoutSeconds=3"
        for event in http.watch(path):
            seen[index].append(event["type"])
            if event["type"] == "DELETED":
                return

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "live"}})
    core.delete_namespaced_config_map("live", namespace)
    for thread in threads:
        thread.join()
    assert seen == [["ADDED", "DELETED"]] * 3


def test_watch_from_a_compacted_resource_version_is_gone(kube_api: Any, core: Any, http: Http,
                                                         namespace: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "old"}})
    old_version = core.read_namespaced_config_map("old", namespace).metadata.resource_version
    core.patch_namespaced_config_map("old", namespace, {"data": {"a": "b"}})
    kube_api.server.compact()
    events = list(http.watch(f"/api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion={old_version}"))
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


def test_watch_with_the_official_client_lists_then_sends_bookmarks(core: Any, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "seen"}})
    stream = kubernetes.watch.Watch().stream(core.list_namespaced_config_map, namespace, timeout_seconds=1,
                                             allow_watch_bookmarks=True)
    events = [(e["type"], e["object"].metadata.name) for e in stream]
    assert ("ADDED", "seen") in events


def test_bookmarks_arrive_while_nothing_changes() -> None:
    from finetune_local.kubeapi import KubeApiServer

    with KubeApiServer(bookmark_interval=0.2) as server:
        events = list(Http(server.url).watch("/api/v1/configmaps?watch=true&allowWatchBookmarks=true&timeoutSeconds=1"))
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks and bookmarks[0]["object"]["metadata"]["resourceVersion"]


# ------------------------------------------------------------------------------- custom resource schema

def test_schema_defaults_are_applied_and_unknown_fields_pruned(widgets: Any, namespace: str) -> None:
    body = widget("defaults")
    body["spec"]["surprise"] = True
    created = widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert created["spec"]["maxSize"] == 10
    assert created["spec"]["limits"] == {"cpu": "1"}
    assert "surprise" not in created["spec"]


@pytest.mark.parametrize("spec, message", [
    ({"size": 0}, "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"),
    ({"size": "big"}, 'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"'),
    ({"color": "green"}, 'spec.color: Unsupported value: "green": supported values: "red", "blue"'),
    ({"pattern": "TOOLONGSTRING"}, "spec.pattern: Too long: may not be more than 8 bytes"),
    ({"pattern": "Caps"}, "spec.pattern in body should match '^[a-z]+$'"),
    ({"tags": ["a", "b", "c"]}, "spec.tags: Too many: 3: must have at most 2 items"),
    ({"size": 20}, "spec: Invalid value: size must not exceed maxSize"),  # Kubernetes 1.36 prints no value for rules
    ({"tags": ["a", "b"]}, "spec.tags: Forbidden: one tag per unit of size"),
])
def test_schema_violations_are_rejected_naming_the_field(widgets: Any, namespace: str, spec: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(ApiException) as rejected:
        widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("bad", **spec))
    status = json.loads(rejected.value.body)
    assert rejected.value.status == 422 and status["reason"] == "Invalid"
    assert status["message"].startswith('Widget.example.dev "bad" is invalid: ')
    assert message in status["message"]


def test_required_fields_and_cel_rules_across_fields(widgets: Any, namespace: str) -> None:
    body = widget("needs")
    del body["spec"]["size"], body["spec"]["color"]
    with pytest.raises(ApiException) as rejected:
        widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    message = json.loads(rejected.value.body)["message"]
    assert "spec.size: Required value" in message
    # as on a real server, the rules run only on an object that passes the schema
    assert "some validation rules were not checked because the object was invalid" in message
    body["spec"]["size"] = 1
    with pytest.raises(ApiException) as rejected:
        widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert "color or pattern is required" in json.loads(rejected.value.body)["message"]


def test_transition_rules_see_the_old_object(widgets: Any, namespace: str) -> None:
    widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("owned", owner="alice"))
    with pytest.raises(ApiException) as rejected:
        widgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owned", {"spec": {"owner": "bob"}})
    assert "spec.owner: Invalid value: owner is immutable" in json.loads(rejected.value.body)["message"]
    resized = widgets.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owned", {"spec": {"size": 3}})
    assert resized["spec"]["owner"] == "alice"


def test_unchanged_values_are_not_validated_again_ratcheting(http: Http, namespace: str) -> None:
    """As Kubernetes 1.30+ does: a rule added later does not block writes that leave its value as it was
    (a status update above all), and is enforced as soon as the value changes."""
    crd = json.loads(json.dumps(WIDGET_CRD))
    crd["metadata"]["name"] = "ratchets.example.dev"
    crd["spec"]["names"] = {"plural": "ratchets", "kind": "Ratchet"}
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["x-kubernetes-validations"] = []
    spec_schema["required"] = []
    assert http.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)[0] == 201
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/ratchets"
    assert http.request("POST", base, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Ratchet", "metadata": {"name": "old"},
                                       "spec": {"size": 50, "maxSize": 100, "color": "red"}})[0] == 201

    status, stored = http.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ratchets.example.dev")
    stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] = [
        {"rule": "self.size <= 10", "message": "size is at most 10 now"}]
    assert http.request("PUT", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ratchets.example.dev", stored)[0] == 200

    merge = "application/merge-patch+json"
    status, _ = http.request("PATCH", f"{base}/old/status", {"status": {"phase": "Ready"}}, merge)
    assert status == 200, "the spec did not change: its new rule is not checked"
    status, error = http.request("PATCH", f"{base}/old", {"spec": {"color": "blue"}}, merge)
    assert status == 422 and "size is at most 10 now" in error["message"], "the spec changed: its rules apply"
    status, fixed = http.request("PATCH", f"{base}/old", {"spec": {"size": 5}}, merge)
    assert status == 200 and fixed["spec"]["size"] == 5


def test_a_crd_the_real_server_refuses_is_refused(http: Http) -> None:
    crd = json.loads(json.dumps(WIDGET_CRD))
    crd["metadata"]["name"] = "gadgets.example.dev"
    crd["spec"]["names"] = {"plural": "gadgets", "kind": "Gadget"}
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["additionalProperties"] = False
    status, error = http.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert status == 422
    assert "additionalProperties and properties are mutual exclusive" in error["message"]


# ---------------------------------------------------------------------------------------------- patches

def test_merge_json_and_strategic_patches(http: Http, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "server"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "server"}},
                 "template": {"metadata": {"labels": {"app": "server"}},
                              "spec": {"containers": [{"name": "main", "image": "server:1",
                                                       "env": [{"name": "A", "value": "1"}]},
                                                      {"name": "sidecar", "image": "proxy:1"}]}}},
    }
    base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    assert http.request("POST", base, deployment)[0] == 201

    strategic = {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "image": "server:2", "env": [{"name": "B", "value": "2"}]}]}}}}
    _, patched = http.request("PATCH", f"{base}/server", strategic, "application/strategic-merge-patch+json")
    containers = patched["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("main", "server:2"), ("sidecar", "proxy:1")]
    assert containers[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert patched["metadata"]["generation"] == 2

    _, merged = http.request("PATCH", f"{base}/server", {"spec": {"replicas": 3}, "metadata": {"labels": {"x": "y"}}},
                             "application/merge-patch+json")
    assert merged["spec"]["replicas"] == 3 and merged["metadata"]["labels"] == {"x": "y"}

    operations = [{"op": "test", "path": "/spec/replicas", "value": 3},
                  {"op": "replace", "path": "/spec/replicas", "value": 0},
                  {"op": "remove", "path": "/metadata/labels/x"}]
    _, json_patched = http.request("PATCH", f"{base}/server", operations, "application/json-patch+json")
    assert json_patched["spec"]["replicas"] == 0 and json_patched["metadata"].get("labels", {}) == {}
    status, _ = http.request("PATCH", f"{base}/server", [{"op": "test", "path": "/spec/replicas", "value": 5}],
                             "application/json-patch+json")
    assert status == 422

    status, _ = http.request("PATCH", f"{base}/server", {"spec": {"replicas": 1}},
                             "application/merge-patch+json; charset=utf-8")
    assert status == 200


def test_strategic_merge_patch_is_refused_for_custom_resources(http: Http, widgets: Any, namespace: str) -> None:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    assert http.request("POST", path, widget("smp"))[0] == 201
    status, _ = http.request("PATCH", f"{path}/smp", {"spec": {"size": 2}}, "application/strategic-merge-patch+json")
    assert status == 415


def test_built_in_kinds_keep_their_own_rules(http: Http, namespace: str) -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "trainer", "image": "trainer:1"}]}}}}
    status, created = http.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
    assert status == 201
    assert created["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] == created["metadata"]["uid"]
    assert created["spec"]["backoffLimit"] == 6
    status, error = http.request("PATCH", f"/apis/batch/v1/namespaces/{namespace}/jobs/train",
                                 {"spec": {"template": {"spec": {"containers": [{"name": "trainer", "image": "x:2"}]}}}},
                                 "application/strategic-merge-patch+json")
    assert status == 422 and "field is immutable" in error["message"]

    assert created["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] == "/dev/termination-log"
    assert created["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"

    status, secret = http.request("POST", f"/api/v1/namespaces/{namespace}/secrets",
                                  {"metadata": {"name": "key"}, "stringData": {"token": "s3cr3t"}, "immutable": True})
    assert status == 201 and secret["data"] == {"token": "czNjcjN0"} and "stringData" not in secret
    status, error = http.request("PATCH", f"/api/v1/namespaces/{namespace}/secrets/key", {"data": {"token": "eA=="}},
                                 "application/merge-patch+json")
    assert status == 422 and "field is immutable when `immutable` is set" in error["message"]

    status, service = http.request("POST", f"/api/v1/namespaces/{namespace}/services",
                                   {"metadata": {"name": "api"}, "spec": {"ports": [{"port": 8000}]}})
    assert status == 201 and service["spec"]["clusterIP"].startswith("10.96.")
    assert service["spec"]["ports"] == [{"port": 8000, "protocol": "TCP", "targetPort": 8000}]

    pod_status, pod = http.request("POST", f"/api/v1/namespaces/{namespace}/pods",
                                   {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "c"}]}})
    assert pod_status == 201 and pod["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    status, error = http.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/p/status",
                                 {"status": {"qosClass": "Guaranteed"}}, "application/merge-patch+json")
    assert status == 422 and 'status.qosClass: Invalid value: "Guaranteed": field is immutable' in error["message"]
    assert pod["spec"]["serviceAccountName"] == "default" and pod["spec"]["restartPolicy"] == "Always"
    _, conditions = http.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/p/status",
                                 {"status": {"conditions": [{"type": "Ready", "status": "False"},
                                                            {"type": "PodScheduled", "status": "True"}]}},
                                 "application/strategic-merge-patch+json")
    _, conditions = http.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/p/status",
                                 {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                                 "application/strategic-merge-patch+json")
    assert conditions["status"]["conditions"] == [{"type": "Ready", "status": "True"},
                                                  {"type": "PodScheduled", "status": "True"}]
    status, error = http.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/p",
                                 {"spec": {"restartPolicy": "Never"}}, "application/strategic-merge-patch+json")
    assert status == 422 and "pod updates may not change fields" in error["message"]


# ---------------------------------------------------------------------------------------------- kubectl

def run_kubectl(kube_api: Any, tmp_path: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["kubectl", "--kubeconfig", str(kube_api.kubeconfig), "--cache-dir",
                             str(tmp_path / "kube-cache"), *args], input=stdin, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kubectl_applies_and_gets_built_in_and_custom_kinds(kube_api: Any, widgets: Any, namespace: str,
                                                            tmp_path: Path) -> None:
    manifest = textwrap.dedent(f"""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {{name: settings, namespace: {namespace}}}
        data: {{mode: fast}}
        ---
        apiVersion: {GROUP}/{VERSION}
        kind: Widget
        metadata: {{name: gizmo, namespace: {namespace}}}
        spec: {{size: 4, color: blue}}
        """)
    applied = run_kubectl(kube_api, tmp_path, "apply", "-f", "-", stdin=manifest)
    assert "configmap/settings created" in applied and "widget.example.dev/gizmo created" in applied
    again = run_kubectl(kube_api, tmp_path, "apply", "-f", "-", stdin=manifest.replace("fast", "slow"))
    assert "configmap/settings configured" in again and "widget.example.dev/gizmo unchanged" in again

    table = run_kubectl(kube_api, tmp_path, "get", "wdg", "-n", namespace)
    # The CRD's columns replace the default Age column, as on a real server (Age only when it declares none).
    assert table.split("\n")[0].split() == ["NAME", "SIZE", "PHASE"]
    assert table.split("\n")[1].split()[:2] == ["gizmo", "4"]
    assert "gizmo" in run_kubectl(kube_api, tmp_path, "get", "examples", "-n", namespace)
    assert namespace in run_kubectl(kube_api, tmp_path, "get", "ns")
    as_json = json.loads(run_kubectl(kube_api, tmp_path, "get", "cm", "settings", "-n", namespace, "-o", "json"))
    assert as_json["data"] == {"mode": "slow"}

    result = subprocess.run(["kubectl", "--kubeconfig", str(kube_api.kubeconfig), "--cache-dir",
                             str(tmp_path / "kube-cache"), "apply", "-f", "-"], capture_output=True, text=True,
                            input=manifest.replace("size: 4", "size: 0"), timeout=60)
    assert result.returncode != 0
    assert "spec.size: Invalid value: 0" in result.stderr


def test_kubectl_create_sends_protobuf_for_simple_kinds(kube_api: Any, core: Any, namespace: str,
                                                        tmp_path: Path) -> None:
    run_kubectl(kube_api, tmp_path, "create", "secret", "generic", "s3-credentials", "-n", namespace,
                "--from-literal=accessKey=AK1", "--from-literal=secretKey=SK1")
    run_kubectl(kube_api, tmp_path, "create", "configmap", "settings", "-n", namespace, "--from-literal=mode=fast")
    run_kubectl(kube_api, tmp_path, "label", "configmap", "settings", "-n", namespace, "team=ml")
    secret = core.read_namespaced_secret("s3-credentials", namespace)
    assert secret.type == "Opaque" and secret.data == {"accessKey": "QUsx", "secretKey": "U0sx"}
    settings = core.read_namespaced_config_map("settings", namespace)
    assert settings.data == {"mode": "fast"} and settings.metadata.labels == {"team": "ml"}

    result = subprocess.run(["kubectl", "--kubeconfig", str(kube_api.kubeconfig), "--cache-dir",
                             str(tmp_path / "kube-cache"), "create", "deployment", "web", "--image=web:1",
                             "-n", namespace], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "send JSON (kubectl apply -f) instead" in result.stderr


def test_protobuf_delete_options_are_understood(core: Any, kube_api: Any, namespace: str) -> None:
    """Typed Go clients (Helm's release store, for one) send DeleteOptions as protobuf."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    type_meta = field(1, b"v1") + field(2, b"DeleteOptions")
    options = field(4, b"Orphan")
    body = b"k8s\x00" + field(1, type_meta) + field(2, options)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "kept", "ownerReferences": [reference]}})
    request = urllib.request.Request(f"{kube_api.url}/api/v1/namespaces/{namespace}/configmaps/owner", data=body,
                                     method="DELETE", headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert core.read_namespaced_config_map("kept", namespace).metadata.owner_references is None


# ------------------------------------------------------------------------------------------------- kopf

OPERATOR = '''
import kopf

@kopf.on.login()
def login(**kwargs):
    return kopf.login_with_kubeconfig(**kwargs)

@kopf.on.create("example.dev", "v1", "widgets")
def created(spec, patch, **_):
    patch.status["phase"] = "Ready"
    patch.status["area"] = spec["size"] * spec["size"]

@kopf.on.delete("example.dev", "v1", "widgets")
def deleted(name, namespace, **_):
    import os, kubernetes.client, kubernetes.config
    kubernetes.config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    kubernetes.client.CoreV1Api().create_namespaced_config_map(
        namespace, {"metadata": {"name": f"farewell-{name}"}})
'''


@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced"])
def test_kopf_operator_handles_create_status_and_delete(scope: str, kube_api: Any, widgets: Any, core: Any, namespace: str,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf
    from kopf._core.intents import registries
    from kopf.testing import KopfRunner

    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR)
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))
    # Other tests import the project's handlers into kopf's default registry; this operator has only its own.
    monkeypatch.setattr(registries, "_default_registry", kopf.OperatorRegistry())
    scope_args = ["--all-namespaces"] if scope == "cluster-wide" else ["--namespace", namespace]
    with KopfRunner(["run", *scope_args, "--standalone", str(operator)], timeout=60) as runner:
        widgets.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("kopf", size=3))
        ready = wait_for(lambda: (o := widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                            "kopf")).get("status") and o, 20)
        assert ready["status"] == {"phase": "Ready", "area": 9}
        assert ready["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]

        widgets.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "kopf")
        wait_for(lambda: gone(lambda: widgets.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                           "kopf")), 20)
        assert core.read_namespaced_config_map("farewell-kopf", namespace)
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None


def test_kopf_peering_crds_apply(http: Http) -> None:
    for plural, kind, scope in [("clusterkopfpeerings", "ClusterKopfPeering", "Cluster"),
                                ("kopfpeerings", "KopfPeering", "Namespaced")]:
        crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": f"{plural}.kopf.dev"},
               "spec": {"scope": scope, "group": "kopf.dev", "names": {"kind": kind, "plural": plural,
                                                                       "singular": kind.lower()},
                        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                            "type": "object", "properties": {"status": {
                                "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}
        status, _ = http.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        assert status in (201, 409)
    status, peering = http.request("POST", "/apis/kopf.dev/v1/clusterkopfpeerings",
                                   {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                    "metadata": {"name": "default"}, "status": {"op-1": {"priority": 0}}})
    assert status == 201 and peering["status"] == {"op-1": {"priority": 0}}


def test_the_server_runs_as_a_program_for_kubectl(tmp_path: Path) -> None:
    import signal
    import sys

    kubeconfig = tmp_path / "kubeconfig"
    crds = Path(__file__).resolve().parents[2] / "crds"
    server = subprocess.Popen([sys.executable, "-m", "finetune_local.kubeapi", "--kubeconfig", str(kubeconfig),
                               "--manifests", str(crds)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline(), server.stdout.readline()]
        assert any("serving on http://127.0.0.1:" in line for line in lines), lines
        namespaces = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir",
                                     str(tmp_path / "cache"), "get", "ns", "-o", "name"],
                                    capture_output=True, text=True, timeout=60)
        assert "namespace/default" in namespaces.stdout.split()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


def test_pod_logs_come_from_the_log_provider(kube_api: Any, core: Any, http: Http, namespace: str,
                                             tmp_path: Path) -> None:
    from finetune_local.kubeapi import pod_logs_from_folder

    (tmp_path / f"{namespace}_trainer-0_main.log").write_text("step 1 loss 2.0\nstep 2 loss 1.5\n")
    core.create_namespaced_pod(namespace, {"metadata": {"name": "trainer-0"},
                                           "spec": {"containers": [{"name": "main", "image": "trainer:1"}]}})
    assert core.read_namespaced_pod_log("trainer-0", namespace) == ""
    kube_api.server.set_log_provider(pod_logs_from_folder(tmp_path))
    try:
        assert core.read_namespaced_pod_log("trainer-0", namespace, tail_lines=1) == "step 2 loss 1.5\n"
        core.patch_namespaced_pod_status("trainer-0", namespace, {"status": {"phase": "Succeeded"}})
        followed = run_kubectl(kube_api, tmp_path, "logs", "-f", "trainer-0", "-n", namespace)
        assert followed == "step 1 loss 2.0\nstep 2 loss 1.5\n"
    finally:
        kube_api.server.set_log_provider(None)
