"""The Helm chart as a platform team installs it: defaults, the common non-default set-ups, lint and the values schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from finetune_operator.config import ENV_PREFIX, OperatorConfig
from finetune_operator.manifests.common import MANAGED_BY

from tests.chart.conftest import (
    CHART_DIR,
    FULLNAME,
    KINDS_PLURAL,
    RELEASE_NAMESPACE,
    REPO_ROOT,
    Rendered,
    load_chart,
    render_chart,
)
from tests.chart.pod_security import check_restricted, pod_annotations_of, pod_spec_of

OPERATOR_ENV = {ENV_PREFIX + name.upper() for name in OperatorConfig.model_fields}
"""Every setting the operator reads; the chart's ConfigMap must set exactly these."""

GPU_TYPES = {
    "a100-80gb": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "h100-80gb": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
}

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "peering with two replicas": {"replicaCount": 2, "peering": {"enabled": True}},
    "chart MinIO": {"minio": {"enabled": True}, "storage": {"credentialsSecret": {"create": True}}},
    "one namespace": {"watchNamespace": "team-a", "peering": {"enabled": True}, "replicaCount": 2},
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}, "podMonitor": {"enabled": True}},
        "grafana": {"dashboard": {"enabled": True}},
    },
    "no CRDs": {"crds": {"enabled": False}},
    "CRDs not kept": {"crds": {"keep": False}},
    "GPU cluster": {
        "gpu": {"types": GPU_TYPES},
        "kueue": {"defaultQueue": "gpu-queue"},
        "storage": {"endpoint": "s3.us-east-1.amazonaws.com:443", "bucket": "ml-artifacts"},
        "config": {"artifactPolicy": "delete", "logFormat": "text"},
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
    },
}


@pytest.fixture(scope="module")
def renders() -> dict[str, Rendered]:
    return {name: render_chart(values) for name, values in VARIANTS.items()}


def config_of(rendered: Rendered) -> dict[str, str]:
    return rendered.one("ConfigMap", f"{FULLNAME}-config")["data"]


def operator_deployment(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("Deployment", FULLNAME)


# ------------------------------------------------------------------------------------------------
# Defaults


def test_default_install_runs_one_standalone_operator_with_recreate(default_render: Rendered) -> None:
    deployment = operator_deployment(default_render)
    assert deployment["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "finetune_operator"]
    assert container["image"] == "ghcr.io/finetune-dev/finetune-operator:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert config_of(default_render)["FINETUNE_PEERING"] == ""
    assert not default_render.of_kind("PodDisruptionBudget")
    assert not default_render.of_kind("ClusterKopfPeering")
    assert not default_render.of_kind("StatefulSet")
    assert not default_render.of_kind("ServiceMonitor")


def test_default_install_brings_the_four_crds_kept_on_uninstall_and_first_in_argo_cd(default_render: Rendered) -> None:
    crds = {crd["metadata"]["name"]: crd for crd in default_render.of_kind("CustomResourceDefinition")}
    assert set(crds) == {f"{plural}.finetune.dev" for plural in KINDS_PLURAL}
    for crd in crds.values():
        assert crd["spec"]["group"] == "finetune.dev"
        assert "finetune" in crd["spec"]["names"]["categories"]
        assert crd["spec"]["scope"] == "Namespaced"
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
        assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == "finetune-operator"


def test_chart_crds_are_the_generated_crds_unchanged() -> None:
    """The chart ships copies of crds/; the template only adds labels and annotations."""
    chart_copies = sorted(p.name for p in (CHART_DIR / "files" / "crds").glob("*.yaml"))
    generated = sorted(p.name for p in (REPO_ROOT / "crds").glob("*.yaml"))
    assert chart_copies == generated
    for name in generated:
        assert (CHART_DIR / "files" / "crds" / name).read_text() == (REPO_ROOT / "crds" / name).read_text(), name


def test_operator_configuration_is_exactly_the_settings_the_operator_reads(default_render: Rendered) -> None:
    config = config_of(default_render)
    assert set(config) == OPERATOR_ENV
    assert config["FINETUNE_TRAINER_IMAGE"] == "ghcr.io/finetune-dev/finetune-trainer:0.1.0"
    assert config["FINETUNE_SERVER_IMAGE"] == config["FINETUNE_TRAINER_IMAGE"], "builtin runtime defaults to the trainer"
    assert config["FINETUNE_METRICS_PORT"] == "8080" and config["FINETUNE_HEALTH_PORT"] == "8081"
    assert config["FINETUNE_PROGRESS_INTERVAL_SECONDS"] == "10"
    assert config["FINETUNE_ARTIFACT_POLICY"] == "keep"
    assert config["FINETUNE_STORAGE_SECRET"] == "finetune-storage"
    assert json.loads(config["FINETUNE_GPU_TYPES"]) == {}
    parsed = OperatorConfig.from_env(config)
    assert parsed.effective_server_image == parsed.trainer_image
    assert (parsed.namespace, parsed.peering, parsed.default_queue) == ("", "", "")
    deployment = operator_deployment(default_render)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": f"{FULLNAME}-config"}}]


def test_operator_reads_its_storage_credentials_as_files_from_the_named_secret(default_render: Rendered) -> None:
    pod = operator_deployment(default_render)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["storage-credentials"]["secret"]["secretName"] == "finetune-storage"
    assert {i["key"] for i in volumes["storage-credentials"]["secret"]["items"]} == {"accessKey", "secretKey"}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["storage-credentials"]["mountPath"] == config_of(default_render)["FINETUNE_STORAGE_CREDENTIALS_DIR"]
    assert mounts["storage-credentials"]["readOnly"] is True
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]


def test_changing_the_configuration_rolls_the_operator_pod() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = operator_deployment(render_chart(values))
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) != checksum({"config": {"logLevel": "DEBUG"}})


