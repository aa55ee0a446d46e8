"""The red-team suite's stage: two teams, A (the attacker) and B (the victim), one namespace each, each with a
store key scoped to its own prefixes (``storage_keys grant`` against the real SeaweedFS), B's data in the
store, and one operator watching every namespace. On a real control plane the attacker is a user bound to the
``edit`` role in A only (the chart's aggregated roles add the four kinds to it); on the project's own API
server (no authorization) the attacker's requests are the same, and only the operator's checks stand.

Every test is one attack; ``make security-check`` runs this folder with the pods' own attack tests
(``tests/conftest.py`` lists them) and prints, last, one JSON line with the attacks tried and refused."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import delete_namespace, make_namespace
from tests.operator.conftest import OperatorProcess, contract_trainer_bin, grant_scoped_key, operator_env, storage_credentials  # noqa: F401

SECRET_VALUE = "b-team-token-that-must-never-leak-7f3a9c"
VICTIM_DATA = b'{"messages": [{"role": "user", "content": "B\'s private question"}, {"role": "assistant", "content": "B\'s private answer"}]}\n'


@dataclass
class Stage:
    kube_api: Any
    store: Any
    operator: OperatorProcess
    a: str
    b: str
    attacker_kubeconfig: Path
    keys_a: tuple[str, str]
    keys_b: tuple[str, str]

    def kubectl(self, *args: str, input: str | None = None, namespace: str | None = None) -> subprocess.CompletedProcess:
        """kubectl as the attacker (in A unless told otherwise)."""
        return subprocess.run(["kubectl", "--kubeconfig", str(self.attacker_kubeconfig), "-n", namespace or self.a, *args],
                              input=input, capture_output=True, text=True, timeout=60)  # fmt: skip

    def apply(self, text: str) -> None:
        result = self.kubectl("apply", "-f", "-", input=textwrap.dedent(text))
        assert result.returncode == 0, result.stderr

    def custom(self) -> Any:
        import kubernetes

        return kubernetes.client.CustomObjectsApi(self.kube_api.client())

    def status_when(self, plural: str, name: str, done: Callable[[dict], bool], timeout: float = 90) -> dict:
        """The object's status once ``done`` holds (the operator has decided); fails with the last status."""
        deadline = time.monotonic() + timeout
        status: dict = {}
        while time.monotonic() < deadline:
            obj = self.custom().get_namespaced_custom_object("finetune.dev", "v1alpha1", self.a, plural, name)
            status = obj.get("status") or {}
            if done(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"{plural}/{name}: the operator did not decide in {timeout}s; status: {status}\n{self.operator.log()[-3000:]}")

    def pods_and_jobs(self, namespace: str) -> list[str]:
        import kubernetes

        client = self.kube_api.client()
        pods = kubernetes.client.CoreV1Api(client).list_namespaced_pod(namespace).items
        jobs = kubernetes.client.BatchV1Api(client).list_namespaced_job(namespace).items
        deployments = kubernetes.client.AppsV1Api(client).list_namespaced_deployment(namespace).items
        return [f"Pod {p.metadata.name}" for p in pods] + [f"Job {j.metadata.name}" for j in jobs] + [f"Deployment {d.metadata.name}" for d in deployments]

    def everything_said(self, namespace: str) -> str:
        """Every word the operator said or wrote where a tenant can read it: Events, the four kinds' status,
        ConfigMaps, and the operator's own log."""
        import kubernetes

        client = self.kube_api.client()
        core = kubernetes.client.CoreV1Api(client)
        words = [json.dumps(client.sanitize_for_serialization(core.list_namespaced_event(namespace).items))]
        words.append(json.dumps(client.sanitize_for_serialization(core.list_namespaced_config_map(namespace).items)))
        for plural in ("datasets", "finetunejobs", "evaluations", "inferenceendpoints"):
            words.append(json.dumps(self.custom().list_namespaced_custom_object("finetune.dev", "v1alpha1", namespace, plural)))
        words.append(self.operator.log())
        return "\n".join(words)

    def b_objects(self) -> list[str]:
        """The names of every object under B's prefixes, as the store's admin sees them."""
        client = self.store.client()
        return sorted(o.object_name for area in ("datasets", "jobs", "evaluations", "uploads")
                      for o in client.list_objects(self.store.bucket, prefix=f"{area}/{self.b}/", recursive=True))  # fmt: skip


def _attacker(kube_api: Any, namespace: str, folder: Path) -> Path:
    """A person bound to ``edit`` in A only (real control plane); the admin's kubeconfig on the project's server."""
    if not kube_api.real:
        return kube_api.kubeconfig
    import kubernetes

    user = "mallory"
    kubernetes.client.RbacAuthorizationV1Api(kube_api.client()).create_namespaced_role_binding(namespace, {
        "metadata": {"name": "mallory-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    })  # fmt: skip
    return kube_api.server.user_kubeconfig(user, folder / "mallory.kubeconfig", namespace=namespace)


@pytest.fixture(scope="module")
def stage(kube_api, object_store, storage_credentials, tmp_path_factory) -> Iterator[Stage]:  # noqa: F811
    import kubernetes

    folder = tmp_path_factory.mktemp("red-team")
    with kube_api.client() as admin:
        a, b = make_namespace(admin, "team-a"), make_namespace(admin, "team-b")
        try:
            keys_a = grant_scoped_key(kube_api, object_store, a)
            keys_b = grant_scoped_key(kube_api, object_store, b)
            core = kubernetes.client.CoreV1Api(admin)
            # B's own things: a dataset file, a model, and a token B has not allowed anyone to use.
            client = object_store.client()
            client.put_object(object_store.bucket, f"uploads/{b}/private.jsonl", io.BytesIO(VICTIM_DATA), len(VICTIM_DATA))
            client.put_object(object_store.bucket, f"jobs/{b}/tuned-1/model/manifest.json", io.BytesIO(b"{}"), 2)
            core.create_namespaced_secret(b, {"metadata": {"name": "b-token"}, "stringData": {"token": SECRET_VALUE}})
            # In A, a Secret A's admin made and never allowed specs to use.
            core.create_namespaced_secret(a, {"metadata": {"name": "ci-token"}, "stringData": {"token": SECRET_VALUE}})
            env = operator_env(kube_api, object_store, storage_credentials)
            operator = OperatorProcess(env=env, log_path=folder / "operator.log", metrics_port=int(env["FINETUNE_METRICS_PORT"]),
                                       health_port=int(env["FINETUNE_HEALTH_PORT"])).start()  # fmt: skip
            try:
                yield Stage(kube_api, object_store, operator, a, b, _attacker(kube_api, a, folder), keys_a, keys_b)
            finally:
                operator.stop()
        finally:
            delete_namespace(admin, a)
            delete_namespace(admin, b)


def secret_key(stage: Stage, namespace: str) -> tuple[str, str]:
    """A's store keys as the attacker reads them from A's Secret (``edit`` may read Secrets of its namespace)."""
    result = stage.kubectl("get", "secret", "finetune-storage", "-o", "json", namespace=namespace)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)["data"]
    return base64.b64decode(data["accessKey"]).decode(), base64.b64decode(data["secretKey"]).decode()
