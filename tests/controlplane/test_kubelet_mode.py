"""The local runner in kubelet mode, against a real control plane: the real Job, ReplicaSet and Deployment
controllers and garbage collector do their part; the runner registers a Node, binds pods to it, runs them
and writes pod status as a kubelet does (never ``status.qosClass``, which the API server owns).

These need kube-controller-manager, so they run only where ``KUBEBUILDER_ASSETS`` gives a real control plane.
"""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from finetune_local.runner import LocalRunner
from tests.local.test_runner import Cluster, process_groups_alive, wait_for

RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@pytest.fixture
def real(kube_api: Any) -> Any:
    if not kube_api.real:
        pytest.skip(f"needs a real control plane (KUBEBUILDER_ASSETS); this run uses {kube_api.describe()}")
    return kube_api


@pytest.fixture
def cluster(real: Any, namespace: str) -> Iterator[Cluster]:
    with real.client() as api_client:
        yield Cluster(api_client, namespace)


@pytest.fixture
def runner(real: Any, cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[LocalRunner]:
    caplog.set_level(logging.WARNING, logger="finetune_local.runner")
    local_runner = LocalRunner(real.kubeconfig, namespace=cluster.namespace, work_dir=tmp_path / "runner", grace_period_cap=5,
                               kubelet_only=True, node_heartbeat_seconds=0.5)  # fmt: skip
    local_runner.start()
    try:
        yield local_runner
    finally:
        local_runner.stop()
        assert process_groups_alive(local_runner.started_process_groups) == []
    failed_writes = [r.getMessage() for r in caplog.records if "status update failed" in r.getMessage()]
    assert failed_writes == [], "the API server refused pod status the runner wrote"


def container(name: str, source: str, **extra: Any) -> dict:
    return {"name": name, "image": "python", "command": [sys.executable, "-c", textwrap.dedent(source)],
            "securityContext": RESTRICTED_CONTAINER, **extra}  # fmt: skip


def job(name: str, containers: list[dict], **spec: Any) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "securityContext": RESTRICTED_POD, "containers": containers}}, **spec},
    }


def test_the_runner_registers_a_ready_node_and_renews_its_lease(real: Any, runner: LocalRunner) -> None:
    with real.client() as api:
        core = kubernetes.client.CoreV1Api(api)
        node = core.read_node(runner.node_name)
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.status == "True"
        assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == "127.0.0.1"
        leases = kubernetes.client.CoordinationV1Api(api)
        first = leases.read_namespaced_lease(runner.node_name, "kube-node-lease").spec.renew_time
        wait_for("the node's lease to be renewed",
                 lambda: leases.read_namespaced_lease(runner.node_name, "kube-node-lease").spec.renew_time > first)  # fmt: skip
    runner.stop()
    with real.client() as api:
        with pytest.raises(kubernetes.client.ApiException) as gone:
            kubernetes.client.CoreV1Api(api).read_node(runner.node_name)
        assert gone.value.status == 404, "a stopped runner deregisters its Node"


def test_a_guaranteed_pod_runs_to_completion_bound_to_the_node_with_the_servers_qos_class(cluster: Cluster, runner: LocalRunner) -> None:
    """The real server sets status.qosClass at creation and refuses any change: a runner that wrote its own
    (BestEffort) could never report this pod's status, and its Job would never complete."""
    limits = {"cpu": "100m", "memory": "64Mi"}
    cluster.batch.create_namespaced_job(cluster.namespace, job("once", [container("main", "print('done')", resources={"limits": limits})]))
    complete = cluster.wait_job_condition("once", "Complete", timeout=60)
    assert complete.reason == "CompletionsReached", "the real Job controller decided"
    [pod] = cluster.job_pods("once")
    assert pod.spec.node_name == runner.node_name
    assert pod.status.qos_class == "Guaranteed"
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


def test_exit_code_42_fails_the_job_at_once_through_the_real_pod_failure_policy(cluster: Cluster, runner: LocalRunner) -> None:
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}]}
    cluster.batch.create_namespaced_job(cluster.namespace, job("bad-input", [container("main", "raise SystemExit(42)")], backoffLimit=3, podFailurePolicy=policy))
    failed = cluster.wait_job_condition("bad-input", "Failed", timeout=60)
    assert failed.reason == "PodFailurePolicy"
    assert len(cluster.job_pods("bad-input")) == 1, "no retry after a FailJob exit code"


