"""``make demo``: the whole product on one machine, in a few minutes, on CPU.

It starts what a cluster would have (a Kubernetes API server, an S3 store, a runner in place of the
nodes) and the operator as it runs in production, makes a tiny base model and a support-ticket dataset,
applies deploy/examples/demo/ (Dataset, FineTuneJob, InferenceEndpoint, Evaluation) as a user would with
``kubectl apply``, shows the jobs and the event log as they move, and ends with the base-versus-fine-tuned
table and a call to the fine-tuned model through the OpenAI-compatible API.

``python -m finetune_local.demo [--keep] [--work-dir DIR]``; ``--keep`` leaves everything running (with
the kubeconfig and the endpoint's address printed) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune_local.demo_data import SYSTEM, corpus, examples, write_jsonl
from finetune_local.processes import NotLive, wait_until_live

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = REPO_ROOT / "deploy" / "examples" / "demo"
CRDS = REPO_ROOT / "crds"
NAMESPACE = "finetune-demo"
BUCKET = "finetune"
BASE_MODEL_URI = f"s3://{BUCKET}/models/tiny-support"
DATA_KEY = f"uploads/{NAMESPACE}/support-tickets.jsonl"
"""The tenant's own file, under its namespace's prefix (base models are a shared, read-only catalogue)."""
GROUP, VERSION = "finetune.dev", "v1alpha1"
PLURALS = {"Dataset": "datasets", "FineTuneJob": "finetunejobs", "InferenceEndpoint": "inferenceendpoints", "Evaluation": "evaluations"}
NUM_EXAMPLES = 1340
"""About 1,200 to train on and 130 held out (the Dataset's 10 % validation split)."""


class DemoFailed(RuntimeError):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n=== {title}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- cluster


@dataclass
class LocalCluster:
    """What the demo started, and how to stop it again (in reverse order)."""

    work_dir: Path
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    api: Any = None
    kubeconfig: Path | None = None
    store: Any = None
    runner: Any = None
    operator: subprocess.Popen | None = None
    operator_log: Path | None = None
    metrics_port: int = 0
    api_key: str = ""
    real: bool = False
    """A real control plane (kube-apiserver, kube-controller-manager), not the project's own API server."""
    operator_kubeconfig: Path | None = None
    operator_env: dict[str, str] = field(default_factory=dict)
    """Operator settings on top of the demo's (FINETUNE_* variables), kept when the operator is started again."""

    def client(self) -> Any:
        return self.api.api_client()


def start_cluster(work_dir: Path, assets: Path | None = None, operator_env: dict[str, str] | None = None) -> LocalCluster:
    """The API server (a real control plane from ``assets``, the envtest folder, else the project's own), the
    object store, the runner and the operator. On a real control plane the demo's namespace enforces the
    `restricted` Pod Security profile, the runner plays only the nodes, and the operator authenticates with
    its own ServiceAccount's token, bound to exactly the permissions it needs."""
    import kubernetes.client

    from finetune_local.controlplane import ControlPlane, grant_operator
    from finetune_local.kubeapi import KubeApiServer, load_manifests
    from finetune_local.objectstore import start_object_store
    from finetune_local.runner import LocalRunner

    cluster = LocalCluster(work_dir=work_dir, real=assets is not None, operator_env=dict(operator_env or {}))
    try:
        crds = [d for d in load_manifests(CRDS) if d.get("kind") == "CustomResourceDefinition"]
        if assets is not None:
            cluster.api = ControlPlane(assets, work_dir / "controlplane").start()
            cluster.stack.callback(cluster.api.stop)
            cluster.kubeconfig = cluster.api.write_kubeconfig(work_dir / "kubeconfig", namespace=NAMESPACE)
            cluster.api.apply(crds)
            cluster.operator_kubeconfig = grant_operator(cluster.api, work_dir / "operator.kubeconfig")
            say(f"Kubernetes API server   {cluster.api.url}  (kube-apiserver {cluster.api.version}, etcd and "
                f"kube-controller-manager; kubeconfig {cluster.kubeconfig})")
        else:
            cluster.api = KubeApiServer().start()
            cluster.stack.callback(cluster.api.stop)
            cluster.kubeconfig = cluster.api.write_kubeconfig(work_dir / "kubeconfig", namespace=NAMESPACE)
            cluster.operator_kubeconfig = cluster.kubeconfig
            cluster.api.apply(crds)
            say(f"Kubernetes API server   {cluster.api.url}  (kubeconfig {cluster.kubeconfig})")

        cluster.store = start_object_store(work_dir / "s3", bucket=BUCKET)
        cluster.stack.callback(cluster.store.stop)
        say(f"S3 object store         http://{cluster.store.endpoint}  (SeaweedFS, bucket {BUCKET})")

        with cluster.client() as api:
            core = kubernetes.client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        # The namespace's store key reaches its own prefixes and the shared models/ only, as an admin grants it.
        grant_scoped_key(cluster)

        # The runner plays the nodes: it runs the operator's Jobs and Deployments as local processes, with
        # this environment's `finetune-trainer` in place of the trainer image.
        cluster.runner = LocalRunner(cluster.kubeconfig, namespace=NAMESPACE, work_dir=work_dir / "runner",
                                     grace_period_cap=10, extra_path=[str(Path(sys.executable).parent)],
                                     kubelet_only=cluster.real)
        cluster.runner.start()
        cluster.stack.callback(cluster.runner.stop)
        if cluster.real:
            say(f"Runner                  node {cluster.runner.node_name}: pods bound to it run as local processes")
        else:
            cluster.api.set_log_provider(cluster.runner.pod_log)  # `kubectl logs` reads the runner's logs
            say("Runner                  in place of the nodes: Jobs and Deployments run as local processes")

        start_operator(cluster)
        say(f"Operator                python -m finetune_operator  (metrics http://127.0.0.1:{cluster.metrics_port}/metrics, "
            f"log {cluster.operator_log})")
    except BaseException:
        cluster.stack.close()
        raise
    return cluster


def grant_scoped_key(cluster: LocalCluster) -> None:
    """``python -m finetune_operator.storage_keys grant`` for the demo's namespace, against its SeaweedFS."""
    from finetune_operator import storage_keys
    from finetune_operator.config import OperatorConfig
    from finetune_operator.kube import Kube

    config = OperatorConfig(storage_bucket=BUCKET, shared_prefixes=[f"s3://{BUCKET}/models"])
    with cluster.client() as api:
        kube = Kube(api.configuration)
        storage_keys.grant(NAMESPACE, config, kube, filer=storage_keys.Filer(cluster.store.filer_url))
        secret = kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{config.storage_secret}")
    keys = [base64.b64decode(secret["data"][k]).decode() for k in ("accessKey", "secretKey")]
    cluster.store.wait_for_key(*keys, f"s3://{BUCKET}/jobs/{NAMESPACE}")


def start_operator(cluster: LocalCluster) -> None:
    credentials = cluster.work_dir / "operator-credentials"
    credentials.mkdir(mode=0o700, exist_ok=True)
    for name, value in (("accessKey", cluster.store.access_key), ("secretKey", cluster.store.secret_key)):
        path = credentials / name
        path.write_text(value)
        path.chmod(0o600)
    cluster.metrics_port, health_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update({
        "KUBECONFIG": str(cluster.operator_kubeconfig),
        "FINETUNE_NAMESPACE": NAMESPACE,
        "FINETUNE_STORAGE_ENDPOINT": cluster.store.endpoint,
        "FINETUNE_STORAGE_SECURE": "false",
        "FINETUNE_STORAGE_REGION": "us-east-1",
        "FINETUNE_STORAGE_SCOPED_KEYS": "true",
        "FINETUNE_STORAGE_BUCKET": BUCKET,
        "FINETUNE_STORAGE_CREDENTIALS_DIR": str(credentials),
        "FINETUNE_PROGRESS_INTERVAL_SECONDS": "2",
        "FINETUNE_LOG_FORMAT": "text",
        "FINETUNE_METRICS_PORT": str(cluster.metrics_port),
        "FINETUNE_SHARED_PREFIXES": f"s3://{BUCKET}/models",
        "FINETUNE_HEALTH_PORT": str(health_port),
        **cluster.operator_env,
    })
    cluster.operator_log = cluster.work_dir / "operator.log"
    with open(cluster.operator_log, "ab") as log:
        cluster.operator = subprocess.Popen([sys.executable, "-m", "finetune_operator"], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
    cluster.stack.callback(stop_process, cluster.operator)
    try:
        wait_until_live(cluster.operator, f"http://127.0.0.1:{health_port}/healthz", 90, "the operator",
                        lambda: cluster.operator_log.read_text(errors="replace")[-3000:])
    except NotLive as error:
        raise DemoFailed(str(error)) from None


CONSOLE_PORT = 8765


def start_console(cluster: LocalCluster) -> str:
    """`finetune console` with the demo's kubeconfig (as a user would run it); returns its URL."""
    port = CONSOLE_PORT
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:  # taken: any free port
            port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    log_path = cluster.work_dir / "console.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / "finetune"), "console", "--port", str(port), "--no-browser",
                                    "--kubeconfig", str(cluster.kubeconfig), "-n", NAMESPACE],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)  # fmt: skip
    cluster.stack.callback(stop_process, process)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_live(process, url + "jobs", 30, "the console", lambda: log_path.read_text(errors="replace")[-3000:])
    except NotLive as error:
        raise DemoFailed(str(error)) from None
    return url


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


