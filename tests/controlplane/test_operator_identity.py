"""What the operator's identity may do on a real control plane: the chart's RBAC and its admission policy, as the
API server enforces them for the operator's ServiceAccount token. Beyond RBAC (which grants ConfigMaps, Jobs and
Deployments in the namespaces it serves) the policy lets it touch only what it manages."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest

from finetune_operator.kube import ApiError, Kube

MANAGED = {"app.kubernetes.io/managed-by": "finetune-operator"}


@pytest.fixture
def operator(kube_api: Any) -> Kube:
    if not kube_api.real:
        pytest.skip("RBAC and admission policies need a real control plane (KUBEBUILDER_ASSETS)")
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kube_api.operator_kubeconfig()), client_configuration=configuration)
    return Kube(configuration, timeout_seconds=30)


def test_the_operator_may_change_only_the_objects_it_manages(operator: Kube, kube_api: Any, namespace: str) -> None:
    with kube_api.client() as admin:
        core = kubernetes.client.CoreV1Api(admin)
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "team-settings"}, "data": {"a": "1"}})
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    with pytest.raises(ApiError) as refused:
        operator.request("PATCH", f"{path}/team-settings", {"data": {"a": "2"}}, content_type="application/merge-patch+json")
    assert refused.value.status == 403 and "may create, change or delete only objects labelled" in refused.value.message
    with pytest.raises(ApiError) as adopting:  # nor take one over by labelling it
        operator.request("PATCH", f"{path}/team-settings", {"metadata": {"labels": MANAGED}}, content_type="application/merge-patch+json")
    assert adopting.value.status == 403
    with pytest.raises(ApiError) as deleting:
        operator.request("DELETE", f"{path}/team-settings")
    assert deleting.value.status == 403
    with pytest.raises(ApiError) as unlabelled:
        operator.request("POST", path, {"metadata": {"name": "mine"}, "data": {}})
    assert unlabelled.value.status == 403
    operator.request("POST", path, {"metadata": {"name": "mine", "labels": MANAGED}, "data": {}})
    operator.request("PATCH", f"{path}/mine", {"data": {"b": "2"}}, content_type="application/merge-patch+json")
    operator.request("DELETE", f"{path}/mine")


def test_the_operator_reads_no_secret_data_and_lists_no_secrets(operator: Kube, kube_api: Any, namespace: str) -> None:
    with kube_api.client() as admin:
        kubernetes.client.CoreV1Api(admin).create_namespaced_secret(namespace, {"metadata": {"name": "token", "labels": {"team": "a"}}, "stringData": {"t": "s3cr3t"}})
    assert operator.secret_labels(namespace, "token") == {"team": "a"}
    with pytest.raises(ApiError) as listing:
        operator.request("GET", f"/api/v1/namespaces/{namespace}/secrets")
    assert listing.value.status == 403
