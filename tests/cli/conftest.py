"""One real pipeline for the CLI and console tests, made once for this folder in a namespace of its own (and gone
before other folders' tests start operators that watch every namespace): the
operator as it runs in production, the local runner in place of the nodes with the REAL trainer, server and
evaluator, SeaweedFS, and the objects a user applies (a Dataset, a FineTuneJob trained on the tiny model, an
InferenceEndpoint serving base and adapter behind an API key, an Evaluation of one against the other).

The trainer runs through a shim that holds jobs named ``held-*`` at step 2 (the trainer's own
``FINETUNE_HOLD_AT_STEP`` drill), so a test can find a job Running for as long as it needs one.

``finetune(...)`` runs the installed program as a user does, with a kubeconfig whose context namespace is the
pipeline's and no object store settings: the CLI finds the store the way it does on a cluster.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import delete_namespace, make_namespace
from tests.operator.conftest import OperatorProcess, operator_env

BIN = Path(sys.executable).parent
TINY_MODEL_URI = "s3://finetune/models/cli-tiny"
DATA_KEY = "uploads/cli/support-tickets.jsonl"
HELD_STEP = 2

PIPELINE_YAML = """
apiVersion: finetune.dev/v1alpha1
kind: Dataset
metadata:
  name: support-tickets
spec:
  source:
    uri: s3://finetune/uploads/cli/support-tickets.jsonl
  format: chat
  validation:
    fraction: 0.2
---
apiVersion: finetune.dev/v1alpha1
kind: FineTuneJob
metadata:
  name: ticket-router
spec:
  baseModel:
    uri: s3://finetune/models/cli-tiny
  dataset: support-tickets
  suffix: router
  hyperparameters:
    epochs: 2
    learningRate: 0.003
    batchSize: 8
    maxSeqLength: 256
    packing: false
    nCheckpoints: 2
    nEvals: 2
  resources:
    gpus: 0
    cpu: "1"
    memory: 2Gi
---
apiVersion: finetune.dev/v1alpha1
kind: InferenceEndpoint
metadata:
  name: support
spec:
  baseModel:
    uri: s3://finetune/models/cli-tiny
  servedModelName: tiny
  adapters:
    - name: ticket-router
      fineTuneJob: ticket-router
  runtime: builtin
  resources:
    gpus: 0
    cpu: "1"
    memory: 2Gi
  apiKeySecretRef:
    name: support-api-key
  maxModelLen: 512
---
apiVersion: finetune.dev/v1alpha1
kind: Evaluation
metadata:
  name: router-vs-base
spec:
  models:
    - name: base
      inferenceEndpoint: support
      model: tiny
    - name: fine-tuned
      inferenceEndpoint: support
      model: ticket-router
  baseline: base
  dataset: support-tickets
  maxSamples: 12
  graders:
    - name: exact_match
      type: exact_match
    - name: f1
      type: f1
  generation:
    maxTokens: 8
