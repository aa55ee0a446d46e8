"""What a user does first with kubectl: apply the CRDs from crds/, then use the kinds by their short names.
On a real control plane the server's own discovery (every built-in kind) is what the names must not clash with."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from finetune_operator.api import KINDS
from tests.conftest import REPO_ROOT

# Short names of add-ons a GPU cluster commonly runs beside this operator (Kueue, Kubeflow Trainer, KServe,
# Argo CD, Argo Workflows, cert-manager, the Prometheus operator, Knative, Istio, KEDA, VPA, the NVIDIA GPU operator).
COMMON_ADD_ON_SHORT_NAMES = {
    "cq", "lq", "wl", "rf", "flavor", "flavors", "tj", "ctr", "tr", "isvc", "ig", "tm", "sr", "csr",
    "app", "apps", "appproj", "appprojs", "appset", "appsets", "wf", "cwf", "cwft", "wftmpl", "cronwf", "wfeb", "wfs",
    "cert", "certs", "cr", "crs", "issuer", "issuers", "ciss", "smon", "pmon", "prb", "prom", "promrule", "am", "amcfg",
    "ksvc", "kcfg", "rt", "vs", "gw", "dr", "se", "pa", "so", "sj", "ta", "cta", "vpa", "cp",
}  # fmt: skip


def kubectl(kube_api: Any, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "--kubeconfig", str(kube_api.kubeconfig), *args], capture_output=True, text=True, timeout=60)


def discovered_names(kube_api: Any) -> dict[str, str]:
    """Every name kubectl resolves a resource by (plural, singular, short names) → the resource it names,
    from the server's discovery, for every group but finetune.dev."""
    names: dict[str, str] = {}

    def add(group_version: str, listing: dict) -> None:
        for resource in listing.get("resources") or []:
            if "/" in resource["name"]:
                continue  # subresources
            what = f"{resource['name']}.{group_version}"
            for name in [resource["name"], resource.get("singularName") or "", *(resource.get("shortNames") or [])]:
                if name:
                    names.setdefault(name, what)

    add("v1", json.loads(kubectl(kube_api, "get", "--raw", "/api/v1").stdout))
    for group in json.loads(kubectl(kube_api, "get", "--raw", "/apis").stdout)["groups"]:
        if group["name"] == "finetune.dev":
            continue
        version = group["preferredVersion"]["groupVersion"]
        add(version, json.loads(kubectl(kube_api, "get", "--raw", f"/apis/{version}").stdout))
    return names


def test_no_name_of_ours_is_taken_by_a_built_in_kind_or_a_common_add_on(kube_api: Any) -> None:
    taken = discovered_names(kube_api)
    assert "daemonsets" in taken or not kube_api.real, "discovery lists the real server's built-in kinds"
    for kind in KINDS:
        ours = [kind.plural, kind.singular, *kind.short_names]
        clashes = {name: taken[name] for name in ours if name in taken}
        assert clashes == {}, f"{kind.kind}: {clashes}"
        assert set(kind.short_names).isdisjoint(COMMON_ADD_ON_SHORT_NAMES), kind.kind


def test_kubectl_finds_each_kind_by_its_short_name_without_a_warning(kube_api: Any, namespace: str) -> None:
    for kind in KINDS:
        for short in kind.short_names:
            result = kubectl(kube_api, "get", short, "-n", namespace)
            assert result.returncode == 0, result.stderr
            assert "Warning" not in result.stderr and "could also match" not in result.stderr, result.stderr
            assert f"No resources found in {namespace} namespace." in result.stderr
    everything = kubectl(kube_api, "get", "finetune", "-n", namespace)
    assert everything.returncode == 0 and "Warning" not in everything.stderr, everything.stderr


def test_kubectl_apply_of_the_crds_folder_applies_the_four_crds_and_nothing_else(kube_api: Any) -> None:
    result = kubectl(kube_api, "apply", "-f", str(REPO_ROOT / "crds"))
    assert result.returncode == 0, result.stderr
    applied = sorted(line.split()[0] for line in result.stdout.splitlines())
    assert applied == sorted(f"customresourcedefinition.apiextensions.k8s.io/{kind.plural}.finetune.dev" for kind in KINDS)
    # kubectl reads YAML 1.1, where an unquoted key `n:` is the boolean false: the server must hold the schema
    # the files mean (an Evaluation's scores[].n was lost that way, and with it every score's sample count).
    import yaml

    with kube_api.client() as api:
        import kubernetes

        extensions = kubernetes.client.ApiextensionsV1Api(api)
        for kind in KINDS:
            meant = yaml.safe_load((REPO_ROOT / "crds" / f"{kind.plural}.finetune.dev.yaml").read_text())
            served = api.sanitize_for_serialization(extensions.read_custom_resource_definition(f"{kind.plural}.finetune.dev"))
            assert served["spec"]["versions"][0]["schema"] == meant["spec"]["versions"][0]["schema"], kind.kind
