"""A real `helm install`, `upgrade` and `uninstall` (Helm's Go engine) against a fresh Kubernetes API server for
each test: a real control plane where KUBEBUILDER_ASSETS provides one, else the project's own. Hooks run after
the CRDs exist, generated credentials survive upgrades, uninstalling keeps the CRDs, the users' objects and the
credentials, and CRDs applied from crds/ before or after an install get along with the release."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes
import pytest
from finetune_local.kubeapi import KubeApiServer, kubeconfig_text
from finetune_local.kubeapi_resources import ResourceType

from tests.chart.conftest import CHART_DIR, FULLNAME, KINDS_PLURAL, RELEASE_NAME, RELEASE_NAMESPACE, REPO_ROOT
from tests.conftest import wait_until

# Kinds the chart creates that the local server does not model; it stores them like any object.
EXTRA_KINDS = [
    ("rbac.authorization.k8s.io", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io", "roles", "Role", True),
    ("rbac.authorization.k8s.io", "rolebindings", "RoleBinding", True),
    ("apps", "statefulsets", "StatefulSet", True),
    ("admissionregistration.k8s.io", "validatingadmissionpolicies", "ValidatingAdmissionPolicy", False),
    ("admissionregistration.k8s.io", "validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding", False),
]

TRIAL_VALUES: dict[str, Any] = {
    "replicaCount": 2,
    "peering": {"enabled": True},
    "minio": {"enabled": True},
    "storage": {"credentialsSecret": {"create": True}},
}


@dataclass
class Target:
    """A fresh API server for one test, and Helm configured for it."""

    server: Any  # KubeApiServer or ControlPlane
    kubeconfig: Path
    real: bool

    def api_client(self) -> kubernetes.client.ApiClient:
        return self.server.api_client()

    def helm(self) -> helm.Config:
        if self.real:
            return helm.Config(kubeconfig_path=str(self.kubeconfig), namespace=RELEASE_NAMESPACE)
        # Release records in memory: the local server speaks JSON only, and Helm stores releases as protobuf Secrets.
        return helm.Config(kubeconfig_content=kubeconfig_text(self.server.url), namespace=RELEASE_NAMESPACE, storage_driver="memory")

    def kubectl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Target]:
    from finetune_local.controlplane import ControlPlane, assets_from_environment

    assets = assets_from_environment()
    if assets is not None:
        plane = ControlPlane(assets, tmp_path / "controlplane").start()
        try:
            yield Target(plane, plane.write_kubeconfig(tmp_path / "kubeconfig"), real=True)
        finally:
            plane.stop()
        return
    server = KubeApiServer()
    for group, plural, kind, namespaced in EXTRA_KINDS:
        server.registry.add(
            ResourceType(group=group, version="v1", plural=plural, singular=kind.lower(), kind=kind,
                         namespaced=namespaced, served_versions=("v1",))  # fmt: skip
        )
    server.start()
    try:
        yield Target(server, server.write_kubeconfig(tmp_path / "kubeconfig"), real=False)
    finally:
        server.stop()


def helm_for(target: Target) -> helm.Config:
    return target.helm()


def crd_names(api: kubernetes.client.ApiClient) -> set[str]:
    return set(crds(api))


def crds(api: kubernetes.client.ApiClient) -> dict[str, Any]:
    """The chart's own CRDs (finetune.dev) in the cluster. kopf's peering CRDs, in the chart's crds/ folder,
    are Helm's to install first and never delete, whatever the values say."""
    return {crd.metadata.name: crd for crd in kubernetes.client.ApiextensionsV1Api(api).list_custom_resource_definition().items
            if crd.spec.group == "finetune.dev"}  # fmt: skip


OUR_CRDS = {f"{plural}.finetune.dev" for plural in KINDS_PLURAL}


def wait_served(target: Target) -> None:
    """Until every one of the four CRDs is Established (the kinds are served)."""
    if target.real:
        for name in OUR_CRDS:
            target.server.wait_established(name)