"""


@dataclass
class Pipeline:
    """What the session made, and how to act on it as a user and as the test."""

    kube_api: Any
    object_store: Any
    namespace: str
    kubeconfig: Path
    """A kubeconfig whose context's namespace is ``namespace`` (cluster-admin on a real control plane)."""
    tiny_model: Path
    api_key: str
    runner: Any
    operator: OperatorProcess
    work: Path

    def finetune(self, *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        """``finetune ARGS`` as a user runs it: KUBECONFIG set, no object store settings."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
        environment.update({"KUBECONFIG": str(self.kubeconfig), "COLUMNS": "160", **(env or {})})
        return subprocess.run([str(BIN / "finetune"), *args], capture_output=True, text=True, timeout=timeout, env=environment,
                              input=input, cwd=self.work)  # fmt: skip

    def client(self) -> Any:
        return self.kube_api.client()

    def get(self, plural: str, name: str) -> dict:
        import kubernetes.client

        with self.client() as api:
            return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object("finetune.dev", "v1alpha1", self.namespace, plural, name)

    def apply(self, text: str) -> None:
        import kubernetes.client

        with self.client() as api:
            custom = kubernetes.client.CustomObjectsApi(api)
            for doc in yaml.safe_load_all(text):
                if doc:
                    plural = {"Dataset": "datasets", "FineTuneJob": "finetunejobs", "InferenceEndpoint": "inferenceendpoints",
                              "Evaluation": "evaluations"}[doc["kind"]]  # fmt: skip
                    custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", self.namespace, plural, doc)

    def wait_for(self, plural: str, name: str, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """The object once ``predicate`` holds (polling the API; a deadline only bounds a broken run)."""
        deadline = time.monotonic() + timeout
        obj: dict = {}
        while time.monotonic() < deadline:
            obj = self.get(plural, name)
            if predicate(obj):
                return obj
            failed = (obj.get("status") or {}).get("phase") in ("Failed", "Invalid") and "Failed" not in what
            if failed:
                break
            time.sleep(0.3)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted((self.runner.work_dir / "logs").glob("*")))
        raise AssertionError(f"{plural}/{name} {what}: not so; status {json.dumps(obj.get('status'))[:2500]}\n"
                             f"operator log:\n{self.operator.log()[-2000:]}\n{logs[-6000:]}")  # fmt: skip

    def phase(self, plural: str, name: str, phase: str, timeout: float = 240) -> dict:
        return self.wait_for(plural, name, lambda o: (o.get("status") or {}).get("phase") == phase, timeout, f"to be {phase}")

    def store_client(self) -> Any:
        return self.object_store.client()


def trainer_shim(folder: Path) -> Path:
    """``finetune-trainer`` that holds ``train`` of a job named held-* at step HELD_STEP, else runs as is."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "finetune-trainer"
    shim.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = train ]; then
          for arg in "$@"; do
            case "$arg" in --config=*) config="${{arg#--config=}}";; esac
          done
          [ -z "$config" ] && config="$3"
          if grep -q '"jobName": *"held-' "$config" 2>/dev/null; then
            export FINETUNE_HOLD_AT_STEP={HELD_STEP}
          fi
        fi
        exec "{BIN / 'finetune-trainer'}" "$@"
        """))
    shim.chmod(0o755)
    return folder


def ticket_file() -> bytes:
    from finetune_local.demo_data import examples

    return "".join(json.dumps(e) + "\n" for e in examples(120, seed=7)).encode()


@pytest.fixture(scope="package")
def pipeline(kube_api, object_store, tmp_path_factory) -> Iterator[Pipeline]:
    import kubernetes.client

    from finetune_local.runner import LocalRunner
    from finetune_local.tiny_model import make_tiny_model
    from finetune_trainer.contract import StorageConfig
    from finetune_trainer.storage import ObjectStore

    work = tmp_path_factory.mktemp("cli-pipeline")
    credentials = work / "operator-credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "accessKey").write_text(object_store.access_key)
    (credentials / "secretKey").write_text(object_store.secret_key)

    from finetune_local.demo_data import corpus

    # the demo's base model: a vocabulary learned from tickets, so a ticket fits in maxSeqLength
    tiny = make_tiny_model(work / "tiny-model", seed=0, init_std=0.2, tokenizer_corpus=corpus(2000, seed=1), vocab_size=1024)
    store = ObjectStore(StorageConfig(endpoint=object_store.endpoint, secure=False, credentials_dir=str(credentials)))
    store.upload_artifact(tiny, TINY_MODEL_URI, kind="model")
    data = ticket_file()
    object_store.client().put_object("finetune", DATA_KEY, io.BytesIO(data), len(data))

    api_key = secrets.token_hex(16)
    with kube_api.client() as api:
        namespace = make_namespace(api, "cli")
    try:
        with kube_api.client() as api:
            core = kubernetes.client.CoreV1Api(api)
            core.create_namespaced_secret(namespace, {"metadata": {"name": "finetune-storage"},
                                                      "stringData": {"accessKey": object_store.access_key, "secretKey": object_store.secret_key}})
            core.create_namespaced_secret(namespace, {"metadata": {"name": "support-api-key"}, "stringData": {"apiKey": api_key}})
        kubeconfig = kube_api.server.write_kubeconfig(work / "kubeconfig", namespace=namespace)
        env = operator_env(kube_api, object_store, credentials, FINETUNE_NAMESPACE=namespace, FINETUNE_PROGRESS_INTERVAL_SECONDS="1",
                           FINETUNE_DEFAULT_MEMORY="2Gi")  # fmt: skip
        operator = OperatorProcess(env=env, log_path=work / "operator.log", metrics_port=int(env["FINETUNE_METRICS_PORT"]),
                                   health_port=int(env["FINETUNE_HEALTH_PORT"]))  # fmt: skip
        runner = LocalRunner(kube_api.kubeconfig, namespace=namespace, work_dir=work / "runner", grace_period_cap=10,
                             extra_path=[str(trainer_shim(work / "shim"))], kubelet_only=kube_api.real)  # fmt: skip
        runner.start()
        try:
            operator.start()
            try:
                made = Pipeline(kube_api, object_store, namespace, kubeconfig, tiny, api_key, runner, operator, work)
                made.apply(PIPELINE_YAML)
                made.phase("finetunejobs", "ticket-router", "Completed")
                made.phase("evaluations", "router-vs-base", "Completed")
                yield made
            finally:
                operator.stop()
        finally:
            runner.stop()
    finally:
        with kube_api.client() as api:
            delete_namespace(api, namespace)
