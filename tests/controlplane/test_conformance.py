"""The same checks against the project's own API server and a real kube-apiserver, for what the operator and the
runner rely on, so that the project's server cannot drift from the real one unnoticed. Each test runs once per
server; the real one needs KUBEBUILDER_ASSETS. What the project's server does not do is marked real-only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from finetune_operator.kube import ApiError, Kube
from tests.conftest import delete_namespace, make_namespace

CR_PATH = "/apis/finetune.dev/v1alpha1/namespaces/{ns}/datasets"
DATASET = {"apiVersion": "finetune.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "chats"},
           "spec": {"source": {"uri": "s3://finetune/uploads/chats.jsonl"}, "format": "chat"}}  # fmt: skip


class Server:
    """One API server as the conformance checks use it: raw requests with the real error shape."""

    def __init__(self, api: Any, real: bool) -> None:
        self.api = api
        self.real = real
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(api.kubeconfig), client_configuration=configuration)
        self.kube = Kube(configuration, timeout_seconds=30)

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json", accept: str = "application/json", **query: Any) -> Any:
        return self.kube.request(method, path, body=body, query=query or None, content_type=content_type, accept=accept)

    def error(self, method: str, path: str, body: Any = None, content_type: str = "application/json", **query: Any) -> ApiError:
        with pytest.raises(ApiError) as raised:
            self.request(method, path, body, content_type, **query)
        return raised.value

    def real_only(self, what: str) -> None:
        if not self.real:
            pytest.skip(f"real-only: the project's API server does not do {what}")


@pytest.fixture(params=["project", "real"])
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "project":
        return Server(request.getfixturevalue("local_kube_api"), real=False)
    api = request.getfixturevalue("kube_api")
    if not api.real:
        pytest.skip("needs a real control plane (KUBEBUILDER_ASSETS)")
    return Server(api, real=True)


@pytest.fixture
def ns(server: Server, request: pytest.FixtureRequest) -> Iterator[str]:
    with server.api.client() as client:
        name = make_namespace(client, "conformance")
        try:
            yield name
        finally:
            delete_namespace(client, name)


def restricted_pod(name: str, **resources: Any) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "busybox:1", "resources": resources,
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
        },
    }  # fmt: skip


def wait_until(what: str, condition: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_status_subresource_splits_spec_and_status_writes(server: Server, ns: str) -> None:
    path = CR_PATH.format(ns=ns)
    created = server.request("POST", path, {**DATASET, "status": {"phase": "Ready"}})
    assert "phase" not in (created.get("status") or {}), "status in a create is dropped"
    assert created["metadata"]["generation"] == 1
    status = server.request("PATCH", f"{path}/chats/status", {"status": {"phase": "Validating"}}, "application/merge-patch+json")
    assert status["status"]["phase"] == "Validating" and status["metadata"]["generation"] == 1
    ignored = server.request("PATCH", f"{path}/chats", {"status": {"phase": "Ready"}, "metadata": {"labels": {"a": "b"}}},
                             "application/merge-patch+json")  # fmt: skip
    assert ignored["status"]["phase"] == "Validating" and ignored["metadata"]["generation"] == 1, "metadata and status do not bump it"
    changed = server.request("PATCH", f"{path}/chats", {"spec": {"format": "instruction"}}, "application/merge-patch+json")
    assert changed["metadata"]["generation"] == 2
    spec_via_status = server.request("PATCH", f"{path}/chats/status", {"spec": {"format": "chat"}}, "application/merge-patch+json")
    assert spec_via_status["spec"]["format"] == "instruction", "the status endpoint leaves the spec alone"


def test_a_stale_resource_version_is_a_conflict(server: Server, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps"
    created = server.request("POST", path, {"metadata": {"name": "c"}, "data": {"a": "1"}})
    server.request("PATCH", f"{path}/c", {"data": {"a": "2"}}, "application/merge-patch+json")
    stale = {**created, "data": {"a": "3"}}
    error = server.error("PUT", f"{path}/c", stale)
    assert (error.status, error.reason) == (409, "Conflict")
    assert 'Operation cannot be fulfilled on configmaps "c": the object has been modified' in error.message


def test_invalid_custom_resources_get_422_naming_the_field_and_the_rule(server: Server, ns: str) -> None:
    bad = {**DATASET, "metadata": {"name": "bad"}, "spec": {**DATASET["spec"], "format": "poetry"}}
    error = server.error("POST", CR_PATH.format(ns=ns), bad)
    assert (error.status, error.reason) == (422, "Invalid")
    assert error.message.startswith('Dataset.finetune.dev "bad" is invalid: '), error.message
    assert 'spec.format: Unsupported value: "poetry": supported values: "auto", "chat", "instruction"' in error.message, error.message
    assert "FieldValueNotSupported" in error.causes or "FieldValueInvalid" in error.causes


def test_label_values_and_annotations_have_their_limits(server: Server, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps"
    error = server.error("POST", path, {"metadata": {"name": "long-label", "labels": {"a": "x" * 64}}})
    assert error.status == 422 and "metadata.labels: Invalid value:" in error.message and "63" in error.message
    server.request("POST", path, {"metadata": {"name": "ok-label", "labels": {"a": "x" * 63}}})
    error = server.error("POST", path, {"metadata": {"name": "big", "annotations": {"a": "x" * (256 * 1024)}}})
    assert error.status == 422 and "metadata.annotations: Too long: may not be more than 262144 bytes" in error.message


def test_the_qos_class_is_set_at_creation_and_cannot_change(server: Server, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/pods"
    limits = {"cpu": "100m", "memory": "64Mi"}
    assert server.request("POST", path, restricted_pod("guaranteed", limits=limits))["status"]["qosClass"] == "Guaranteed"
    assert server.request("POST", path, restricted_pod("burstable", requests={"cpu": "50m"}))["status"]["qosClass"] == "Burstable"
    assert server.request("POST", path, restricted_pod("besteffort"))["status"]["qosClass"] == "BestEffort"
    error = server.error("PATCH", f"{path}/guaranteed/status", {"status": {"qosClass": "BestEffort"}}, "application/merge-patch+json")
    assert error.status == 422 and "field is immutable" in error.message and "qosClass" in error.message
    same = server.request("PATCH", f"{path}/guaranteed/status", {"status": {"phase": "Running"}}, "application/merge-patch+json")
    assert same["status"]["qosClass"] == "Guaranteed", "a status write without it keeps it"


def test_nothing_new_may_be_created_in_a_namespace_being_deleted(server: Server, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps"
    server.request("POST", path, {"metadata": {"name": "keep", "finalizers": ["example.com/hold"]}})
    server.request("DELETE", f"/api/v1/namespaces/{ns}")
    error = server.error("POST", path, {"metadata": {"name": "late"}})
    assert error.status == 403 and error.namespace_terminating, error
    server.request("PATCH", f"{path}/keep", {"metadata": {"finalizers": None}}, "application/merge-patch+json")


def test_dependents_of_an_owner_that_never_existed_are_garbage_collected(server: Server, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps"
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "00000000-0000-0000-0000-000000000001"}
    server.request("POST", path, {"metadata": {"name": "orphan", "ownerReferences": [owner]}})

    def gone() -> bool:
        try:
            server.request("GET", f"{path}/orphan")
        except ApiError as error:
            return error.status == 404
        return False

    wait_until("the garbage collector", gone)


def test_server_side_apply_conflicts_between_managers(server: Server, ns: str) -> None:
    server.real_only("field managers (managedFields)")
    path = f"/api/v1/namespaces/{ns}/configmaps/shared"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"key": "one"}}
    server.request("PATCH", path, body, "application/apply-patch+yaml", fieldManager="alice")
    error = server.error("PATCH", path, {**body, "data": {"key": "two"}}, "application/apply-patch+yaml", fieldManager="bob")
    assert (error.status, error.reason) == (409, "Conflict") and "alice" in error.message
    forced = server.request("PATCH", path, {**body, "data": {"key": "two"}}, "application/apply-patch+yaml", fieldManager="bob", force="true")
    assert forced["data"]["key"] == "two"


def test_pod_security_admission_refuses_a_pod_the_restricted_profile_forbids(server: Server, ns: str) -> None:
    server.real_only("Pod Security admission")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}
    error = server.error("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    assert error.status == 403 and 'violates PodSecurity "restricted:latest"' in error.message
    server.request("POST", f"/api/v1/namespaces/{ns}/pods", restricted_pod("compliant"))


def test_an_events_k8s_io_event_is_also_a_core_event(server: Server, ns: str) -> None:
    server.real_only("one store for core/v1 and events.k8s.io/v1 Events")
    event = {
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "transition"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "finetune.dev/operator", "reportingInstance": "operator-0",
        "action": "Reconcile", "reason": "Running", "type": "Normal", "note": "Training started",
        "regarding": {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "job", "namespace": ns},
    }  # fmt: skip
    server.request("POST", f"/apis/events.k8s.io/v1/namespaces/{ns}/events", event)
    core = server.request("GET", f"/api/v1/namespaces/{ns}/events/transition")
    assert core["message"] == "Training started" and core["involvedObject"]["name"] == "job"


def test_a_field_selector_on_an_unsupported_field_is_refused(server: Server, ns: str) -> None:
    error = server.error("GET", f"/api/v1/namespaces/{ns}/configmaps", fieldSelector="data.key=1")
    assert error.status == 400 and '"data.key" is not a known field selector: only "metadata.name", "metadata.namespace"' in error.message
    error = server.error("GET", f"/api/v1/namespaces/{ns}/pods", fieldSelector="spec.color=blue")
    assert error.status == 400 and "field label not supported: spec.color" in error.message, "kinds with field labels of their own"
    listed = server.request("GET", f"/api/v1/namespaces/{ns}/pods", fieldSelector="status.phase=Running")
    assert listed["items"] == []


FINETUNEJOB = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bot"},
               "spec": {"baseModel": {"uri": "s3://finetune/models/tiny"}, "dataset": "chats"}}  # fmt: skip


def test_cel_rules_fail_with_the_real_servers_words(server: Server, ns: str) -> None:
    path = f"/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs"
    both = {**FINETUNEJOB, "spec": {**FINETUNEJOB["spec"], "validationDataset": "held-out", "validationSplit": 0.1}}
    error = server.error("POST", path, both)
    assert error.status == 422
    assert error.message == 'FineTuneJob.finetune.dev "bot" is invalid: spec: Invalid value: set validationDataset or validationSplit, not both'
    server.request("POST", path, FINETUNEJOB)
    error = server.error("PATCH", f"{path}/bot", {"spec": {"dataset": "other"}}, "application/merge-patch+json")
    assert error.status == 422
    assert error.message == 'FineTuneJob.finetune.dev "bot" is invalid: spec.dataset: Invalid value: dataset is immutable'


def test_a_wrong_type_is_refused_before_the_rules_run(server: Server, ns: str) -> None:
    path = f"/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs"
    wrong = {**FINETUNEJOB, "spec": {**FINETUNEJOB["spec"], "numNodes": "two"}}
    error = server.error("POST", path, wrong)
    assert error.status == 422
    assert error.message == ('FineTuneJob.finetune.dev "bot" is invalid: [spec.numNodes: Invalid value: "string": spec.numNodes in body '
                             'must be of type integer: "string", <nil>: Invalid value: null: some validation rules were not checked '
                             'because the object was invalid; correct the existing errors to complete validation]'), error.message


def test_a_client_may_ask_for_an_objects_metadata_only(server: Server, ns: str) -> None:
    """How the operator reads a Secret's labels (its owner's consent) without ever receiving its data."""
    from finetune_operator.kube import METADATA_ONLY

    server.request("POST", f"/api/v1/namespaces/{ns}/secrets",
                   {"metadata": {"name": "token", "labels": {"finetune.dev/allow-use": "true"}}, "stringData": {"token": "s3cr3t"}})  # fmt: skip
    meta = server.request("GET", f"/api/v1/namespaces/{ns}/secrets/token", accept=METADATA_ONLY)
    assert meta["kind"] == "PartialObjectMetadata" and "data" not in meta and "stringData" not in meta
    assert meta["metadata"]["labels"] == {"finetune.dev/allow-use": "true"}
    assert server.kube.secret_labels(ns, "token") == {"finetune.dev/allow-use": "true"}
    assert server.kube.secret_labels(ns, "absent") is None