# ------------------------------------------------------------------------------------------- inputs


def object_store_client(cluster: LocalCluster) -> Any:
    from finetune_trainer.contract import StorageConfig
    from finetune_trainer.storage import ObjectStore

    return ObjectStore(StorageConfig(endpoint=cluster.store.endpoint, secure=False,
                                     credentials_dir=str(cluster.work_dir / "operator-credentials")))


def prepare_inputs(cluster: LocalCluster) -> Path:
    """The tiny base model (uploaded), the ticket file (uploaded where the Dataset points) and the
    endpoint's API key (a Secret, and a file only its owner can read)."""
    import kubernetes.client

    from finetune_local.tiny_model import make_tiny_model

    cluster.api_key = secrets.token_hex(24)
    key_file = cluster.work_dir / "api-key"
    key_file.write_text(cluster.api_key + "\n")
    key_file.chmod(0o600)
    with cluster.client() as api:
        kubernetes.client.CoreV1Api(api).create_namespaced_secret(
            NAMESPACE, {"metadata": {"name": "support-api-key", "labels": {"finetune.dev/allow-use": "true"}},
                        "stringData": {"apiKey": cluster.api_key}})  # the label: its owner lets specs name it
    say(f"API key                 Secret support-api-key, labelled finetune.dev/allow-use=true (and {key_file})")

    store = object_store_client(cluster)
    # A real base model knows the language but not the task. The tiny one gets a vocabulary learned from
    # unlabelled tickets (other tickets than the dataset's) and an init scale its frozen head can use.
    model = make_tiny_model(cluster.work_dir / "tiny-support", seed=0, init_std=0.2,
                            tokenizer_corpus=corpus(2000, seed=1), vocab_size=1024)
    store.upload_artifact(model, BASE_MODEL_URI, kind="model")
    say(f"Base model              {BASE_MODEL_URI}  (a 2-layer Llama, {parameter_count(model)} parameters, random weights)")

    data = write_jsonl(cluster.work_dir / "support-tickets.jsonl", examples(NUM_EXAMPLES, seed=7))
    cluster.store.client().fput_object(BUCKET, DATA_KEY, str(data))
    sample = json.loads(data.read_text().splitlines()[0])["messages"]
    say(f"Dataset file            s3://{BUCKET}/{DATA_KEY}  ({NUM_EXAMPLES} tickets), e.g.")
    say(f"                        user: {sample[1]['content']!r}  ->  assistant: {sample[2]['content']!r}")
    return data


