"""An InferenceEndpoint's life through the Kubernetes API: the operator runs as in production, the local
runner runs its Deployment, and the real builtin server serves a tiny model from SeaweedFS, called with
the official ``openai`` client through the Service."""

from __future__ import annotations

import textwrap
from pathlib import Path

import openai
import pytest

from tests.operator.test_operator_integration import runner_logs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

API_KEY = "sk-endpoint-" + "7c1e" * 6
BASE_URI = "s3://finetune/models/endpoint-tiny"
ADAPTER_URI = "s3://finetune/models/adapters/endpoint-support"
LATER_URI = "s3://finetune/models/adapters/endpoint-later"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_adapter(base: Path, output: Path, seed: int) -> Path:
    """A LoRA adapter saved by peft with non-zero weights, as a FineTuneJob would leave it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    model.save_pretrained(output)
    return output


@pytest.fixture(scope="module")
def uploaded_models(object_store, tmp_path_factory) -> None:
    """The tiny base model and two adapters in the object store, each with its manifest (written last)."""
    from finetune_trainer.contract import StorageConfig
    from finetune_trainer.storage import ObjectStore
    from finetune_local.tiny_model import make_tiny_model

    folder = tmp_path_factory.mktemp("endpoint-models")
    credentials = folder / "credentials"
    credentials.mkdir()
    (credentials / "accessKey").write_text(object_store.access_key)
    (credentials / "secretKey").write_text(object_store.secret_key)
    store = ObjectStore(StorageConfig(endpoint=object_store.endpoint, secure=False, credentials_dir=str(credentials)))
    base = make_tiny_model(folder / "base")
    store.upload_artifact(base, BASE_URI, kind="model", base_model="tiny-llama")
    store.upload_artifact(make_adapter(base, folder / "support", seed=1), ADAPTER_URI, kind="adapter", base_model=BASE_URI)
    store.upload_artifact(make_adapter(base, folder / "later", seed=2), LATER_URI, kind="adapter", base_model=BASE_URI)


def endpoint_yaml(name: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        apiVersion: finetune.dev/v1alpha1
        kind: InferenceEndpoint
        metadata:
          name: {name}
        spec:
          baseModel:
            uri: {BASE_URI}
          apiKeySecretRef:
            name: {name}-key
        """
    ) + textwrap.indent(textwrap.dedent(extra), "  ")


def api_key_secret(cluster, name: str) -> None:
    cluster.core.create_namespaced_secret(cluster.namespace, {"metadata": {"name": name, "labels": {"finetune.dev/allow-use": "true"}}, "stringData": {"apiKey": API_KEY}})


def service_client(cluster, service: str, api_key: str = API_KEY) -> openai.OpenAI:
    """The official client, pointed at the Service (the runner's proxy for it, by its annotation)."""
    svc = cluster.core.read_namespaced_service(service, cluster.namespace)
    address = svc.metadata.annotations["local.finetune.dev/address"]
    return openai.OpenAI(base_url=f"http://{address}/v1", api_key=api_key, max_retries=0, timeout=30)


def adapter_status(obj: dict, name: str) -> dict:
    return next((a for a in obj.get("status", {}).get("adapters") or [] if a["name"] == name), {})


def server_pods(cluster, name: str) -> list:
    return cluster.core.list_namespaced_pod(cluster.namespace, label_selector=f"finetune.dev/inferenceendpoint={name}").items


