"""vLLM adapters loaded at run time: the pod template does not change with the adapter list, and the sidecar
(``finetune-trainer vllm-adapters``) loads, unloads and reloads adapters in a running server through vLLM's
``/v1/load_lora_adapter`` routes, behind the endpoint's auth middleware, reporting each adapter's state at
``/health`` as the builtin server does. The server is a stand-in with vLLM's adapter routes (no vLLM on CPU);
the middleware, the sidecar's code, the object store and the adapters are real."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from finetune_operator.api.inferenceendpoint import InferenceEndpointSpec
from finetune_operator.manifests import server
from finetune_trainer import contract
from finetune_trainer.storage import ObjectStore
from finetune_trainer.vllm_adapters import AdapterSync, write_state
from tests.chart.pod_security import check_restricted
from tests.operator.test_inferenceendpoint_reconcile import CONFIG, VLLM, container, endpoint

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


def runtime_children(adapters: list[server.ServedAdapter]) -> dict[str, dict]:
    spec = InferenceEndpointSpec.model_validate(VLLM)
    made = server.build_server_children(endpoint(VLLM), spec, adapters, CONFIG, runtime_lora_loading=True)
    return {c["kind"]: c for c in made}


def test_changing_the_adapters_changes_the_configmap_only_so_no_pod_restarts():
    one = runtime_children([server.ServedAdapter("a", "s3://finetune/adapters/a")])
    two = runtime_children([server.ServedAdapter("a", "s3://finetune/adapters/a"), server.ServedAdapter("b", "s3://finetune/adapters/b")])
    assert one["Deployment"] == two["Deployment"], "the pod template does not name the adapters"
    listed = contract.VllmAdaptersConfig.model_validate_json(two["ConfigMap"]["data"][server.ADAPTERS_CONFIG_FILE])
    assert [(a.name, a.uri) for a in listed.adapters] == [("a", "s3://finetune/adapters/a"), ("b", "s3://finetune/adapters/b")]
    assert listed.max_lora_rank == 32 and listed.api_key_file == "/var/run/secrets/finetune/api-key/token"
    fetch = contract.FetchConfig.model_validate_json(two["ConfigMap"]["data"][server.FETCH_CONFIG_FILE])
    assert [i.kind for i in fetch.items] == ["model"], "the init container fetches the base model only"

    template = two["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"][server.ADAPTER_LOADING_LABEL] == "runtime"
    assert server.ADAPTERS_HASH_ANNOTATION not in template["metadata"]["annotations"]
    assert check_restricted(template["spec"], template["metadata"]["annotations"]) == []
    vllm, sidecar = template["spec"]["containers"]
    assert "--lora-modules" not in vllm["args"] and "--host=0.0.0.0" in vllm["args"]
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["FINETUNE_ADAPTER_STATE_FILE"] == server.ADAPTER_STATE_FILE
    assert sidecar["command"] == ["finetune-trainer", "vllm-adapters", "--config", "/etc/finetune/adapters.json"]
    assert "nvidia.com/gpu" not in sidecar["resources"]["limits"]
    shared = {m["name"] for m in sidecar["volumeMounts"]} & {m["name"] for m in vllm["volumeMounts"]}
    assert {"config", "adapters", "api-key"} <= shared, "the sidecar writes where vLLM reads, with the same key"
    items = {i["key"] for i in template["spec"]["volumes"][0]["configMap"]["items"]}
    assert server.ADAPTERS_CONFIG_FILE in items


def test_without_runtime_loading_the_rollout_path_is_unchanged():
    made = {c["kind"]: c for c in server.build_server_children(endpoint(VLLM), InferenceEndpointSpec.model_validate(VLLM),
                                                                [server.ServedAdapter("a", "s3://finetune/adapters/a")], CONFIG)}  # fmt: skip
    assert server.ADAPTER_LOADING_LABEL not in made["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert "--lora-modules" in container(made["Deployment"])["args"]
    assert len(made["Deployment"]["spec"]["template"]["spec"]["containers"]) == 1


class FakeVllm:
    """vLLM's adapter routes as vLLM 0.11 answers them, with the adapters it holds in memory."""

    def __init__(self, base: str):
        self.base = base
        self.loaded: dict[str, str] = {}
        app = fastapi.FastAPI()
        app.add_api_route("/health", lambda: None, methods=["GET"])
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/v1/load_lora_adapter", self.load, methods=["POST"])
        app.add_api_route("/v1/unload_lora_adapter", self.unload, methods=["POST"])
        self.app = app

    def models(self):
        cards = [{"id": self.base, "object": "model", "root": self.base, "parent": None}]
        cards += [{"id": name, "object": "model", "root": path, "parent": self.base} for name, path in self.loaded.items()]
        return {"object": "list", "data": cards}

    def load(self, body: dict = fastapi.Body(...)):
        name, path = body["lora_name"], Path(body["lora_path"])
        if name in self.loaded:
            return fastapi.responses.JSONResponse({"error": {"message": f"The lora adapter '{name}' has already been loaded."}}, 400)
        if not (path / "adapter_config.json").exists():
            return fastapi.responses.JSONResponse({"error": {"message": f"No adapter found for {path}"}}, 404)
        self.loaded[name] = str(path)
        return fastapi.responses.PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    def unload(self, body: dict = fastapi.Body(...)):
        if self.loaded.pop(body["lora_name"], None) is None:
            return fastapi.responses.JSONResponse({"error": {"message": "not found"}}, 404)
        return fastapi.responses.PlainTextResponse("Success")


