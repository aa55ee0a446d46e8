"""The InferenceEndpoint's decisions and manifests as pure functions: no API server, no pods.

Each test states what a user wrote and what the operator must make of it: the runtime, the Deployment,
Service and autoscaler, how adapters resolve, and how adding one reaches the servers (a ConfigMap change
for builtin, a rolling update for vllm)."""

from __future__ import annotations

import asyncio
import copy
import json
import os

import pytest

from finetune_operator.api.inferenceendpoint import InferenceEndpointSpec
from finetune_operator.config import GpuType, OperatorConfig
from finetune_operator.manifests import server
from finetune_operator.manifests.vllm_auth import RequireApiKey
from finetune_operator.api.inferenceendpoint import Reason
from finetune_operator.manifests.common import differs
from finetune_operator.reconcile.inferenceendpoint import Observed, reconcile
from finetune_trainer import contract
from tests.chart.pod_security import check_restricted
from tests.conftest import REPO_ROOT

CONFIG = OperatorConfig(
    trainer_image="registry.example/trainer:1",
    server_image="registry.example/server:1",
    vllm_image="registry.example/vllm:1",
    storage_endpoint="minio.example:9000",
    storage_bucket="finetune",
    gpu_types={"h100": GpuType(nodeSelector={"gpu": "h100"}, tolerations=[{"key": "h100", "operator": "Exists"}])},
    shared_prefixes=["s3://finetune/models"],
)
ROLLOUT = CONFIG.model_copy(update={"vllm_adapter_loading": "rollout"})
"""vLLM adapters changed by rolling the Deployment, not loaded at run time."""
NS = "team-a"


def endpoint(spec: dict, name: str = "support", annotations: dict | None = None) -> dict:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "InferenceEndpoint",
        "metadata": {"name": name, "namespace": NS, "uid": "uid-1", "generation": 1, "annotations": annotations or {}},
        "spec": spec,
    }


BASE = {"baseModel": {"uri": "s3://finetune/models/tiny"}}


def children(spec: dict, adapters: list[server.ServedAdapter] = (), **kw) -> dict[str, dict]:
    body = endpoint(spec, **kw)
    parsed = InferenceEndpointSpec.model_validate(spec)
    return {c["kind"]: c for c in server.build_server_children(body, parsed, list(adapters), CONFIG)}


def run(spec: dict, observed: Observed | None = None, status: dict | None = None, name: str = "support"):
    return reconcile({**endpoint(spec, name=name), "status": status}, observed or Observed(), CONFIG)


def ready_deployment(ready: int = 1, **status) -> dict:
    return {
        "metadata": {"name": "support-server", "generation": 1, "labels": {"finetune.dev/runtime": "builtin"}},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": ready, **status},
    }


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def completed_job(uri: str = "s3://finetune/jobs/team-a/tuned-1/model", adapter: bool = True) -> dict:
    return {"status": {"phase": "Completed", "outputModel": {"name": "x", "uri": uri, "adapter": adapter}}}


# -- runtime --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "runtime", "expected"),
    [({}, None, "builtin"), ({"gpus": 1}, None, "vllm"), ({"gpus": 2}, "builtin", "builtin"), ({"gpus": 1}, "vllm", "vllm")],
)
def test_runtime_defaults_to_vllm_on_gpus_and_builtin_on_cpu(resources, runtime, expected):
    spec = {**BASE, "resources": resources, **({"runtime": runtime} if runtime else {})}
    assert server.effective_runtime(InferenceEndpointSpec.model_validate(spec)) == expected
    assert children(spec)["Deployment"]["metadata"]["labels"]["finetune.dev/runtime"] == expected


# -- builtin --------------------------------------------------------------------------------------