def parameter_count(model_dir: Path) -> str:
    from safetensors.torch import load_file

    return f"{sum(t.numel() for t in load_file(model_dir / 'model.safetensors').values()) / 1e3:.0f}k"


def example_documents() -> list[tuple[str, dict]]:
    """(file name, object) of every document in deploy/examples/demo/, in file order."""
    return [(path.name, doc) for path in sorted(EXAMPLES.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def apply(cluster: LocalCluster, documents: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    """``kubectl apply -f``: create each object; returns (plural, name) of each."""
    import kubernetes.client

    applied: list[tuple[str, str]] = []
    with cluster.client() as api:
        custom = kubernetes.client.CustomObjectsApi(api)
        for source, doc in documents:
            plural, name = PLURALS[doc["kind"]], doc["metadata"]["name"]
            try:
                custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, doc)
            except kubernetes.client.ApiException as error:
                raise DemoFailed(f"{source}: the API server refused {doc['kind']} {name}: {error.body}") from None
            say(f"{doc['kind'].lower()}.{GROUP}/{name} created")
            applied.append((plural, name))
    return applied


# ------------------------------------------------------------------------------------------- watching


def row(kind: str, obj: dict) -> str:
    """One line as `kubectl get <kind> -w` would print it (with the columns that matter here)."""
    status = obj.get("status") or {}
    name = f"{kind}/{obj['metadata']['name']}"
    phase = status.get("phase") or "-"
    extra = ""
    if kind == "finetunejob":
        progress = status.get("progress") or {}
        parts = [progress.get("summary") or ""]
        if progress.get("trainLoss") is not None:
            parts.append(f"loss {progress['trainLoss']:.3f}")
        if progress.get("evalLoss") is not None:
            parts.append(f"eval loss {progress['evalLoss']:.3f}")
        if progress.get("tokensPerSecond"):
            parts.append(f"{progress['tokensPerSecond']:.0f} tok/s")
        if progress.get("etaSeconds") is not None and phase == "Running":
            parts.append(f"eta {progress['etaSeconds']}s")
        extra = "  ".join(p for p in parts if p)
    elif kind == "dataset":
        if status.get("numSamples"):
            extra = f"{status['numSamples']} samples ({status.get('trainSamples')} train, {status.get('validationSamples')} validation)"
    elif kind == "inferenceendpoint":
        served = [a.get("name") for a in status.get("adapters") or [] if a.get("ready")]
        models = status.get("models") or []
        extra = f"serves {', '.join(models) or '-'}" + (f"  (adapters loaded: {', '.join(served)})" if served else "")
    elif kind == "evaluation":
        extra = status.get("headline") or ""
    return f"{name:<40} {phase:<12} {extra}".rstrip()


class Watcher:
    """Prints a line whenever an object's phase or progress changes, and every new Event."""

    def __init__(self, cluster: LocalCluster, objects: list[tuple[str, str]]):
        import kubernetes.client

        self.api = cluster.client()
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.objects = objects
        self.last: dict[tuple[str, str], str] = {}
        self.seen_events: set[str] = set()
        self.started = time.monotonic()

    def poll(self) -> dict[tuple[str, str], dict]:
        current: dict[tuple[str, str], dict] = {}
        for plural, name in self.objects:
            obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, name)
            current[(plural, name)] = obj
            line = row(plural[:-1], obj)
            if self.last.get((plural, name)) != line:
                self.last[(plural, name)] = line
                say(f"[{time.monotonic() - self.started:5.0f}s] {line}")
        events = sorted(self.core.list_namespaced_event(NAMESPACE).items,
                        key=lambda e: (str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp or ""), e.metadata.name))
        for event in events:
            if event.metadata.uid in self.seen_events:
                continue
            self.seen_events.add(event.metadata.uid)
            involved = event.involved_object
            if involved is None or involved.kind not in PLURALS:
                continue
            say(f"[{time.monotonic() - self.started:5.0f}s]   event  {involved.kind}/{involved.name}  {event.type}  "
                f"{event.reason}: {event.message}")
        return current

    def until(self, done: Callable[[dict[tuple[str, str], dict]], bool], timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            current = self.poll()
            failed = [f"{plural[:-1]}/{name}: {(obj.get('status') or {}).get('message')}" for (plural, name), obj in current.items()
                      if (obj.get("status") or {}).get("phase") in ("Failed", "Invalid", "Cancelled")]
            if failed:
                raise DemoFailed("; ".join(failed))
            if done(current):
                return current
            if time.monotonic() > deadline:
                raise DemoFailed(f"{what} did not happen within {timeout:.0f} s")
            time.sleep(1)

    def close(self) -> None:
        self.api.close()


def phase_of(current: dict, plural: str, name: str) -> str | None:
    return (current[(plural, name)].get("status") or {}).get("phase")


# ------------------------------------------------------------------------------------------- the end


def service_address(cluster: LocalCluster, service: str) -> str:
    import kubernetes.client

    with cluster.client() as api:
        svc = kubernetes.client.CoreV1Api(api).read_namespaced_service(service, NAMESPACE)
    address = (svc.metadata.annotations or {}).get("local.finetune.dev/address")
    if not address:
        raise DemoFailed(f"Service {service} has no local address")
    return address


def ask(address: str, api_key: str, model: str, ticket: str) -> str:
    import openai

    client = openai.OpenAI(base_url=f"http://{address}/v1", api_key=api_key, max_retries=2, timeout=30)
    answer = client.chat.completions.create(model=model, temperature=0, max_tokens=8, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket}])
    return answer.choices[0].message.content or ""