@pytest.fixture
def pod(tmp_path, monkeypatch):
    """A vLLM stand-in behind the endpoint's own middleware (from the ConfigMap, as vLLM mounts it)."""
    made = runtime_children([])
    module_dir = tmp_path / "python"
    module_dir.mkdir()
    (module_dir / f"{server.AUTH_MODULE}.py").write_text(made["ConfigMap"]["data"][f"{server.AUTH_MODULE}.py"])
    key = tmp_path / "token"
    key.write_text("sesame")
    state = tmp_path / "adapters" / ".state.json"
    monkeypatch.syspath_prepend(str(module_dir))
    monkeypatch.delitem(sys.modules, server.AUTH_MODULE, raising=False)
    monkeypatch.setenv("FINETUNE_API_KEY_FILE", str(key))
    monkeypatch.setenv("FINETUNE_ADAPTER_STATE_FILE", str(state))
    fake = FakeVllm("support")
    auth = __import__(server.AUTH_MODULE)
    fake.app.add_middleware(auth.RequireApiKey)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    uv = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{sock.getsockname()[1]}", key, state, auth
    uv.should_exit = True
    thread.join(timeout=30)
    sock.close()


def upload_adapter(store: ObjectStore, tmp_path: Path, uri: str, r: int, manifest: bool = True) -> str:
    folder = tmp_path / "src" / uri.rsplit("/", 1)[-1]
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 128)
    if manifest:
        store.upload_artifact(folder, uri, kind="adapter")
    else:
        for path in folder.iterdir():
            store.upload_file(path, f"{uri}/{path.name}")
    return uri


def test_the_sidecar_loads_unloads_and_reloads_adapters_in_the_running_server(pod, tmp_path, object_store):
    fake, url, key, state_file, _auth = pod
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "accessKey").write_text(object_store.access_key)
    (credentials / "secretKey").write_text(object_store.secret_key)
    storage = contract.StorageConfig(endpoint=object_store.endpoint, secure=False, credentials_dir=str(credentials))
    store = ObjectStore(storage)
    base = f"s3://{object_store.bucket}/runtime-adapters"
    uris = {
        "a": upload_adapter(store, tmp_path, f"{base}/a", 16),
        "wide": upload_adapter(store, tmp_path, f"{base}/wide", 64),
        "half": upload_adapter(store, tmp_path, f"{base}/half", 8, manifest=False),
        "d": upload_adapter(store, tmp_path, f"{base}/d", 8),
    }

    def config(*names: str) -> contract.VllmAdaptersConfig:
        return contract.VllmAdaptersConfig(
            adapters=[contract.VllmAdapter(name=n, uri=uris[n], dest=str(tmp_path / "adapters" / n)) for n in names],
            server=url, api_key_file=str(key), max_lora_rank=32, state_file=str(state_file), storage=storage,
        )  # fmt: skip

    def health() -> dict:
        with urllib.request.urlopen(url + "/health", timeout=30) as response:
            assert response.status == 200
            return {a["name"]: a for a in json.loads(response.read())["adapters"]}

    sync = AdapterSync(store)
    states = sync.sync(config("a", "wide", "half"))
    write_state(state_file, states)
    assert set(fake.loaded) == {"a"}
    reported = health()  # what the operator reads, as from a builtin server
    assert reported["a"]["status"] == "loaded" and reported["a"]["uri"] == uris["a"]
    assert reported["wide"]["status"] == "failed" and "rank 64, above the endpoint's spec.maxLoraRank 32" in reported["wide"]["error"]
    assert reported["half"]["status"] == "failed" and "has no manifest.json" in reported["half"]["error"]

    # The list changes (the kubelet refreshed the ConfigMap): a goes, d comes; the server keeps running.
    write_state(state_file, sync.sync(config("d")))
    assert set(fake.loaded) == {"d"} and health()["d"]["status"] == "loaded"
    assert not (tmp_path / "adapters" / "a").exists(), "an unloaded adapter's files go"

    # vLLM restarted and lost its adapters: the next pass loads them again.
    fake.loaded.clear()
    write_state(state_file, sync.sync(config("d")))
    assert set(fake.loaded) == {"d"}


def test_only_the_pod_itself_may_load_or_unload_adapters(pod):
    _fake, _url, _key, _state, auth = pod

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guarded = auth.RequireApiKey(app, api_key=b"sesame")

    def status(path: str, client: str) -> int:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        scope = {"type": "http", "method": "POST", "path": path, "client": (client, 40000), "headers": [(b"authorization", b"Bearer sesame")]}
        asyncio.run(guarded(scope, receive, send))
        return sent[0]["status"]

    assert status("/v1/load_lora_adapter", "10.1.2.3") == 403, "a client with the API key may not manage adapters"
    assert status("/v1/unload_lora_adapter", "10.1.2.3") == 403
    assert status("/v1/load_lora_adapter", "127.0.0.1") == 200, "the sidecar in the pod may"
    assert status("/v1/chat/completions", "10.1.2.3") == 200