# ------------------------------------------------------------------------------------------------
# Non-default set-ups


def test_peering_runs_two_replicas_with_a_peering_object_and_a_disruption_budget(renders: dict[str, Rendered]) -> None:
    rendered = renders["peering with two replicas"]
    deployment = operator_deployment(rendered)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    peering = rendered.one("ClusterKopfPeering")
    assert peering["metadata"]["name"] == FULLNAME == config_of(rendered)["FINETUNE_PEERING"]
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    # kopf's CRDs sit in crds/, which Helm applies (and waits for) before the templates and the hook.
    assert {crd["name"] for crd in load_chart().crds} >= {"crds/clusterkopfpeerings.kopf.dev.yaml", "crds/kopfpeerings.kopf.dev.yaml"}
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_several_replicas_without_peering_are_refused_with_the_reason() -> None:
    with pytest.raises(helm.HelmRenderError, match="replicaCount > 1 needs peering.enabled=true"):
        render_chart({"replicaCount": 3})


def test_chart_minio_becomes_the_object_store(renders: dict[str, Rendered]) -> None:
    rendered = renders["chart MinIO"]
    minio = rendered.one("StatefulSet", f"{FULLNAME}-minio")
    service = rendered.one("Service", f"{FULLNAME}-minio")
    config = config_of(rendered)
    assert config["FINETUNE_STORAGE_ENDPOINT"] == f"{FULLNAME}-minio.{RELEASE_NAMESPACE}.svc:9000"
    assert config["FINETUNE_STORAGE_SECURE"] == "false"
    assert service["spec"]["selector"] == minio["spec"]["selector"]["matchLabels"]
    claim = minio["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    env = {e["name"]: e for e in minio["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == {"name": "finetune-storage", "key": "accessKey"}
    secret = rendered.one("Secret", "finetune-storage")
    assert set(secret["data"]) == {"accessKey", "secretKey"}


def test_watching_one_namespace_sets_the_namespace_and_a_namespaced_peering(renders: dict[str, Rendered]) -> None:
    rendered = renders["one namespace"]
    assert config_of(rendered)["FINETUNE_NAMESPACE"] == "team-a"
    peering = rendered.one("KopfPeering")
    assert peering["metadata"]["namespace"] == "team-a"
    assert not rendered.of_kind("ClusterKopfPeering")


def test_monitoring_adds_service_monitor_pod_monitor_and_dashboard(renders: dict[str, Rendered]) -> None:
    rendered = renders["monitoring"]
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service", f"{FULLNAME}-metrics")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    pod_monitor = rendered.one("PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert pod_monitor["spec"]["selector"]["matchLabels"] == MANAGED_BY, "selects the pods the operator makes"
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "http"]
    dashboard = rendered.one("ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["finetune-operator.json"])["uid"] == "finetune-operator"


def test_crds_can_be_left_out_or_left_unkept(renders: dict[str, Rendered]) -> None:
    assert not renders["no CRDs"].of_kind("CustomResourceDefinition")
    for crd in renders["CRDs not kept"].of_kind("CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"]["annotations"]


def test_gpu_types_queue_and_storage_reach_the_operator(renders: dict[str, Rendered]) -> None:
    rendered = renders["GPU cluster"]
    config = config_of(rendered)
    assert json.loads(config["FINETUNE_GPU_TYPES"]) == GPU_TYPES
    assert config["FINETUNE_DEFAULT_QUEUE"] == "gpu-queue"
    assert config["FINETUNE_STORAGE_ENDPOINT"] == "s3.us-east-1.amazonaws.com:443"
    assert config["FINETUNE_STORAGE_SECURE"] == "true"
    assert config["FINETUNE_ARTIFACT_POLICY"] == "delete"
    pod = operator_deployment(rendered)["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "ghcr.io/finetune-dev/finetune-operator@sha256:" + "a" * 64
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_the_chart_runs_passes_the_restricted_profile(variant: str, renders: dict[str, Rendered]) -> None:
    workloads = [obj for obj in renders[variant].objects if pod_spec_of(obj) is not None]
    assert workloads, "the chart runs at least the operator"
    for workload in workloads:
        pod = pod_spec_of(workload)
        assert pod is not None
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        assert check_restricted(pod, pod_annotations_of(workload)) == [], where
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert container["securityContext"]["runAsUser"] == 65532, where
            assert "resources" in container, where


def test_notes_tell_the_installer_what_is_left_to_do(default_render: Rendered) -> None:
    assert "create secret generic finetune-storage" in default_render.notes
    assert "NOT SET" in default_render.notes, "no object store configured must be pointed out"


# ------------------------------------------------------------------------------------------------
# Lint and values schema


@pytest.mark.parametrize("variant", ["defaults", "peering with two replicas", "chart MinIO", "one namespace", "monitoring"])
def test_lint_finds_no_errors_or_warnings(variant: str) -> None:
    report = helm.lint(CHART_DIR, VARIANTS[variant], strict=True, namespace=RELEASE_NAMESPACE)
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and serious == [], serious


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCont": 2}, "additional properties 'replicaCont' not allowed"),
        ({"storage": {"bucketName": "x"}}, "at '/storage': additional properties 'bucketName' not allowed"),
        ({"gpu": {"types": {"a100": {"nodeSelecter": {}}}}}, "additional properties 'nodeSelecter' not allowed"),
        ({"config": {"artifactPolicy": "archive"}}, "/config/artifactPolicy"),
        ({"config": {"logFormat": "xml"}}, "/config/logFormat"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"imagePullSecrets": ["regcred"]}, "/imagePullSecrets/0"),
        ({"storage": {"credentialsSecret": {"name": ""}}}, "/storage/credentialsSecret/name"),
    ],
)
def test_values_schema_rejects_misspelled_keys_and_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render_chart(values)
    assert message in str(refused.value)