def test_a_deployment_behind_a_service_is_ready_and_answers_and_the_controllers_have_no_node_complaints(
    real: Any, cluster: Cluster, runner: LocalRunner
) -> None:
    import urllib.request

    ns = cluster.namespace
    server = container("web", """
        import http.server, os
        class Hello(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"hello from " + os.environ["POD_NAME"].encode())
        http.server.HTTPServer((os.environ["POD_IP"], 8080), Hello).serve_forever()
    """, ports=[{"containerPort": 8080}], readinessProbe={"httpGet": {"port": 8080, "path": "/"}},
        env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
             {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])  # fmt: skip
    cluster.apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"securityContext": RESTRICTED_POD, "containers": [server]}}},
    })  # fmt: skip
    cluster.core.create_namespaced_service(ns, {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    wait_for("the Deployment to be ready", lambda: cluster.apps.read_namespaced_deployment_status("web", ns).status.ready_replicas == 1, 60)
    [pod] = [p for p in cluster.pods(app="web") if p.metadata.deletion_timestamp is None]
    owner = pod.metadata.owner_references[0]
    assert owner.kind == "ReplicaSet", "the real Deployment controller made a ReplicaSet, which made the pod"
    assert pod.spec.node_name == runner.node_name
    address = wait_for("the Service's local address", lambda: (cluster.core.read_namespaced_service("web", ns).metadata.annotations or {}).get("local.finetune.dev/address"))
    assert urllib.request.urlopen(f"http://{address}/", timeout=10).read().decode() == f"hello from {pod.metadata.name}"
    # The endpoints controllers had a Node to look up for every pod (pods the runner ran unbound made them
    # log `nodeName: Invalid value: ""` and `Node Not Found`).
    log = real.server.log_tail("kube-controller-manager", 10_000_000)
    assert "nodeName: Invalid value" not in log and "Node Not Found" not in log


def test_deleting_a_running_jobs_pod_stops_its_process_and_the_job_controller_makes_another(cluster: Cluster, runner: LocalRunner) -> None:
    ns = cluster.namespace
    cluster.batch.create_namespaced_job(ns, job("long", [container("main", "import time; time.sleep(600)")], backoffLimit=2))
    first = wait_for("a running pod", lambda: next((p for p in cluster.job_pods("long") if p.status.phase == "Running"), None), 60)
    groups_before = list(runner.started_process_groups)
    cluster.core.delete_namespaced_pod(first.metadata.name, ns)
    wait_for("a replacement pod running", lambda: any(
        p.metadata.name != first.metadata.name and p.status.phase == "Running" for p in cluster.job_pods("long")), 90)
    assert process_groups_alive(groups_before[:1]) == [], "the deleted pod's process was stopped"
    wait_for("the deleted pod to be gone", lambda: first.metadata.name not in {p.metadata.name for p in cluster.job_pods("long")}, 60)


def test_an_indexed_job_gets_the_real_controllers_hostnames_and_completion_indexes(cluster: Cluster, runner: LocalRunner) -> None:
    ns = cluster.namespace
    cluster.core.create_namespaced_service(ns, {"metadata": {"name": "ranks"}, "spec": {"clusterIP": "None", "selector": {"app": "ranks"}, "ports": [{"port": 29500}]}})
    report = container("main", """
        import json, os
        open("/dev/termination-log", "w").write(json.dumps({"index": os.environ["JOB_COMPLETION_INDEX"], "hostname": os.environ.get("HOSTNAME", "")}))
    """)
    body = job("ranks", [report], completionMode="Indexed", completions=2, parallelism=2)
    body["spec"]["template"]["metadata"] = {"labels": {"app": "ranks"}}
    body["spec"]["template"]["spec"]["subdomain"] = "ranks"
    cluster.batch.create_namespaced_job(ns, body)
    cluster.wait_job_condition("ranks", "Complete", timeout=60)
    reports = sorted((json.loads(p.status.container_statuses[0].state.terminated.message) for p in cluster.job_pods("ranks")), key=lambda r: r["index"])
    assert [r["index"] for r in reports] == ["0", "1"]
    assert [r["hostname"] for r in reports] == ["ranks-0", "ranks-1"]
    assert cluster.job("ranks").status.completed_indexes == "0,1"  # as the real Job controller writes it


def test_a_stopped_runners_pods_end_failed_and_a_new_runner_runs_the_replacement(real: Any, cluster: Cluster, tmp_path: Path) -> None:
    ns = cluster.namespace
    first = LocalRunner(real.kubeconfig, namespace=ns, work_dir=tmp_path / "first", grace_period_cap=5, kubelet_only=True).start()
    try:
        cluster.batch.create_namespaced_job(ns, job("survivor", [container("main", "import time; time.sleep(3)")], backoffLimit=3))
        wait_for("the first pod running", lambda: any(p.status.phase == "Running" for p in cluster.job_pods("survivor")), 60)
    finally:
        first.stop()
    assert process_groups_alive(first.started_process_groups) == []
    second = LocalRunner(real.kubeconfig, namespace=ns, work_dir=tmp_path / "second", grace_period_cap=5, kubelet_only=True).start()
    try:
        cluster.wait_job_condition("survivor", "Complete", timeout=120)
    finally:
        second.stop()
    assert any(p.spec.node_name == second.node_name and p.status.phase == "Succeeded" for p in cluster.job_pods("survivor"))
