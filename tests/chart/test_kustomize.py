"""Installing without Helm: `kubectl kustomize deploy/overlays/<overlay>` and the Kueue example in deploy/kueue."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    DEPLOY_DIR,
    KINDS_PLURAL,
    REPO_ROOT,
    expand_rules,
    expected_operator_triples,
    kustomize,
)
from tests.chart.pod_security import check_restricted, pod_annotations_of, pod_spec_of
from tests.chart.test_chart import OPERATOR_ENV

OVERLAYS = ("dev", "gpu-cluster")


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(DEPLOY_DIR / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def kueue_objects() -> list[dict[str, Any]]:
    return kustomize(DEPLOY_DIR / "kueue")


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def operator_config(objects: list[dict[str, Any]]) -> dict[str, str]:
    return one(objects, "ConfigMap")["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_crds_namespace_rbac_config_and_operator(overlay: str, overlays: dict[str, list[dict[str, Any]]]) -> None:
    objects = overlays[overlay]
    crds = {crd["metadata"]["name"] for crd in of_kind(objects, "CustomResourceDefinition")}
    assert crds == {f"{plural}.finetune.dev" for plural in KINDS_PLURAL}
    assert one(objects, "Namespace")["metadata"]["name"] == "finetune-system"
    deployment = one(objects, "Deployment")
    assert deployment["metadata"]["namespace"] == "finetune-system"
    config_map = one(objects, "ConfigMap")
    env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from == [{"configMapRef": {"name": config_map["metadata"]["name"]}}], "the hashed ConfigMap name is wired in"
    assert set(config_map["data"]) == OPERATOR_ENV
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "finetune-system"}
    ]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_grants_the_operator_exactly_what_its_code_needs(overlay: str, overlays: dict[str, list[dict[str, Any]]]) -> None:
    objects = overlays[overlay]
    binding = one(objects, "ClusterRoleBinding")
    role = next(r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"] == binding["roleRef"]["name"])
    granted = expand_rules(role["rules"])
    needed = expected_operator_triples(peering=False, namespaced=False)
    assert sorted(needed - granted) == [], "needed by the operator but not granted"
    assert sorted(granted - needed) == [], "granted but not needed by the operator"
    aggregated = {
        label for r in of_kind(objects, "ClusterRole") for label in r["metadata"].get("labels", {})
        if label.startswith("rbac.authorization.k8s.io/aggregate-to-")
    }  # fmt: skip
    assert {label.rsplit("-", 1)[-1] for label in aggregated} == {"view", "edit", "admin"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_pods_pass_the_restricted_profile(overlay: str, overlays: dict[str, list[dict[str, Any]]]) -> None:
    for obj in overlays[overlay]:
        pod = pod_spec_of(obj)
        if pod is not None:
            assert check_restricted(pod, pod_annotations_of(obj)) == [], obj["metadata"]["name"]
    namespace = one(overlays[overlay], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_dev_overlay_talks_to_an_in_cluster_store_and_logs_verbosely(overlays: dict[str, list[dict[str, Any]]]) -> None:
    config = operator_config(overlays["dev"])
    assert config["FINETUNE_STORAGE_SECURE"] == "false"
    assert config["FINETUNE_STORAGE_ENDPOINT"].endswith(".svc.cluster.local:8333")
    assert (config["FINETUNE_LOG_FORMAT"], config["FINETUNE_LOG_LEVEL"]) == ("text", "DEBUG")
    assert config["FINETUNE_ARTIFACT_POLICY"] == "delete"
    assert not of_kind(overlays["dev"], "StatefulSet"), "no MinIO in the kustomize install"
    container = one(overlays["dev"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/finetune-dev/finetune-operator:main"
    assert container["imagePullPolicy"] == "Always"


def test_gpu_cluster_overlay_maps_gpu_types_and_queues_by_default(overlays: dict[str, list[dict[str, Any]]]) -> None:
    config = operator_config(overlays["gpu-cluster"])
    gpu_types = json.loads(config["FINETUNE_GPU_TYPES"])
    assert set(gpu_types) == {"a100-80gb", "h100-80gb"}
    for gpu_type in gpu_types.values():
        assert gpu_type["nodeSelector"]["nvidia.com/gpu.product"].startswith("NVIDIA-")
    assert config["FINETUNE_DEFAULT_QUEUE"] == "team-queue"
    assert config["FINETUNE_STORAGE_SECURE"] == "true"
    container = one(overlays["gpu-cluster"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True, "the patch keeps the base's security context"


def test_crds_folder_lists_every_generated_crd_for_kustomize() -> None:
    listed = yaml.safe_load((REPO_ROOT / "crds" / "Kustomization").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in (REPO_ROOT / "crds").glob("*.yaml"))


# ------------------------------------------------------------------------------------------------
# Kueue


def test_kueue_queues_flavors_and_operator_agree(kueue_objects: list[dict[str, Any]], overlays: dict[str, list[dict[str, Any]]]) -> None:
    flavors = {f["metadata"]["name"]: f.get("spec", {}) for f in of_kind(kueue_objects, "ResourceFlavor")}
    cluster_queues = {q["metadata"]["name"]: q["spec"] for q in of_kind(kueue_objects, "ClusterQueue")}
    local_queues = of_kind(kueue_objects, "LocalQueue")
    assert all(obj["apiVersion"].startswith("kueue.x-k8s.io/") for obj in kueue_objects)

    for queue in local_queues:
        assert queue["spec"]["clusterQueue"] in cluster_queues
        assert queue["metadata"]["namespace"]

    config = operator_config(overlays["gpu-cluster"])
    assert config["FINETUNE_DEFAULT_QUEUE"] in {q["metadata"]["name"] for q in local_queues}

    for queue in cluster_queues.values():
        for group in queue["resourceGroups"]:
            assert config["FINETUNE_GPU_RESOURCE"] in group["coveredResources"]
            for flavor in group["flavors"]:
                assert flavor["name"] in flavors, f"ClusterQueue uses unknown flavor {flavor['name']}"
                assert {r["name"] for r in flavor["resources"]} == set(group["coveredResources"])

    gpu_types = json.loads(config["FINETUNE_GPU_TYPES"])
    for name, gpu_type in gpu_types.items():
        assert name in flavors, f"GPU type {name} has no ResourceFlavor"
        assert flavors[name]["nodeLabels"] == gpu_type["nodeSelector"], name
        assert flavors[name]["tolerations"] == gpu_type["tolerations"], name
