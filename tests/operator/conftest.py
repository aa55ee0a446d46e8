"""Fixtures for the operator's integration tests: the operator as it runs in production (a
``python -m finetune_operator`` process), the local runner in place of the cluster's nodes, and a
contract-following trainer in place of the real one, so a FineTuneJob's lifecycle takes seconds."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class OperatorProcess:
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    health_port: int
    process: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "finetune_operator"], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
        )
        log.close()
        from finetune_local.processes import wait_until_live

        wait_until_live(self.process, f"http://127.0.0.1:{self.health_port}/healthz", 60, "the operator", lambda: self.log()[-3000:])
        return self

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to tidy up, as when its node dies."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics_once(self, *lines: str, timeout: float = 60) -> str:
        """The operator's /metrics text once it holds every one of ``lines``. The operator counts a reconcile
        after its status patch and Events are answered, so a client that has just seen them must wait."""
        import urllib.request

        from tests.conftest import wait_until

        def text() -> str | None:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
            return body if all(line in body for line in lines) else None

        return wait_until(text, f"the operator's metrics to show {lines}", timeout=timeout)


@pytest.fixture(scope="session")
def storage_credentials(object_store, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("operator-credentials")
    (folder / "accessKey").write_text(object_store.access_key)
    (folder / "secretKey").write_text(object_store.secret_key)
    folder.chmod(0o700)
    return folder


@pytest.fixture(scope="session")
def contract_trainer_bin(tmp_path_factory) -> Path:
    """A folder whose `finetune-trainer train` runs the contract-following test trainer (every other
    subcommand runs the real trainer)."""
    folder = tmp_path_factory.mktemp("contract-trainer-bin")
    shim = folder / "finetune-trainer"
    shim.write_text(
        "#!/bin/sh\n"
        f'export PYTHONPATH="{REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        ': "${CONTRACT_TRAINER_STEPS:=6}" "${CONTRACT_TRAINER_STEP_SECONDS:=0.3}"\n'
        "export CONTRACT_TRAINER_STEPS CONTRACT_TRAINER_STEP_SECONDS\n"
        'if [ "$1" = train ]; then\n'
        f'  exec "{sys.executable}" -m tests.operator.contract_trainer "$@"\n'
        "fi\n"
        f'exec "{sys.executable}" -m finetune_trainer.cli "$@"\n'
    )
    shim.chmod(0o755)
    return folder


def operator_env(kube_api, object_store, storage_credentials: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update(
        {
            "KUBECONFIG": str(kube_api.operator_kubeconfig()),
            "FINETUNE_STORAGE_ENDPOINT": object_store.endpoint,
            "FINETUNE_STORAGE_SECURE": "false",
            "FINETUNE_STORAGE_REGION": "us-east-1",
            "FINETUNE_STORAGE_SCOPED_KEYS": "true",
            "FINETUNE_STORAGE_BUCKET": object_store.bucket,
            "FINETUNE_STORAGE_CREDENTIALS_DIR": str(storage_credentials),
            "FINETUNE_TRAINER_IMAGE": "finetune-trainer:test",
            "FINETUNE_PROGRESS_INTERVAL_SECONDS": "1",
            "FINETUNE_LOG_FORMAT": "text",
            "FINETUNE_BACKOFF_LIMIT": "1",
            "FINETUNE_TERMINATION_GRACE_SECONDS": "5",
            "FINETUNE_DEFAULT_CPU": "1",
            "FINETUNE_DEFAULT_MEMORY": "1Gi",
            "FINETUNE_METRICS_PORT": str(free_port()),
            "FINETUNE_HEALTH_PORT": str(free_port()),
            "FINETUNE_WATCH_TIMEOUT_SECONDS": "60",
            # base models every tenant reads; each namespace's own files live under uploads/<ns>/, jobs/<ns>/...
            "FINETUNE_SHARED_PREFIXES": f"s3://{object_store.bucket}/models",
        }
    )
    env.update(overrides)
    return env


@pytest.fixture
def start_operator(kube_api, object_store, storage_credentials, tmp_path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(**overrides: str) -> OperatorProcess:
        env = operator_env(kube_api, object_store, storage_credentials, **overrides)
        proc = OperatorProcess(env=env, log_path=tmp_path / f"operator-{len(started)}.log", metrics_port=int(env["FINETUNE_METRICS_PORT"]), health_port=int(env["FINETUNE_HEALTH_PORT"]))
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def runner(kube_api, contract_trainer_bin, namespace, tmp_path) -> Iterator[Any]:
    """The local runner for this test's namespace, running the contract trainer for `finetune-trainer`."""
    from finetune_local.runner import LocalRunner

    r = LocalRunner(kube_api.kubeconfig, namespace=namespace, work_dir=tmp_path / "runner", grace_period_cap=10,
                    extra_path=[str(contract_trainer_bin)], kubelet_only=kube_api.real)
    r.start()
    try:
        yield r
    finally:
        r.stop()