def test_install_upgrade_and_uninstall_keep_crds_objects_and_credentials(cluster: Target) -> None:
    api = cluster.api_client()
    core = kubernetes.client.CoreV1Api(api)
    apps = kubernetes.client.AppsV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    release = helm_for(cluster)

    installed = release.install(CHART_DIR, RELEASE_NAME, TRIAL_VALUES, namespace=RELEASE_NAMESPACE, create_namespace=True, timeout=60)
    assert installed["status"] == "deployed"
    assert "It watches all namespaces." in installed["notes"]
    assert crd_names(api) >= {f"{plural}.finetune.dev" for plural in KINDS_PLURAL}
    operator = apps.read_namespaced_deployment(FULLNAME, RELEASE_NAMESPACE)
    assert operator.spec.replicas == 2
    assert apps.read_namespaced_stateful_set(f"{FULLNAME}-minio", RELEASE_NAMESPACE)
    peering = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", FULLNAME)
    assert peering["metadata"]["name"] == FULLNAME, "the post-install hook created the peering object after its CRD"
    credentials = core.read_namespaced_secret("finetune-storage", RELEASE_NAMESPACE).data
    assert set(credentials) == {"accessKey", "secretKey"}

    # A team starts using the operator (once the API server serves the new kinds: a real one takes a moment).
    core.create_namespace({"metadata": {"name": "team-a"}})
    wait_served(cluster)
    custom.create_namespaced_custom_object(
        "finetune.dev", "v1alpha1", "team-a", "datasets",
        {"apiVersion": "finetune.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "support-chats"},
         "spec": {"source": {"uri": "s3://datasets/support.jsonl"}}},
    )  # fmt: skip

    upgraded = release.upgrade(CHART_DIR, RELEASE_NAME, {**TRIAL_VALUES, "config": {"logLevel": "DEBUG"}}, namespace=RELEASE_NAMESPACE, timeout=60)
    assert upgraded["revision"] == 2
    assert core.read_namespaced_secret("finetune-storage", RELEASE_NAMESPACE).data == credentials, "keys survive upgrades"
    config = core.read_namespaced_config_map(f"{FULLNAME}-config", RELEASE_NAMESPACE).data
    assert config["FINETUNE_LOG_LEVEL"] == "DEBUG"
    rolled = apps.read_namespaced_deployment(FULLNAME, RELEASE_NAMESPACE)
    checksum = "checksum/config"
    assert rolled.spec.template.metadata.annotations[checksum] != operator.spec.template.metadata.annotations[checksum]

    release.uninstall(RELEASE_NAME, timeout=60)
    assert apps.list_namespaced_deployment(RELEASE_NAMESPACE).items == []
    assert apps.list_namespaced_stateful_set(RELEASE_NAMESPACE).items == []
    assert FULLNAME not in {r["metadata"]["name"] for r in custom.list_cluster_custom_object("rbac.authorization.k8s.io", "v1", "clusterroles")["items"]}
    assert crd_names(api) >= {f"{plural}.finetune.dev" for plural in KINDS_PLURAL}, "CRDs are kept"
    assert custom.get_namespaced_custom_object("finetune.dev", "v1alpha1", "team-a", "datasets", "support-chats")
    assert core.read_namespaced_secret("finetune-storage", RELEASE_NAMESPACE).data == credentials


def test_uninstall_removes_the_crds_when_told_not_to_keep_them(cluster: Target) -> None:
    api = cluster.api_client()
    release = helm_for(cluster)
    release.install(CHART_DIR, RELEASE_NAME, {"crds": {"keep": False}}, namespace=RELEASE_NAMESPACE, create_namespace=True, timeout=60)
    assert crd_names(api) == {f"{plural}.finetune.dev" for plural in KINDS_PLURAL}
    release.uninstall(RELEASE_NAME, timeout=60)
    # A real server first removes their objects, then each CRD; on a busy machine that takes its time (the
    # bound only ends a broken run).
    wait_until(lambda: not crds(api), "the CRDs to be deleted", timeout=300)


def test_a_misspelled_value_stops_the_install_before_anything_is_created(cluster: Target) -> None:
    api = cluster.api_client()
    with pytest.raises(helm.HelmError, match="additional properties 'replicaCont' not allowed"):
        helm_for(cluster).install(CHART_DIR, RELEASE_NAME, {"replicaCont": 2}, namespace=RELEASE_NAMESPACE, create_namespace=True, timeout=60)
    assert crd_names(api) == set()


def test_install_works_when_the_crds_were_applied_first_and_leaves_them_to_their_manager(cluster: Target) -> None:
    applied = cluster.kubectl("apply", "-f", str(REPO_ROOT / "crds"))
    assert applied.returncode == 0, applied.stderr
    api = cluster.api_client()
    before = crds(api)
    assert set(before) == OUR_CRDS

    release = helm_for(cluster)
    installed = release.install(CHART_DIR, RELEASE_NAME, {}, namespace=RELEASE_NAMESPACE, create_namespace=True, timeout=60)
    assert installed["status"] == "deployed"
    notes = installed["notes"]
    assert "existed before this release and are managed elsewhere" in notes
    for name in OUR_CRDS:
        assert name in notes
    assert "meta.helm.sh/release-name=ft" in notes, "the notes say how to let the release adopt them"
    after = crds(api)
    for name, crd in after.items():
        assert "meta.helm.sh/release-name" not in (crd.metadata.annotations or {}), f"{name} was taken over"
        assert crd.metadata.generation == before[name].metadata.generation, f"{name} was changed"
        assert crd.metadata.labels == before[name].metadata.labels, f"{name} was relabelled"

    assert release.upgrade(CHART_DIR, RELEASE_NAME, {"config": {"logLevel": "DEBUG"}}, namespace=RELEASE_NAMESPACE, timeout=60)["revision"] == 2
    release.uninstall(RELEASE_NAME, timeout=60)
    assert set(crds(api)) == OUR_CRDS, "CRDs the release never managed stay"


def test_crds_applied_after_an_install_update_the_releases_crds_and_upgrades_still_work(cluster: Target) -> None:
    release = helm_for(cluster)
    installed = release.install(CHART_DIR, RELEASE_NAME, {}, namespace=RELEASE_NAMESPACE, create_namespace=True, timeout=60)
    assert "managed elsewhere" not in installed["notes"]
    api = cluster.api_client()
    for crd in crds(api).values():
        assert crd.metadata.annotations["meta.helm.sh/release-name"] == RELEASE_NAME

    applied = cluster.kubectl("apply", "-f", str(REPO_ROOT / "crds"))
    assert applied.returncode == 0, applied.stderr
    upgraded = release.upgrade(CHART_DIR, RELEASE_NAME, {}, namespace=RELEASE_NAMESPACE, timeout=60)
    assert upgraded["revision"] == 2 and "managed elsewhere" not in upgraded["notes"]
    for crd in crds(api).values():
        assert crd.metadata.annotations["meta.helm.sh/release-name"] == RELEASE_NAME, "the release still manages them"
    release.uninstall(RELEASE_NAME, timeout=60)
    assert set(crds(api)) == OUR_CRDS, "kept on uninstall"
