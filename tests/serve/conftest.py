"""Fixtures for the builtin server: a tiny model, LoRA adapters made with peft, SeaweedFS as S3, and real
``finetune-trainer serve`` processes on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import urllib.error
import urllib.request
from typing import Any

import pytest

API_KEY = "test-key-7f3a"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapter(base: Path, output: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) A and B matrices, saved by peft, so it visibly changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(output)
    return output


class PeftReference:
    """What plain transformers + peft generate, greedily, for a model and an adapter: the answers to compare with."""

    def __init__(self, base: Path):
        import torch
        from transformers import AutoTokenizer

        torch.set_num_threads(1)  # a tiny model on shared cores: one thread is the fastest

        self.base = base
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self._models: dict[str | None, object] = {}

    def _model(self, adapter: Path | None):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        key = str(adapter) if adapter else None
        if key not in self._models:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_pretrained(self.base).eval()
            if adapter is not None:
                model = PeftModel.from_pretrained(model, str(adapter)).eval()
            self._models[key] = model
        return self._models[key]

    def chat(self, messages: list[dict], max_tokens: int, adapter: Path | None = None) -> str:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self._generate(self.tokenizer(text, add_special_tokens=False)["input_ids"], max_tokens, adapter)

    def complete(self, prompt: str, max_tokens: int, adapter: Path | None = None) -> str:
        return self._generate(self.tokenizer(prompt)["input_ids"], max_tokens, adapter)

    def _generate(self, ids: list[int], max_tokens: int, adapter: Path | None) -> str:
        import torch

        model = self._model(adapter)
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


class ServerProcess:
    """``finetune-trainer serve`` in a subprocess, with its config file at ``config_path``."""

    def __init__(self, workdir: Path, config: dict, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / "serve.json"
        self.log_path = workdir / "server.log"
        self.config = dict(config)
        self.write_config(self.config)
        cmd = [
            sys.executable, "-m", "finetune_trainer.cli", "serve",
            "--config", str(self.config_path), "--host", "127.0.0.1", "--port", str(self.port),
            "--reload-interval", "0.3", "--drain-timeout", "20",
        ]  # fmt: skip
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, config: dict) -> None:
        """Replace the config file the way a ConfigMap update does: a new file swapped in atomically."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, self.config_path)
        self.config = dict(config)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if HttpClient(self.url).get("/readyz").status == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class SeaweedS3:
    """``weed server -s3`` on loopback ports: a real S3 API for s3:// adapter URIs."""

    def __init__(self, workdir: Path):
        ports = {
            name: free_port()
            for name in (
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
            )
        }  # fmt: skip
        self.endpoint = f"127.0.0.1:{ports['s3.port']}"
        self.credentials_dir = workdir / "credentials"
        self.credentials_dir.mkdir()
        (self.credentials_dir / "accessKey").write_text("serve-test")
        (self.credentials_dir / "secretKey").write_text("serve-test-secret")
        weed = Path(sys.executable).parent / "weed"
        (workdir / "data").mkdir()
        args = [str(weed), "server", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3",
                "-master.volumeSizeLimitMB=64", "-volume.max=4"] + [f"-{k}={v}" for k, v in ports.items()]  # fmt: skip
        self._log = open(workdir / "weed.log", "w")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)

    def store(self):
        from finetune_trainer.storage import ObjectStore

        return ObjectStore(self.storage_config())

    def storage_config(self):
        from finetune_trainer.contract import StorageConfig

        return StorageConfig(endpoint=self.endpoint, secure=False, credentials_dir=str(self.credentials_dir))

    def wait_ready(self) -> None:
        store = self.store()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                store.ensure_bucket("models")
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        self.proc.kill()  # a throwaway store: no need for weed's slow graceful stop
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from finetune_local.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("serve-model") / "tiny")


@pytest.fixture(scope="session")
def adapter_dirs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Two adapters of the tiny model, one for another (wider) base model, and a corrupt one."""
    from finetune_local.tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp("serve-adapters")
    dirs = {name: make_adapter(tiny_model, root / name, seed) for name, seed in (("alpha", 1), ("beta", 2), ("gamma", 3))}
    other_base = make_tiny_model(root / "other-base", hidden_size=32, intermediate_size=88)
    dirs["other-base"] = make_adapter(other_base, root / "wrong-base", 4)
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_bytes((dirs["alpha"] / "adapter_config.json").read_bytes())
    weights = (dirs["alpha"] / "adapter_model.safetensors").read_bytes()
    (corrupt / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    dirs["corrupt"] = corrupt
    return dirs


@pytest.fixture(scope="session")
def reference(tiny_model) -> PeftReference:
    return PeftReference(tiny_model)


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[SeaweedS3]:
    """Started early (the server fixture only needs its endpoint); tests that use it call ``wait_ready``."""
    weed = SeaweedS3(tmp_path_factory.mktemp("weed"))
    try:
        yield weed
    finally:
        weed.stop()


@pytest.fixture(scope="session")
def server(tiny_model, adapter_dirs, s3, tmp_path_factory) -> Iterator[ServerProcess]:
    """The main server: API key from a file, adapter ``alpha`` from the config file, room for 100 clients."""
    workdir = tmp_path_factory.mktemp("server")
    key_file = workdir / "api-key"
    key_file.write_text(API_KEY + "\n")
    config = {
        "baseModel": str(tiny_model),
        "servedModelName": "tiny-base",
        "adapters": [{"name": "alpha", "uri": str(adapter_dirs["alpha"])}],
        "apiKeyFile": str(key_file),
        "maxBatchSize": 8,
        "maxQueue": 128,
        "maxModelLen": 512,
        "maxBodyBytes": 64 * 1024,
        "storage": json.loads(s3.storage_config().to_json()),
    }
    process = ServerProcess(workdir, config)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    with OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


class Reply:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]):
        self.status, self.body, self.headers = status, body, headers

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class HttpClient:
    """Plain HTTP to the server (for what the OpenAI client does not send: raw bodies, admin routes, metrics)."""

    def __init__(self, base_url: str, api_key: str | None = None):
        self.base_url = base_url
        self.api_key = api_key

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        all_headers = {"Content-Type": "application/json"}
        if self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        all_headers.update(headers or {})
        request = urllib.request.Request(self.base_url + path, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Reply(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.read(), dict(e.headers))
        except (urllib.error.URLError, ConnectionError) as e:
            return Reply(0, str(e).encode(), {})

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, payload: Any = None, raw: bytes | None = None) -> Reply:
        return self.request("POST", path, raw if raw is not None else json.dumps(payload).encode())


@pytest.fixture
def http(server) -> HttpClient:
    return HttpClient(server.url, API_KEY)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the samples of ``name`` (with these labels) in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total