def _schema_objects(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path, node))
        for key, child in node.items():
            found.extend(_schema_objects(child, f"{path}.{key}"))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(_schema_objects(child, f"{path}[{index}]"))
    return found


def test_schema_closes_every_object_it_describes() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    objects = _schema_objects(schema)
    assert len(objects) > 20
    open_objects = [path for path, node in objects if node.get("additionalProperties") is not False and path != "$.properties.extraEnv.items"]
    assert open_objects == []


def _keys_with_their_comments(values_file: Path) -> list[tuple[str, list[str]]]:
    """(dotted key, comment lines directly above it) for every mapping key in values.yaml."""
    result = []
    stack: list[tuple[int, str]] = []
    comments: list[str] = []
    for line in values_file.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.\-/]+):", line)
        if not match:
            comments = []
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        result.append((".".join(k for _, k in stack), comments))
        comments = []
    return result


def test_every_value_is_documented() -> None:
    """Each value carries a `# --` comment, except the inner keys of a documented example default
    (resources.requests.cpu) and the groups that only hold documented values."""
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    keys = _keys_with_their_comments(CHART_DIR / "values.yaml")
    documented = {key for key, comments in keys if any(c.startswith("# --") for c in comments)}

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for key, child in node.items() for leaf in leaves(child, f"{prefix}{key}.")]
        return [prefix.rstrip(".")]

    undocumented = [
        leaf
        for leaf in leaves(values)
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert undocumented == []
    assert len(documented) > 60


def test_endpoints_admit_the_release_namespace_and_the_listed_ones_and_the_policies_can_be_turned_off() -> None:
    config = render_chart({}, namespace="ml-platform").one("ConfigMap", "ft-finetune-operator-config")["data"]
    assert (config["FINETUNE_NETWORK_POLICIES"], config["FINETUNE_SERVER_INGRESS_NAMESPACES"]) == ("true", "ml-platform")
    values = {"server": {"networkPolicy": {"enabled": False, "allowFromNamespaces": ["monitoring", "ml-platform", "ingress-nginx"]}}}
    config = render_chart(values, namespace="ml-platform").one("ConfigMap", "ft-finetune-operator-config")["data"]
    assert config["FINETUNE_NETWORK_POLICIES"] == "false"
    assert config["FINETUNE_SERVER_INGRESS_NAMESPACES"] == "ml-platform,monitoring,ingress-nginx"
    with pytest.raises(Exception, match="allowFromNamespaces"):
        render_chart({"server": {"networkPolicy": {"allowFromNamespaces": ["Not A Namespace"]}}})