def test_builtin_endpoint_serves_its_model_and_hot_loads_adapters(cluster, object_store, uploaded_models, start_operator, runner):
    operator = start_operator()
    cluster.storage_secret(object_store)
    api_key_secret(cluster, "support-key")
    # An adapter from a FineTuneJob that has not finished (it waits for a Dataset that does not exist).
    cluster.apply(textwrap.dedent(
        """
        apiVersion: finetune.dev/v1alpha1
        kind: FineTuneJob
        metadata:
          name: next-version
        spec:
          baseModel:
            uri: s3://finetune/models/endpoint-tiny
          dataset: not-uploaded-yet
          resources:
            gpus: 0
        """
    ))  # fmt: skip
    cluster.apply(endpoint_yaml("support", """
        adapters:
          - name: support-next
            fineTuneJob: next-version
        """))  # fmt: skip

    ready = cluster.wait_phase("inferenceendpoints", "support", "Ready", timeout=90)
    status = ready["status"]
    ns = cluster.namespace
    assert status["url"] == f"http://support-server.{ns}.svc:8000/v1"
    assert status["runtime"] == "builtin" and status["readyReplicas"] == 1
    assert status["models"] == ["support"]
    assert adapter_status(ready, "support-next") == {
        "name": "support-next", "ready": False, "reason": "FineTuneJobNotCompleted",
        "message": "FineTuneJob next-version is Pending; its adapter is served once it is Completed",
    }  # fmt: skip
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["AdaptersReady"]["reason"] == "AdapterNotReady"

    # What the operator made, as the user would inspect it.
    import kubernetes

    apps = kubernetes.client.AppsV1Api(cluster.api)
    dep = apps.read_namespaced_deployment("support-server", ns)
    assert dep.metadata.owner_references[0].name == "support"
    assert dep.metadata.labels["app.kubernetes.io/managed-by"] == "finetune-operator"
    pod_spec = dep.spec.template.spec
    assert pod_spec.automount_service_account_token is False
    [container] = pod_spec.containers
    assert container.command == ["finetune-trainer", "serve", "--config", "/etc/finetune/serve.json", "--host=$(POD_IP)", "--port=8000"]
    assert container.readiness_probe.http_get.path == "/readyz" and container.ports[0].name == "http"
    svc = cluster.core.read_namespaced_service("support-server", ns)
    assert [(p.name, p.port) for p in svc.spec.ports] == [("http", 8000)]

    # A client with the key talks to the base model through the Service; one without it is refused.
    client = service_client(cluster, "support-server")
    assert [m.id for m in client.models.list().data] == ["support"]
    answer = client.chat.completions.create(model="support", messages=[{"role": "user", "content": "Where is my order?"}], max_tokens=4, temperature=0)
    assert answer.choices[0].message.role == "assistant" and answer.usage.completion_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        service_client(cluster, "support-server", api_key="wrong").models.list()

    # Adding adapters by URI hot-loads them in the running pod; a missing one is reported, the rest serve.
    [pod] = server_pods(cluster, "support")
    cluster.patch_spec("inferenceendpoints", "support", {"adapters": [
        {"name": "support-next", "fineTuneJob": "next-version"},
        {"name": "support-v1", "uri": ADAPTER_URI},
        {"name": "broken", "uri": "s3://finetune/models/adapters/does-not-exist"},
    ]})  # fmt: skip
    loaded = cluster.wait_for(
        "inferenceendpoints", "support",
        lambda o: adapter_status(o, "support-v1").get("ready") and adapter_status(o, "broken").get("reason") == "AdapterLoadFailed",
        timeout=60, what="to serve support-v1 and report broken",
    )  # fmt: skip
    assert "manifest.json" in adapter_status(loaded, "broken")["message"]
    assert loaded["status"]["phase"] == "Ready" and loaded["status"]["models"] == ["support", "support-v1"]
    assert sorted(m.id for m in client.models.list().data) == ["support", "support-v1"]
    reply = client.chat.completions.create(model="support-v1", messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0)
    assert reply.model == "support-v1"
    [same] = server_pods(cluster, "support")
    assert same.metadata.uid == pod.metadata.uid and same.status.container_statuses[0].restart_count == 0, "hot-loaded, not restarted"

    # The FineTuneJob completes: the endpoint picks its adapter up.
    cluster.patch_status("finetunejobs", "next-version", {
        "phase": "Completed",
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "ModelUploaded", "message": "done", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "outputModel": {"name": f"{ns}/endpoint-tiny:next-version", "uri": LATER_URI, "adapter": True},
    })  # fmt: skip
    cluster.wait_for("inferenceendpoints", "support", lambda o: adapter_status(o, "support-next").get("ready"), timeout=60, what="to serve support-next")
    assert "support-next" in [m.id for m in client.models.list().data]
    assert server_pods(cluster, "support")[0].metadata.uid == pod.metadata.uid
    reasons = [e["reason"] for e in cluster.events_for("support")]
    assert "Ready" in reasons and "AdapterReady" in reasons and "AdapterLoadFailed" in reasons, (reasons, runner_logs(runner))

    # `kubectl get inferenceendpoints` and the operator's metrics show it.
    table = cluster.kubectl("get", "inferenceendpoints").stdout
    assert "support" in table and "Ready" in table and BASE_URI in table
    metrics = operator.metrics_once('finetune_objects{kind="InferenceEndpoint",phase="Ready"} 1.0', 'kind="InferenceEndpoint",to_phase="Ready"}')
    transitions = [line for line in metrics.splitlines() if line.startswith("finetune_phase_transitions_total{")]
    wanted = ('kind="InferenceEndpoint"', 'from_phase="Deploying"', 'to_phase="Ready"')
    assert any(all(label in line for label in wanted) and line.endswith(" 1.0") for line in transitions), transitions


