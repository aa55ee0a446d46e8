"""A real `helm install`, `upgrade` and `uninstall` (Helm's Go engine) against the project's local Kubernetes
API server: hooks run after the CRDs exist, generated credentials survive upgrades, and uninstalling keeps
the CRDs, the users' objects and the credentials."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes
import pytest
from finetune_local.kubeapi import KubeApiServer, kubeconfig_text
from finetune_local.kubeapi_resources import ResourceType

from tests.chart.conftest import CHART_DIR, FULLNAME, KINDS_PLURAL, RELEASE_NAME, RELEASE_NAMESPACE

# Kinds the chart creates that the local server does not model; it stores them like any object.
EXTRA_KINDS = [
    ("rbac.authorization.k8s.io", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io", "roles", "Role", True),
    ("rbac.authorization.k8s.io", "rolebindings", "RoleBinding", True),
    ("apps", "statefulsets", "StatefulSet", True),
]

TRIAL_VALUES: dict[str, Any] = {
    "replicaCount": 2,
    "peering": {"enabled": True},
    "minio": {"enabled": True},
    "storage": {"credentialsSecret": {"create": True}},
}


@pytest.fixture
def cluster() -> Iterator[KubeApiServer]:
    server = KubeApiServer()
    for group, plural, kind, namespaced in EXTRA_KINDS:
        server.registry.add(
            ResourceType(group=group, version="v1", plural=plural, singular=kind.lower(), kind=kind,
                         namespaced=namespaced, served_versions=("v1",))  # fmt: skip
        )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def helm_for(server: KubeApiServer) -> helm.Config:
    # Release records in memory: the local server speaks JSON only, and Helm stores releases as protobuf Secrets.
    return helm.Config(
        kubeconfig_content=kubeconfig_text(f"http://{server.host}:{server.port}"),
        namespace=RELEASE_NAMESPACE,
        storage_driver="memory",
    )


def crd_names(api: kubernetes.client.ApiClient) -> set[str]:
    return {crd.metadata.name for crd in kubernetes.client.ApiextensionsV1Api(api).list_custom_resource_definition().items}


def test_install_upgrade_and_uninstall_keep_crds_objects_and_credentials(cluster: KubeApiServer) -> None:
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

    # A team starts using the operator.
    core.create_namespace({"metadata": {"name": "team-a"}})
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


def test_uninstall_removes_the_crds_when_told_not_to_keep_them(cluster: KubeApiServer) -> None:
    api = cluster.api_client()
    release = helm_for(cluster)
    release.install(CHART_DIR, RELEASE_NAME, {"crds": {"keep": False}}, namespace=RELEASE_NAMESPACE, create_namespace=True, timeout=60)
    assert crd_names(api) == {f"{plural}.finetune.dev" for plural in KINDS_PLURAL}
    release.uninstall(RELEASE_NAME, timeout=60)
    assert crd_names(api) == set()


def test_a_misspelled_value_stops_the_install_before_anything_is_created(cluster: KubeApiServer) -> None:
    api = cluster.api_client()
    with pytest.raises(helm.HelmError, match="additional properties 'replicaCont' not allowed"):
        helm_for(cluster).install(CHART_DIR, RELEASE_NAME, {"replicaCont": 2}, namespace=RELEASE_NAMESPACE, create_namespace=True, timeout=60)
    assert crd_names(api) == set()
