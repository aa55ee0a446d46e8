"""The vllm runtime's auth middleware as vLLM runs it: the file from the endpoint's ConfigMap on PYTHONPATH,
imported by the `--middleware` module path and added to a FastAPI app the way vLLM's ``build_app`` does,
served over HTTP by uvicorn. The app's routes stand for vLLM's (no vLLM on a CPU machine)."""

from __future__ import annotations

import importlib
import inspect
import json
import socket
import sys
import threading
import urllib.error
import urllib.request

import pytest

from finetune_operator.manifests import server
from tests.operator.test_inferenceendpoint_reconcile import VLLM, children, container

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

VLLM_ROUTES = [
    ("GET", "/health"), ("GET", "/metrics"), ("GET", "/ping"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/invocations"),
    ("POST", "/pooling"), ("POST", "/score"), ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"),
]  # fmt: skip
OPEN = {"/health", "/metrics", "/ping"}


def vllm_like_app(middleware_args: list[str]):
    app = fastapi.FastAPI()
    for method, path in VLLM_ROUTES:
        app.add_api_route(path, lambda: {"ok": True}, methods=[method])
    for middleware in middleware_args:  # as vllm.entrypoints.openai.api_server.build_app does
        module_path, object_name = middleware.rsplit(".", 1)
        imported = getattr(importlib.import_module(module_path), object_name)
        if inspect.isclass(imported):
            app.add_middleware(imported)
        elif inspect.iscoroutinefunction(imported):
            app.middleware("http")(imported)
        else:
            raise ValueError(f"Invalid middleware {middleware}")
    return app


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The ConfigMap's module and the Secret's key file where the pod mounts them, and the app on a socket."""
    made = children(VLLM)
    c = container(made["Deployment"])
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    python_dir = tmp_path / "python"
    python_dir.mkdir()
    (python_dir / f"{server.AUTH_MODULE}.py").write_text(made["ConfigMap"]["data"][f"{server.AUTH_MODULE}.py"])
    key_file = tmp_path / "token"
    key_file.write_text("sesame\n")
    assert env["PYTHONPATH"] == server.PYTHON_DIR and env["FINETUNE_API_KEY_FILE"].endswith("/token")
    monkeypatch.syspath_prepend(str(python_dir))  # PYTHONPATH=/etc/finetune/python
    monkeypatch.setenv("FINETUNE_API_KEY_FILE", str(key_file))
    monkeypatch.delitem(sys.modules, server.AUTH_MODULE, raising=False)
    args = c["args"]
    app = vllm_like_app([args[args.index("--middleware") + 1]])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # requests wait in the backlog until the server accepts them
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(timeout=30)
    sock.close()


def call(base: str, method: str, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(base + path, data=data, method=method, headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
        assert e.code != 401 or body["error"]["code"] == "invalid_api_key", body
        return e.code


def test_every_vllm_route_but_the_probes_and_metrics_needs_the_key_when_mounted_as_vllm_mounts_it(served):
    for method, path in VLLM_ROUTES:
        if path in OPEN:
            assert call(served, method, path) == 200, path
            continue
        assert call(served, method, path) == 401, f"{path} answered without a key"
        assert call(served, method, path, "wrong") == 401, f"{path} answered a wrong key"
        assert call(served, method, path, "sesame") == 200, path


def test_every_refused_request_gets_its_401_not_a_reset_connection(served):
    """urllib, like OpenAI clients, sends the body after the headers; a server that answers and closes
    before reading it makes the kernel reset the connection, and the client sees a network error instead of
    "invalid_api_key" (every second request or so before the middleware read the body first)."""
    for attempt in range(100):
        assert call(served, "POST", "/v1/chat/completions", "wrong" if attempt % 2 else None) == 401