class Cluster:
    """What a user does with kubectl, and what a test needs to wait for."""

    def __init__(self, kube_api, namespace: str):
        import kubernetes

        self.kube_api = kube_api
        self.namespace = namespace
        self.api = kube_api.client()
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.batch = kubernetes.client.BatchV1Api(self.api)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kube_api.kubeconfig), "-n", self.namespace, *args],
            input=input, capture_output=True, text=True, check=check, timeout=60,
        )

    def apply(self, text: str) -> None:
        self.kubectl("apply", "-f", "-", input=text)

    def get(self, plural: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object("finetune.dev", "v1alpha1", self.namespace, plural, name)

    def patch_status(self, plural: str, name: str, status: dict) -> None:
        self.custom.patch_namespaced_custom_object_status("finetune.dev", "v1alpha1", self.namespace, plural, name, {"status": status})

    def patch_spec(self, plural: str, name: str, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object("finetune.dev", "v1alpha1", self.namespace, plural, name, {"spec": spec})

    def wait_for(self, plural: str, name: str, predicate: Callable[[dict], bool], timeout: float = 60, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        obj: dict = {}
        while time.monotonic() < deadline:
            try:
                obj = self.get(plural, name)
            except Exception:
                obj = {}
            if obj and predicate(obj):
                return obj
            time.sleep(0.2)
        meta = (obj or {}).get("metadata", {})
        raise AssertionError(f"timed out waiting for {plural}/{name} {what}; generation {meta.get('generation')}, "
                             f"annotations {meta.get('annotations')}, last status: {yaml.safe_dump((obj or {}).get('status'))}")

    def wait_phase(self, plural: str, name: str, phase: str, timeout: float = 60) -> dict:
        return self.wait_for(plural, name, lambda o: o.get("status", {}).get("phase") == phase, timeout, f"to reach {phase}")

    def phases_until(self, plural: str, name: str, final: set[str], timeout: float = 90) -> list[str]:
        """Every distinct phase seen (polling) until one in ``final``."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            phase = (self.get(plural, name).get("status") or {}).get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
            if phase in final:
                return seen
            time.sleep(0.1)
        raise AssertionError(f"{plural}/{name} never reached {final}; phases seen: {seen}")

    def events_for(self, name: str) -> list[dict]:
        events = self.core.list_namespaced_event(self.namespace).items
        return [
            {"reason": e.reason, "message": e.message, "type": e.type}
            for e in events
            if e.involved_object and e.involved_object.name == name
        ]

    def jobs(self, owner_label: str | None = None) -> list:
        """The namespace's Jobs; with owner_label (e.g. finetune.dev/finetunejob) only those of that kind."""
        return self.batch.list_namespaced_job(self.namespace, label_selector=owner_label or "").items

    def trainer_jobs(self) -> list:
        """The FineTuneJobs' trainer Jobs, not the Datasets' validation Jobs."""
        return self.jobs("finetune.dev/finetunejob")

    def storage_secret(self, object_store, name: str = "finetune-storage", allow_use: bool = False) -> None:
        """The namespace's store Secret as an admin makes it: a key scoped to this namespace's prefixes (and the
        shared models/), made in SeaweedFS with ``storage_keys grant``. Another ``name``: the store's full keys
        in a Secret a spec names; ``allow_use``: labelled so that a spec may."""
        if name == "finetune-storage" and not allow_use:
            grant_scoped_key(self.kube_api, object_store, self.namespace)
            return
        labels = {"finetune.dev/allow-use": "true"} if allow_use else {}
        self.core.create_namespaced_secret(
            self.namespace,
            {"metadata": {"name": name, "labels": labels}, "stringData": {"accessKey": object_store.access_key, "secretKey": object_store.secret_key}},
        )


def grant_scoped_key(kube_api, object_store, namespace: str) -> tuple[str, str]:
    """``python -m finetune_operator.storage_keys grant`` for ``namespace``, against the test's SeaweedFS; waits
    until the gateway has loaded the new identity. Returns the keys."""
    import base64

    from finetune_operator import storage_keys
    from finetune_operator.config import OperatorConfig
    from finetune_operator.kube import Kube

    config = OperatorConfig(storage_bucket=object_store.bucket, shared_prefixes=[f"s3://{object_store.bucket}/models"])
    kube = Kube(kube_api.client().configuration)
    storage_keys.grant(namespace, config, kube, filer=storage_keys.Filer(object_store.filer_url))
    secret = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{config.storage_secret}")
    keys = tuple(base64.b64decode(secret["data"][k]).decode() for k in ("accessKey", "secretKey"))
    object_store.wait_for_key(*keys, f"s3://{object_store.bucket}/jobs/{namespace}")
    return keys


@pytest.fixture
def cluster(kube_api, namespace) -> Iterator[Cluster]:
    c = Cluster(kube_api, namespace)
    try:
        yield c
    finally:
        c.api.close()