def print_results(cluster: LocalCluster, evaluation: dict, address: str, api_key: str) -> None:
    from finetune_operator.cli import format_evaluation

    samples = evaluation["status"].get("samples")
    step(f"Base model versus fine-tuned, on {samples} held-out tickets  (finetune evaluation show router-vs-base)")
    say(format_evaluation(evaluation))
    scores = {(s["model"], s["grader"]): s for s in evaluation["status"].get("scores") or []}
    base, tuned = scores.get(("base", "exact_match")), scores.get(("fine-tuned", "exact_match"))
    if not base or not tuned or tuned["mean"] - base["mean"] < 0.5:
        raise DemoFailed(f"the fine-tuned model is not clearly better than its base: {base} vs {tuned}")
    passed = next((c for c in evaluation["status"].get("conditions") or [] if c["type"] == "Passed"), {})
    say(f"Passed: {passed.get('status')} ({passed.get('message', '')})")

    step("Calling the endpoint with the official openai client")
    for ticket in ("Hello, the courier left my parcel at the wrong door yesterday.",
                   "My card was charged but the invoice shows nothing. Thanks."):
        say(f"ticket: {ticket!r}")
        say(f"  model tiny-support  (base)        -> {ask(address, api_key, 'tiny-support', ticket)!r}")
        say(f"  model ticket-router (fine-tuned)  -> {ask(address, api_key, 'ticket-router', ticket)!r}")