def test_builtin_deployment_runs_the_server_with_its_config_key_and_probes():
    spec = {**BASE, "apiKeySecretRef": {"name": "support-key"}, "maxModelLen": 1024}
    made = children(spec, [server.ServedAdapter("tuned", "s3://finetune/uploads/team-a/adapters/tuned")])
    dep = made["Deployment"]
    assert dep["metadata"]["name"] == "support-server"
    assert dep["metadata"]["ownerReferences"][0] == {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "InferenceEndpoint", "name": "support", "uid": "uid-1", "controller": True, "blockOwnerDeletion": True,
    }  # fmt: skip
    assert dep["spec"]["replicas"] == 1
    template = dep["spec"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
    assert dep["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert check_restricted(pod, template["metadata"]["annotations"]) == []
    c = container(dep)
    assert c["image"] == "registry.example/server:1"
    assert c["command"] == ["finetune-trainer", "serve", "--config", "/etc/finetune/serve.json", "--host=$(POD_IP)", "--port=8000"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in c["env"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # serve.json comes from the ConfigMap as a folder (a subPath mount would never see updates)
    assert volumes[mounts["/etc/finetune"]]["configMap"] == {"name": "support-server"}
    assert not any("subPath" in m for m in c["volumeMounts"])
    assert volumes[mounts["/var/run/secrets/finetune/api-key"]]["secret"]["secretName"] == "support-key"
    assert volumes[mounts["/var/run/secrets/finetune/storage"]]["secret"]["secretName"] == CONFIG.storage_secret

    config = contract.ServeConfig.model_validate_json(made["ConfigMap"]["data"]["serve.json"])
    assert config.base_model == "s3://finetune/models/tiny"
    assert config.served_model_name == "support"
    assert [(a.name, a.uri) for a in config.adapters] == [("tuned", "s3://finetune/uploads/team-a/adapters/tuned")]
    assert config.api_key_file == "/var/run/secrets/finetune/api-key/apiKey"
    assert config.storage.credentials_dir == "/var/run/secrets/finetune/storage" and config.storage.endpoint == "minio.example:9000"
    assert config.max_model_len == 1024
    assert "support-key" not in made["ConfigMap"]["data"]["serve.json"].replace("api-key", "")


def test_service_exposes_only_the_api_port_of_the_servers():
    made = children(BASE)
    svc = made["Service"]
    assert svc["metadata"]["name"] == "support-server"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"].items() <= made["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    assert server.service_url("support", NS) == "http://support-server.team-a.svc:8000/v1"


def test_an_autoscaler_is_made_only_when_min_and_max_differ():
    assert "HorizontalPodAutoscaler" not in children({**BASE, "replicas": {"min": 2, "max": 2}})
    made = children({**BASE, "replicas": {"min": 1, "max": 4, "targetConcurrency": 6}})
    hpa = made["HorizontalPodAutoscaler"]
    assert "replicas" not in made["Deployment"]["spec"], "the HPA owns spec.replicas"
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "support-server"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    inflight = children({**BASE, "replicas": {"min": 1, "max": 4, "targetConcurrency": 6}}, annotations={server.AUTOSCALING_METRIC_ANNOTATION: "in-flight-requests"})
    assert inflight["HorizontalPodAutoscaler"]["spec"]["metrics"] == [
        {"type": "Pods", "pods": {"metric": {"name": "finetune_inflight_requests"}, "target": {"type": "AverageValue", "averageValue": "6"}}}
    ]


def test_min_equal_max_deletes_a_left_over_autoscaler():
    plan = run({**BASE, "replicas": {"min": 2, "max": 2}})
    assert ("HorizontalPodAutoscaler", "support-server") in plan.delete
    assert run({**BASE, "replicas": {"min": 1, "max": 3}}).delete == []


def test_adding_an_adapter_to_a_builtin_endpoint_changes_the_configmap_not_the_pod_template():
    before = children(BASE, [server.ServedAdapter("a", "s3://finetune/uploads/team-a/adapters/a")])
    after = children(BASE, [server.ServedAdapter("a", "s3://finetune/uploads/team-a/adapters/a"), server.ServedAdapter("b", "s3://finetune/uploads/team-a/adapters/b")])
    assert after["Deployment"] == before["Deployment"]
    assert after["ConfigMap"]["data"] != before["ConfigMap"]["data"]
    assert [a.name for a in contract.ServeConfig.model_validate_json(after["ConfigMap"]["data"]["serve.json"]).adapters] == ["a", "b"]


# -- vllm -----------------------------------------------------------------------------------------

VLLM = {**BASE, "resources": {"gpus": 2, "gpuType": "h100", "cpu": "8", "memory": "64Gi"}, "apiKeySecretRef": {"name": "k", "key": "token"}, "maxLoras": 4, "maxLoraRank": 32, "maxModelLen": 8192}


def test_vllm_deployment_fetches_weights_then_serves_them_on_gpus():
    made = children(VLLM, [server.ServedAdapter("tuned:v1", "s3://finetune/uploads/team-a/adapters/t")])
    dep = made["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert check_restricted(pod, dep["spec"]["template"]["metadata"]["annotations"]) == []
    c = container(dep)
    assert c["image"] == "registry.example/vllm:1"
    assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    adapter_path = server.adapter_dir("tuned:v1")
    assert adapter_path.startswith("/adapters/tuned-v1-")
    assert c["args"] == [
        "--model", "/models/base", "--served-model-name", "support", "--host=$(POD_IP)", "--port", "8000",
        "--max-model-len", "8192", "--enable-lora", "--max-loras", "4", "--max-lora-rank", "32",
        "--tensor-parallel-size", "2", "--lora-modules", f"tuned:v1={adapter_path}",
        "--middleware", "finetune_vllm_auth.RequireApiKey", "--disable-uvicorn-access-log",
    ]  # fmt: skip
    assert "--api-key" not in c["args"], "the middleware guards every route, not only /v1"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PYTHONPATH"] == "/etc/finetune/python"
    assert env["FINETUNE_API_KEY_FILE"] == "/var/run/secrets/finetune/api-key/token"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and c["resources"]["requests"]["cpu"] == "8"
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert {"key": "h100", "operator": "Exists"} in pod["tolerations"]
    [init] = pod["initContainers"]
    assert init["image"] == "registry.example/trainer:1"
    assert init["command"] == ["finetune-trainer", "fetch", "--config", "/etc/finetune/fetch.json"]
    assert "nvidia.com/gpu" not in init["resources"]["limits"]
    fetch = contract.FetchConfig.model_validate_json(made["ConfigMap"]["data"]["fetch.json"])
    assert [(i.uri, i.dest) for i in fetch.items] == [("s3://finetune/models/tiny", "/models/base"), ("s3://finetune/uploads/team-a/adapters/t", adapter_path)]
    assert "class RequireApiKey" in made["ConfigMap"]["data"]["finetune_vllm_auth.py"]


def test_vllm_hf_base_model_is_downloaded_by_vllm_itself_with_the_token_file():
    spec = {**VLLM, "baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B@main", "secretRef": {"name": "hf"}}}
    dep = children(spec)["Deployment"]
    c = container(dep)
    assert c["args"][:4] == ["--model", "meta-llama/Llama-3.2-1B", "--revision", "main"]
    assert {"name": "HF_TOKEN_PATH", "value": "/var/run/secrets/finetune/base-model/token"} in c["env"]
    assert "--lora-modules" not in c["args"]
    [init] = dep["spec"]["template"]["spec"]["initContainers"]  # it only checks the spec against the model's config.json
    assert "storage-credentials" not in {m["name"] for m in init["volumeMounts"]}, "nothing to fetch from the object store"


def test_adding_an_adapter_to_a_vllm_endpoint_rolls_the_deployment():
    one = children(VLLM, [server.ServedAdapter("a", "s3://finetune/uploads/team-a/adapters/a")])["Deployment"]
    two = children(VLLM, [server.ServedAdapter("a", "s3://finetune/uploads/team-a/adapters/a"), server.ServedAdapter("b", "s3://finetune/uploads/team-a/adapters/b")])["Deployment"]
    key = server.ADAPTERS_HASH_ANNOTATION
    assert one["spec"]["template"]["metadata"]["annotations"][key] != two["spec"]["template"]["metadata"]["annotations"][key]
    assert "b=" + server.adapter_dir("b") in container(two)["args"]


def test_vllm_auth_middleware_guards_every_route_but_health_and_metrics():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guarded = RequireApiKey(app, api_key=b"sesame")

    def call(path: str, token: str | None = None) -> int:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        asyncio.run(guarded({"type": "http", "method": "POST", "path": path, "headers": headers}, receive, send))
        return sent[0]["status"]

    assert call("/v1/chat/completions") == 401
    assert call("/tokenize") == 401 and call("/invocations") == 401, "vLLM's own --api-key leaves these open"
    assert call("/invocations", "wrong") == 401
    assert call("/invocations", "sesame") == 200 and call("/v1/models", "sesame") == 200
    assert call("/health") == 200 and call("/metrics") == 200


def test_vllm_auth_middleware_takes_a_rotated_key_and_keeps_it_when_the_new_file_is_empty(tmp_path, monkeypatch):
    from finetune_operator.manifests import vllm_auth

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    key_file = tmp_path / "apiKey"
    key_file.write_text("first\n")
    monkeypatch.setenv(vllm_auth.API_KEY_FILE_ENV, str(key_file))
    monkeypatch.setattr(vllm_auth, "RECHECK_SECONDS", 0.0)
    guarded = RequireApiKey(app)

    def status(token: str) -> int:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        headers = [(b"authorization", f"Bearer {token}".encode())]
        asyncio.run(guarded({"type": "http", "method": "GET", "path": "/v1/models", "headers": headers}, receive, send))
        return sent[0]["status"]

    def swap(text: str) -> None:  # as the kubelet does: a new file in place of the old
        new = tmp_path / "apiKey.new"
        new.write_text(text)
        os.replace(new, key_file)

    assert status("first") == 200 and status("second") == 401
    swap("second\n")
    assert status("second") == 200 and status("first") == 401
    swap("")
    assert status("second") == 200, "an empty Secret neither opens the API nor locks everyone out"


# -- reconcile ------------------------------------------------------------------------------------


def test_a_new_endpoint_is_deploying_with_its_children_planned():
    plan = run(BASE)
    assert plan.new_phase == "Deploying"
    assert [c["kind"] for c in plan.apply] == ["ConfigMap", "Deployment", "Service", "NetworkPolicy"]
    assert plan.status["url"] == "http://support-server.team-a.svc:8000/v1"
    assert plan.status["runtime"] == "builtin"
    assert plan.events[0].reason == "Deploying"


def test_a_ready_replica_makes_the_endpoint_ready_with_its_models():
    observed = Observed(deployment=ready_deployment(), server_adapters=[[{"name": "a", "uri": "s3://finetune/uploads/team-a/adapters/a", "status": "loaded"}]])
    plan = run({**BASE, "adapters": [{"name": "a", "uri": "s3://finetune/uploads/team-a/adapters/a"}]}, observed, status={"phase": "Deploying"})
    assert plan.new_phase == "Ready"
    assert plan.status["models"] == ["support", "a"]
    assert plan.status["adapters"] == [{"name": "a", "ready": True, "uri": "s3://finetune/uploads/team-a/adapters/a"}]
    assert plan.status["readyReplicas"] == 1
    conditions = {c["type"]: c for c in plan.status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["AdaptersReady"]["reason"] == "AllAdaptersReady"
    assert [e.reason for e in plan.events] == ["Ready"]


def test_adapters_resolve_from_completed_finetunejobs_and_name_what_is_missing():
    spec = {**BASE, "adapters": [
        {"name": "done", "fineTuneJob": "tuned"},
        {"name": "running", "fineTuneJob": "still-training"},
        {"name": "ghost", "fineTuneJob": "nope"},
        {"name": "full", "fineTuneJob": "full-ft"},
    ]}  # fmt: skip
    jobs = {
        "tuned": completed_job(),
        "still-training": {"status": {"phase": "Running"}},
        "nope": None,
        "full-ft": completed_job(uri="s3://finetune/jobs/x/model", adapter=False),
    }
    report = [[{"name": "done", "uri": "s3://finetune/jobs/team-a/tuned-1/model", "status": "loaded"}]]
    plan = run(spec, Observed(finetunejobs=jobs, deployment=ready_deployment(), server_adapters=report))
    assert plan.new_phase == "Ready", "an adapter that is not ready never takes the others down"
    adapters = {a["name"]: a for a in plan.status["adapters"]}
    assert adapters["done"]["ready"] is True
    assert adapters["running"]["reason"] == Reason.FINETUNEJOB_NOT_COMPLETED and "Running" in adapters["running"]["message"]
    assert adapters["ghost"]["reason"] == Reason.FINETUNEJOB_NOT_FOUND
    assert adapters["full"]["reason"] == Reason.NOT_AN_ADAPTER
    assert plan.status["models"] == ["support", "done"]
    condition = next(c for c in plan.status["conditions"] if c["type"] == "AdaptersReady")
    assert (condition["status"], condition["reason"]) == ("False", "AdapterNotReady")
    # only resolved adapters reach the server's config
    config_map = next(c for c in plan.apply if c["kind"] == "ConfigMap")
    served = contract.ServeConfig.model_validate_json(config_map["data"]["serve.json"]).adapters
    assert [(a.name, a.uri) for a in served] == [("done", "s3://finetune/jobs/team-a/tuned-1/model")]


def test_an_adapter_the_server_cannot_load_is_reported_with_the_servers_reason():
    spec = {**BASE, "adapters": [{"name": "bad", "uri": "s3://finetune/uploads/team-a/adapters/bad"}, {"name": "loading", "uri": "s3://finetune/uploads/team-a/adapters/l"}]}
    report = [[
        {"name": "bad", "uri": "s3://finetune/uploads/team-a/adapters/bad", "status": "failed", "error": "no adapter_config.json in the adapter folder"},
        {"name": "loading", "uri": "s3://finetune/uploads/team-a/adapters/l", "status": "loading"},
    ]]  # fmt: skip
    plan = run(spec, Observed(deployment=ready_deployment(), server_adapters=report))
    adapters = {a["name"]: a for a in plan.status["adapters"]}
    assert adapters["bad"]["reason"] == Reason.ADAPTER_LOAD_FAILED and "adapter_config.json" in adapters["bad"]["message"]
    assert adapters["loading"]["reason"] == Reason.ADAPTER_LOADING
    assert plan.new_phase == "Ready" and plan.retry_after == 5


def test_a_server_container_that_cannot_start_fails_the_endpoint_with_its_words():
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [{
        "name": "server", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "Traceback ...\nModuleNotFoundError: No module named 'vllm'"}},
    }]}}  # fmt: skip
    plan = run(BASE, Observed(deployment=ready_deployment(ready=0), pods=[pod]))
    assert plan.new_phase == "Failed"
    assert plan.status["message"] == "container server exited with code 1: ModuleNotFoundError: No module named 'vllm'"
    assert plan.events[0].type == "Warning"


def test_a_missing_secret_keeps_the_endpoint_pending_with_the_secrets_name():
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [{
        "name": "server", "state": {"waiting": {"reason": "ContainerCreating", "message": 'MountVolume.SetUp failed: secret "support-key" not found'}},
    }]}}  # fmt: skip
    plan = run(BASE, Observed(deployment=ready_deployment(ready=0), pods=[pod]))
    assert plan.new_phase == "Pending"
    assert plan.status["message"] == "Secret support-key does not exist in this namespace"


