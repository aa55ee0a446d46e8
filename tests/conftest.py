"""Shared fixtures: a cluster on one machine.

- `kube_api`: a Kubernetes API server on loopback (session-wide), with the repository's CRDs applied. Where
  ``KUBEBUILDER_ASSETS`` names a folder with etcd, kube-apiserver and kube-controller-manager (the envtest
  layout), it is that real control plane (RBAC, PodSecurity, the real controllers); otherwise the project's
  own API server. ``kube_api.real`` says which; the session prints the server's line either way.
- `local_kube_api`: always the project's own API server, for tests of that server and of the runner's own
  Job and Deployment controllers.
- `namespace`: a fresh namespace for one test, labelled to enforce the `restricted` Pod Security profile.
- `object_store`: SeaweedFS serving S3 on loopback (session-wide), with a bucket.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CRDS_DIR = REPO_ROOT / "crds"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}

_servers_used: list[str] = []


@dataclasses.dataclass
class KubeApi:
    """A running Kubernetes API server (the project's own or a real control plane) and how to reach it."""

    server: Any  # finetune_local.kubeapi.KubeApiServer or finetune_local.controlplane.ControlPlane
    kubeconfig: Path
    url: str
    real: bool = False
    operator_kubeconfig_path: Path | None = None
    """Real control plane only: a kubeconfig with the token of the chart's operator ServiceAccount."""

    def client(self) -> Any:
        """A new `kubernetes.client.ApiClient` for this server (cluster-admin on a real control plane)."""
        return self.server.api_client()

    def describe(self) -> str:
        if self.real:
            return self.server.describe()
        return f"Kubernetes API server  {self.url}  (the project's own API server, finetune_local.kubeapi)"

    def operator_kubeconfig(self) -> Path:
        """What the operator authenticates with: the chart's ServiceAccount token on a real control plane
        (so RBAC is the chart's), the one kubeconfig on the project's server (which has no RBAC)."""
        return self.operator_kubeconfig_path or self.kubeconfig


def announce(config: pytest.Config, line: str) -> None:
    """Print a line in the test run's output, whatever the capture mode."""
    _servers_used.append(line)
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    if capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        reporter.write_line(line)


def wait_until(condition, what: str, timeout: float = 60.0, interval: float = 0.1):
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` otherwise (the
    timeout only bounds a broken run: what is waited for is an event, not a duration)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"gave up waiting for {what}")


SECURITY_REPORT_ENV = "FINETUNE_SECURITY_REPORT"
ATTACK_TESTS = (
    "tests/security/",  # a tenant through the Kubernetes API and its own store key
    "tests/datasets/test_fetch_rules.py",  # a Dataset's URL: tokens, redirects, addresses
    "tests/evaluate/test_endpoint_rules.py",  # a judge's URL: the same rules
    "tests/trainer/test_checkpoint_files.py",  # a planted pickle among checkpoint files
    "tests/trainer/test_manifest_paths.py",  # a manifest whose paths climb out of the download folder
)
"""What ``make security-check`` runs; each passing test is an attack refused."""
_attacks: dict[str, bool] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped or not report.nodeid.startswith(ATTACK_TESTS):
        return  # a skipped attack (one only a real control plane decides) was not tried
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _attacks[report.nodeid] = report.passed


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.environ.get(SECURITY_REPORT_ENV):
        refused = sum(_attacks.values())
        print(json.dumps({"attacks_tried": len(_attacks), "attacks_refused": refused,
                          "not_refused": sorted(n for n, ok in _attacks.items() if not ok)}))  # fmt: skip


def pytest_report_header(config: pytest.Config) -> str:
    from finetune_local.controlplane import ASSETS_ENV, assets_from_environment

    assets = assets_from_environment()
    if assets is None:
        return f"Kubernetes API: the project's own API server ({ASSETS_ENV} is not set)"
    return f"Kubernetes API: a real control plane from {ASSETS_ENV}={assets}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in dict.fromkeys(_servers_used):
        terminalreporter.write_line(f"used: {line}")


def chart_operator_rbac() -> list[dict[str, Any]]:
    """The ServiceAccount, RBAC objects and admission policy the Helm chart installs for the operator (default values)."""
    from tests.chart.conftest import render_chart

    kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ValidatingAdmissionPolicy",
             "ValidatingAdmissionPolicyBinding")  # fmt: skip
    rendered = render_chart()
    objects = [obj for obj in rendered.objects if obj["kind"] in kinds]
    # the aggregated view/edit roles are for people, not the operator; they are installed too, as the chart does
    return objects


def start_local_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    from finetune_local.kubeapi import KubeApiServer, load_manifests

    server = KubeApiServer().start()
    kubeconfig = server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    if CRDS_DIR.is_dir():
        server.apply([d for d in load_manifests(CRDS_DIR) if d.get("kind") == "CustomResourceDefinition"])
    return server, kubeconfig


@pytest.fixture(scope="session")
def project_api_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    """The project's own API server (session-wide), started when a test first needs it."""
    server, kubeconfig = start_local_server(tmp_path_factory)
    api = KubeApi(server=server, kubeconfig=kubeconfig, url=server.url)
    announce(request.config, api.describe())
    try:
        yield api
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube_api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    from finetune_local.controlplane import ControlPlane, assets_from_environment, grant_operator
    from finetune_local.kubeapi import load_manifests

    assets = assets_from_environment()
    if assets is None:
        yield request.getfixturevalue("project_api_server")
        return
    folder = tmp_path_factory.mktemp("controlplane")
    server = ControlPlane(assets, folder / "work").start()
    try:
        kubeconfig = server.write_kubeconfig(folder / "kubeconfig")
        server.apply([d for d in load_manifests(CRDS_DIR) if d.get("kind") == "CustomResourceDefinition"])
        operator = grant_operator(server, folder / "operator.kubeconfig", chart_operator_rbac())
        api = KubeApi(server=server, kubeconfig=kubeconfig, url=server.url, real=True, operator_kubeconfig_path=operator)
        announce(request.config, api.describe())
        yield api
    finally:
        server.stop()


@pytest.fixture(scope="session")
def local_kube_api(project_api_server: KubeApi) -> KubeApi:
    """The project's own API server, whatever `kube_api` is."""
    return project_api_server


def make_namespace(api_client: Any, prefix: str) -> str:
    import kubernetes.client

    core = kubernetes.client.CoreV1Api(api_client)
    created = core.create_namespace({"metadata": {"generateName": f"{prefix}-", "labels": dict(RESTRICTED)}})
    return created.metadata.name


def delete_namespace(api_client: Any, name: str) -> None:
    import kubernetes.client

    try:
        kubernetes.client.CoreV1Api(api_client).delete_namespace(name)
    except kubernetes.client.ApiException as error:
        if error.status != 404:
            raise


def namespace_in(api: KubeApi, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    with api.client() as client:
        name = make_namespace(client, slug)
        try:
            yield name
        finally:
            delete_namespace(client, name)


@pytest.fixture
def namespace(kube_api: KubeApi, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, enforcing `restricted`; deleted (with its contents) afterwards."""
    yield from namespace_in(kube_api, request)


@pytest.fixture
def local_namespace(local_kube_api: KubeApi, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the project's own API server."""
    yield from namespace_in(local_kube_api, request)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """SeaweedFS serving S3 on loopback with a bucket; see finetune_local.objectstore.ObjectStore."""
    from finetune_local.objectstore import start_object_store

    store = start_object_store(tmp_path_factory.mktemp("seaweedfs"), bucket="finetune")
    try:
        yield store
    finally:
        store.stop()
