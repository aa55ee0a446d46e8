"""A running pod sees its ConfigMap change without a restart, as with the kubelet's volume sync: the
builtin inference server hot-loads adapters this way."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from finetune_local.runner import LocalRunner

WAIT_SECONDS = 30


def wait_for(what: str, probe, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)



@pytest.fixture
def kube_api(local_kube_api: Any) -> Any:
    """The runner's own Job and Deployment controllers are tested on the project's API server (against a real
    control plane, whose controllers do that work, the runner's kubelet mode is tested in test_kubelet_mode.py)."""
    return local_kube_api


@pytest.fixture
def namespace(local_namespace: str) -> str:
    return local_namespace


@pytest.fixture
def runner(kube_api: Any, namespace: str, tmp_path: Path) -> Iterator[LocalRunner]:
    local_runner = LocalRunner(kube_api.kubeconfig, namespace=namespace, work_dir=tmp_path / "runner", grace_period_cap=5)
    local_runner.start()
    try:
        yield local_runner
    finally:
        local_runner.stop()


def test_a_config_map_update_reaches_the_running_pod_without_a_restart(kube_api: Any, namespace: str, runner: LocalRunner, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    program = textwrap.dedent(
        """
        import os, time
        while True:
            text = open("/etc/app/settings.json").read()
            with open("/out/copy.tmp", "w") as f:
                f.write(text)
            os.replace("/out/copy.tmp", "/out/copy")
            time.sleep(0.1)
        """
    )
    with kube_api.client() as api:
        core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"settings.json": '{"path": "/etc/app/x", "v": 1}'}})
        apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": "reader"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "reader"}},
                "template": {
                    "metadata": {"labels": {"app": "reader"}},
                    "spec": {
                        "containers": [{
                            "name": "main", "image": "python", "command": ["python", "-c", program],
                            "volumeMounts": [{"name": "settings", "mountPath": "/etc/app"}, {"name": "out", "mountPath": "/out"}],
                        }],
                        "volumes": [{"name": "settings", "configMap": {"name": "settings"}}, {"name": "out", "hostPath": {"path": str(seen)}}],
                    },
                },
            },
        })  # fmt: skip
        copy = seen / "copy"
        first = wait_for("the pod to read its ConfigMap", lambda: copy.exists() and copy.read_text())
        assert '"v": 1' in first and "/etc/app/x" not in first, "paths in the file are remapped as at start"
        [pod] = core.list_namespaced_pod(namespace, label_selector="app=reader").items

        core.patch_namespaced_config_map("settings", namespace, {"data": {"settings.json": '{"path": "/etc/app/x", "v": 2}'}})
        second = wait_for("the pod to see the new content", lambda: '"v": 2' in copy.read_text() and copy.read_text())
        assert "/etc/app/x" not in second
        [same] = core.list_namespaced_pod(namespace, label_selector="app=reader").items
        assert same.metadata.uid == pod.metadata.uid
        assert same.status.container_statuses[0].restart_count == 0


def test_a_slow_starting_container_is_not_killed_by_liveness_before_its_startup_probe_passes(kube_api: Any, namespace: str, runner: LocalRunner) -> None:
    """Like the kubelet: readiness and liveness wait for the startup probe; the server opens its port late."""
    program = textwrap.dedent(
        """
        import http.server, os, time
        time.sleep(6)  # longer than liveness would allow (failureThreshold 2 at 1 s)
        class Ok(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers()
        http.server.HTTPServer((os.environ["POD_IP"], 8080), Ok).serve_forever()
        """
    )
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2}
    with kube_api.client() as api:
        core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
        apps.create_namespaced_deployment(namespace, {
            "metadata": {"name": "slow"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "slow"}},
                "template": {
                    "metadata": {"labels": {"app": "slow"}},
                    "spec": {"containers": [{
                        "name": "main", "image": "python", "command": ["python", "-c", program],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        "livenessProbe": probe, "readinessProbe": probe,
                        "startupProbe": {**probe, "failureThreshold": 30},
                    }]},
                },
            },
        })  # fmt: skip

        def ready_pod():
            pods = core.list_namespaced_pod(namespace, label_selector="app=slow").items
            return next((p for p in pods if p.status.container_statuses and p.status.container_statuses[0].ready), None)

        pod = wait_for("the slow container to become ready", ready_pod)
        status = pod.status.container_statuses[0]
        assert status.restart_count == 0 and status.started is True