def print_instructions(cluster: LocalCluster, address: str, api_key_file: Path, keep: bool, console_url: str | None = None) -> None:
    kubeconfig = cluster.kubeconfig
    step("Try it yourself" if keep else "Next steps")
    if console_url:
        say(f"Web console: {console_url}   (the job's loss curve, the evaluation side by side, a playground)")
    if not keep:
        say("Run `make demo KEEP=1` to keep everything running after the table, then, in another shell:")
    say(f"""
  export KUBECONFIG={kubeconfig}     # the context's namespace is {NAMESPACE}
  export PATH={Path(sys.executable).parent}:$PATH
  finetune jobs list
  finetune jobs watch ticket-router
  finetune jobs events ticket-router
  finetune jobs download ticket-router -d ticket-router-adapter     # sha256 verified; loads with peft
  finetune chat support --model ticket-router --system "{SYSTEM}" "Hey team, the package came damaged yesterday."
  finetune evaluations show router-vs-base --samples 5

# the downloaded adapter in plain transformers and peft (the demo's base model is in {cluster.work_dir / "tiny-support"})
python - <<'PY'
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{cluster.work_dir / "tiny-support"}")
tokenizer = AutoTokenizer.from_pretrained("{cluster.work_dir / "tiny-support"}")
model = PeftModel.from_pretrained(base, "ticket-router-adapter")
prompt = tokenizer.apply_chat_template([{{"role": "system", "content": "{SYSTEM}"}},
    {{"role": "user", "content": "My card was charged twice."}}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**prompt, max_new_tokens=4, do_sample=False)[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True))
PY

  kubectl get finetunejobs,datasets,inferenceendpoints,evaluations -n {NAMESPACE}
  kubectl describe finetunejob ticket-router -n {NAMESPACE}
  kubectl get events -n {NAMESPACE} --sort-by=.lastTimestamp

  # the OpenAI-compatible API (the key is in {api_key_file})
  curl -s http://{address}/v1/models -H "Authorization: Bearer $(cat {api_key_file})"
  curl -s http://{address}/v1/chat/completions -H "Authorization: Bearer $(cat {api_key_file})" \\
       -H 'Content-Type: application/json' -d '{{"model": "ticket-router", "temperature": 0, "max_tokens": 8, "messages": [
         {{"role": "system", "content": "{SYSTEM}"}},
         {{"role": "user", "content": "Hey team, the package came damaged yesterday."}}]}}'

# the official openai client
python - <<'PY'
import openai
client = openai.OpenAI(base_url="http://{address}/v1", api_key=open("{api_key_file}").read().strip())
answer = client.chat.completions.create(model="ticket-router", temperature=0, max_tokens=8, messages=[
    {{"role": "system", "content": "{SYSTEM}"}},
    {{"role": "user", "content": "Hello, reset my password this morning. Thanks."}}])
print(answer.choices[0].message.content)
PY

On a real GPU cluster (docs/install.md):
  helm install finetune-operator charts/finetune-operator -n finetune-system --create-namespace \\
       --set storage.endpoint=s3.example.com:443   # and a Secret finetune-storage with accessKey, secretKey
  finetune dataset create support-tickets --file tickets.jsonl --validation-split 0.1
  kubectl apply -f deploy/examples/demo/      # with baseModel.uri: hf://... and resources.gpus: 1
  kubectl get finetunejobs -w
""".rstrip())