def test_vllm_endpoint_makes_a_gpu_deployment_and_shows_why_it_cannot_run_here(cluster, object_store, uploaded_models, start_operator, runner):
    start_operator()
    cluster.storage_secret(object_store)
    api_key_secret(cluster, "gpu-key")
    cluster.apply(endpoint_yaml("gpu", f"""
        resources:
          gpus: 1
        replicas:
          min: 1
          max: 3
        maxModelLen: 2048
        adapters:
          - name: support-v1
            uri: {ADAPTER_URI}
        """))  # fmt: skip
    failed = cluster.wait_phase("inferenceendpoints", "gpu", "Failed", timeout=90)
    # The init container fetched the weights for real; vLLM itself is not installed here.
    assert "container server exited with code 1" in failed["status"]["message"] and "vllm" in failed["status"]["message"], runner_logs(runner)
    assert failed["status"]["runtime"] == "vllm"

    import kubernetes

    api = cluster.api
    dep = kubernetes.client.AppsV1Api(api).read_namespaced_deployment("gpu-server", cluster.namespace)
    assert dep.spec.replicas == 1  # set at creation; the autoscaler owns it from then on
    template = dep.spec.template
    assert template.metadata.labels["finetune.dev/adapter-loading"] == "runtime", "adapters load into the running server"
    assert "finetune.dev/adapters-hash" not in (template.metadata.annotations or {})
    container, sidecar = template.spec.containers
    assert container.command == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container.args[:2] == ["--model", "/models/base"] and "--enable-lora" in container.args
    assert "--lora-modules" not in container.args
    assert {e.name: e.value for e in container.env}["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert sidecar.command[:2] == ["finetune-trainer", "vllm-adapters"]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.readiness_probe.http_get.path == "/health"
    [init] = template.spec.init_containers
    assert init.command[:2] == ["finetune-trainer", "fetch"]
    pods = server_pods(cluster, "gpu")
    assert pods and pods[0].status.init_container_statuses[0].state.terminated.exit_code == 0, "the weights were fetched"
    hpa = kubernetes.client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler("gpu-server", cluster.namespace)
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (1, 3)
    assert hpa.spec.scale_target_ref.name == "gpu-server"


def test_a_vllm_spec_the_model_cannot_serve_fails_with_the_field_to_change(cluster, object_store, uploaded_models, start_operator, runner):
    """vLLM would exit at start on a maxModelLen above the model's context; the fetch says so first."""
    start_operator()
    cluster.storage_secret(object_store)
    api_key_secret(cluster, "long-key")
    cluster.apply(endpoint_yaml("long", """
        resources:
          gpus: 1
        maxModelLen: 8192
        """))  # fmt: skip
    failed = cluster.wait_phase("inferenceendpoints", "long", "Failed", timeout=90)
    message = failed["status"]["message"]
    assert "init container fetch exited with code 42" in message, runner_logs(runner)
    assert "ModelLimitExceeded: spec.maxModelLen 8192 is above the model's context length 2048" in message