@pytest.mark.parametrize(
    ("spec", "name", "words"),
    [
        ({**BASE, "resources": {"gpus": 0}, "runtime": "vllm"}, "support", "vllm needs GPUs"),
        ({**BASE, "resources": {"gpus": 1, "gpuType": "tpu"}}, "support", "unknown GPU type 'tpu'"),
        ({**BASE, "adapters": [{"name": "support", "uri": "s3://b/a"}]}, "support", "base model's served name"),
        (BASE, "a" * 60, "metadata.name"),
        ({"baseModel": {"uri": "ftp://x"}}, "support", "spec.baseModel.uri"),
    ],
)
def test_invalid_specs_fail_naming_the_field(spec, name, words):
    plan = run(spec, name=name)
    assert plan.new_phase == "Failed" and plan.apply == []
    assert words in plan.status["message"]


def test_differs_ignores_what_the_api_server_adds_but_sees_every_change():
    desired = {"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "s", "image": "a"}]}}}}
    live = copy.deepcopy(desired)
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    live["metadata"] = {"resourceVersion": "7"}
    assert not differs(desired, live)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "b"
    assert differs(desired, live)
    assert differs({"data": {"serve.json": json.dumps({"a": 1})}}, {"data": {"serve.json": json.dumps({"a": 2})}})
    assert differs({"spec": {"ports": [{"port": 1}]}}, {"spec": {"ports": [{"port": 1}, {"port": 2}]}})


def test_a_container_that_crashed_once_and_is_ready_again_is_not_a_failure():
    status = {"containerStatuses": [{"name": "server", "ready": True, "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 137}}}],
              "conditions": [{"type": "Ready", "status": "True"}]}  # fmt: skip
    plan = run(BASE, Observed(deployment=ready_deployment(), pods=[{"metadata": {"name": "p"}, "status": status}]))
    assert plan.new_phase == "Ready"
    # still crash-looping (running again, not ready): the failure stays visible instead of flapping
    status["containerStatuses"][0]["ready"] = False
    plan = run(BASE, Observed(deployment=ready_deployment(ready=0), pods=[{"metadata": {"name": "p"}, "status": status}]))
    assert plan.new_phase == "Failed" and "exited with code 137" in plan.status["message"]


@pytest.mark.parametrize("path", sorted(REPO_ROOT.glob("deploy/examples/inferenceendpoint*.yaml")), ids=lambda p: p.name)
def test_the_examples_are_valid_endpoints(path):
    import yaml

    [doc] = list(yaml.safe_load_all(path.read_text()))
    assert doc["kind"] == "InferenceEndpoint"
    spec = InferenceEndpointSpec.model_validate(doc["spec"])
    made = server.build_server_children({**doc, "metadata": {**doc["metadata"], "namespace": NS, "uid": "u"}}, spec, [], CONFIG)
    assert [c["kind"] for c in made][:3] == ["ConfigMap", "Deployment", "Service"]


def test_a_vllm_adapter_that_cannot_be_fetched_is_named_while_the_old_pods_keep_serving():
    spec = {**VLLM, "adapters": [{"name": "good", "uri": "s3://finetune/uploads/team-a/adapters/good"}, {"name": "gone", "uri": "s3://finetune/uploads/team-a/adapters/gone"}]}
    new_pod = {"metadata": {"name": "new"}, "status": {"initContainerStatuses": [{
        "name": "fetch", "state": {"running": {}},
        "lastState": {"terminated": {"exitCode": 42, "message": "ArtifactNotFound: s3://finetune/uploads/team-a/adapters/gone has no manifest.json"}},
    }]}}  # fmt: skip
    rolling = ready_deployment(ready=1, updatedReplicas=1, replicas=2)
    plan = reconcile({**endpoint(spec), "status": None}, Observed(deployment=rolling, pods=[new_pod]), ROLLOUT)
    assert plan.new_phase == "Ready", "the old replica serves the previous adapter list"
    adapters = {a["name"]: a for a in plan.status["adapters"]}
    assert adapters["gone"]["reason"] == Reason.ADAPTER_LOAD_FAILED and "no manifest.json" in adapters["gone"]["message"]
    assert adapters["good"]["reason"] == Reason.ADAPTER_LOADING, "not served until the rollout completes"


# -- who may call it ------------------------------------------------------------------------------


def test_the_network_policy_lets_in_the_endpoints_namespace_the_admins_and_the_specs_on_the_api_port_only():
    config = CONFIG.model_copy(update={"server_ingress_namespaces": ["finetune-system", "monitoring"]})
    spec = {**BASE, "network": {"allowFromNamespaces": ["team-b-clients"]}}
    made = server.build_server_children(endpoint(spec), InferenceEndpointSpec.model_validate(spec), [], config)
    (policy,) = [c for c in made if c["kind"] == "NetworkPolicy"]
    deployment = children(BASE)["Deployment"]
    assert policy["metadata"]["name"] == "support-server" and policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    allowed = [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]]
    assert allowed == ["finetune-system", "monitoring", "team-a", "team-b-clients"]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"]), "no podSelector-only peer: it would admit the whole namespace of the policy only"
    api_port = container(deployment)["ports"][0]
    assert rule["ports"] == [{"port": api_port["name"], "protocol": "TCP"}]


def test_without_network_policies_none_is_made_and_an_old_one_goes():
    plan = reconcile(endpoint(BASE), Observed(), CONFIG.model_copy(update={"network_policies": False}))
    assert "NetworkPolicy" not in [c["kind"] for c in plan.apply]
    assert ("NetworkPolicy", "support-server") in plan.delete


@pytest.mark.parametrize("bad", ["Team-B", "a" * 64, "team_b", ""])
def test_a_namespace_to_allow_must_be_a_namespace_name(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="allow_from_namespaces|allowFromNamespaces|namespace name"):
        InferenceEndpointSpec.model_validate({**BASE, "network": {"allowFromNamespaces": [bad]}})


def test_an_endpoint_without_a_key_says_so_in_a_condition_and_one_with_a_key_says_which():
    open_endpoint = {c["type"]: c for c in run(BASE).status["conditions"]}["Authenticated"]
    assert (open_endpoint["status"], open_endpoint["reason"]) == ("False", "NoAPIKey")
    assert "anyone who can reach the Service" in open_endpoint["message"]
    keyed = run({**BASE, "apiKeySecretRef": {"name": "support-key"}}, Observed(secrets={"support-key": {"finetune.dev/allow-use": "true"}}))
    condition = {c["type"]: c for c in keyed.status["conditions"]}.get("Authenticated")
    assert condition and (condition["status"], condition["reason"]) == ("True", "APIKeyRequired"), keyed.status
    assert "support-key" in condition["message"]