# ------------------------------------------------------------------------------------------- main


@dataclass
class DemoResult:
    """The objects as they ended, and the (stopped) cluster, for the end-to-end tests to inspect."""

    objects: dict[tuple[str, str], dict]
    cluster: LocalCluster
    seconds: float


def run(work_dir: Path, keep: bool = False, timeout: float = 600, assets: Path | None = None) -> DemoResult:
    """The demo (raises DemoFailed when a step does not happen in time or an object fails); on a real control
    plane when ``assets`` names the envtest folder."""
    started = time.monotonic()
    work_dir.mkdir(parents=True, exist_ok=True)
    step("Starting a cluster on this machine")
    cluster = start_cluster(work_dir, assets)
    with cluster.stack:
        step("Making the base model, the data and the endpoint's API key")
        prepare_inputs(cluster)
        api_key, api_key_file = cluster.api_key, work_dir / "api-key"

        step(f"kubectl apply -f deploy/examples/demo/   (namespace {NAMESPACE})")
        objects = apply(cluster, example_documents())

        step("Watching (as `kubectl get -w` and `kubectl get events -w` would show it)")
        watcher = Watcher(cluster, objects)
        try:
            remaining = max(60.0, timeout - (time.monotonic() - started))
            current = watcher.until(lambda c: phase_of(c, "evaluations", "router-vs-base") == "Completed",
                                    remaining, "the Evaluation's completion")
        finally:
            watcher.close()
        evaluation = current[("evaluations", "router-vs-base")]
        address = service_address(cluster, "support-server")
        print_results(cluster, evaluation, address, api_key)
        console_url = start_console(cluster) if keep else None
        print_instructions(cluster, address, api_key_file, keep, console_url)
        say(f"\nThe whole pipeline took {time.monotonic() - started:.0f} s.")
        if keep:
            say(f"\nEverything keeps running, the web console at {console_url}; Ctrl-C stops it.")
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
        say("Stopping the operator, the runner, the object store and the API server.")
        seconds = time.monotonic() - started
    return DemoResult(objects=current, cluster=cluster, seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_local.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".demo", help="where state and logs go (default .demo/)")
    parser.add_argument("--keep", action="store_true", help="keep everything running after the table, until Ctrl-C")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before the demo gives up (default 600)")
    parser.add_argument("--api-server", choices=("auto", "real", "project"), default="auto",
                        help="real: kube-apiserver, etcd and kube-controller-manager from $KUBEBUILDER_ASSETS; project: the "
                             "project's own API server; auto (default): real when KUBEBUILDER_ASSETS is set")
    args = parser.parse_args(argv)
    from finetune_local.controlplane import ASSETS_ENV, ControlPlaneError, assets_from_environment

    try:
        assets = None if args.api_server == "project" else assets_from_environment()
    except ControlPlaneError as error:
        parser.error(str(error))
    if args.api_server == "real" and assets is None:
        parser.error(f"--api-server real needs {ASSETS_ENV} (the envtest folder: etcd, kube-apiserver, kube-controller-manager)")
    if args.work_dir.exists():
        import shutil

        shutil.rmtree(args.work_dir)
    try:
        run(args.work_dir, keep=args.keep, timeout=args.timeout, assets=assets)
    except DemoFailed as error:
        say(f"\nThe demo failed: {error}\nLogs: {args.work_dir}/operator.log and {args.work_dir}/runner/logs/")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
