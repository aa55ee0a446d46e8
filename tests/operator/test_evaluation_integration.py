"""An Evaluation's life through the Kubernetes API: the operator in its own process, the local runner in
place of the nodes, and the REAL evaluator (`finetune-trainer evaluate`) grading a tiny model and a LoRA
adapter that learned the answers, both loaded from the object store."""

from __future__ import annotations

import io
import json
import textwrap
import time
from pathlib import Path

import pytest

from finetune_operator import cli
from tests.evaluate.conftest import CONVERSATIONS, train_memorizing_adapter
from tests.operator.test_operator_integration import finetunejob_yaml, make_dataset_ready, runner_logs

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

TINY_MODEL_URI = "s3://finetune/models/tiny"

BASE_VS_TUNED_YAML = """
apiVersion: finetune.dev/v1alpha1
kind: Evaluation
metadata:
  name: base-vs-tuned
spec:
  models:
    - name: base
      baseModel: s3://finetune/models/tiny
    - name: tuned
      fineTuneJob: support-bot
  baseline: base
  dataset: qa
  graders:
    - name: exact_match
      type: exact_match
    - name: f1
      type: f1
  generation:
    maxTokens: 12
  passCriterion:
    grader: exact_match
    minDelta: 0.2
"""

BAD_REGEX_YAML = """
apiVersion: finetune.dev/v1alpha1
kind: Evaluation
metadata:
  name: bad-regex
spec:
  models:
    - name: base
      baseModel: s3://finetune/models/tiny
  dataset: qa
  graders:
    - name: digits
      type: regex
      pattern: "([0-9]+"
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from finetune_local.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="module")
def learned_adapter(tiny_model, tmp_path_factory) -> Path:
    """A real LoRA adapter of the tiny model that answers every question of CONVERSATIONS."""
    return train_memorizing_adapter(tiny_model, CONVERSATIONS, tmp_path_factory.mktemp("adapter"))


@pytest.fixture
def store(object_store, storage_credentials):
    """The trainer's own object store client, as a user's upload script would use it."""
    from finetune_trainer.contract import StorageConfig
    from finetune_trainer.storage import ObjectStore

    return ObjectStore(StorageConfig(endpoint=object_store.endpoint, secure=False, credentials_dir=str(storage_credentials)))


def qa_dataset_ready(cluster, object_store) -> dict:
    """The questions the adapter learned, as a chat file, validated for real."""
    data = "".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS).encode()
    object_store.client().put_object("finetune", f"uploads/{cluster.namespace}/qa.jsonl", io.BytesIO(data), len(data))
    cluster.apply(
        textwrap.dedent(
            f"""
            apiVersion: finetune.dev/v1alpha1
            kind: Dataset
            metadata:
              name: qa
            spec:
              source:
                uri: s3://finetune/uploads/{cluster.namespace}/qa.jsonl
              format: chat
              minSamples: 4
            """
        )
    )
    return cluster.wait_phase("datasets", "qa", "Ready", timeout=90)


def events_eventually(cluster, name: str, predicate, timeout: float = 30) -> list[dict]:
    """The object's Events once ``predicate`` holds for them (kopf posts an Event just after the status)."""
    deadline = time.monotonic() + timeout
    events = cluster.events_for(name)
    while not predicate(events) and time.monotonic() < deadline:
        time.sleep(0.2)
        events = cluster.events_for(name)
    return events


def show(cluster, name: str, capsys) -> tuple[int, str]:
    """`finetune evaluation show NAME -n NS`, reading the Evaluation from the API with the kubeconfig."""
    capsys.readouterr()
    code = cli.main(["evaluation", "show", name, "-n", cluster.namespace, "--kubeconfig", str(cluster.kube_api.kubeconfig)])
    return code, capsys.readouterr().out


def test_a_finetuned_adapter_is_compared_with_its_base_model_and_passes(cluster, object_store, store, start_operator, runner, tiny_model, learned_adapter, capsys):
    start_operator()
    cluster.storage_secret(object_store)
    store.upload_artifact(tiny_model, TINY_MODEL_URI, kind="model")

    # The user asks before anything is ready: Pending, with the reason.
    cluster.apply(BASE_VS_TUNED_YAML)
    pending = cluster.wait_phase("evaluations", "base-vs-tuned", "Pending")
    assert pending["status"]["message"] == "Dataset qa does not exist"

    # The fine-tuning job completes (a contract-following trainer); its adapter folder then holds the
    # real adapter that learned the answers, uploaded the way the trainer uploads (manifest last).
    make_dataset_ready(cluster, object_store)
    cluster.apply(finetunejob_yaml(base=TINY_MODEL_URI))
    job = cluster.wait_phase("finetunejobs", "support-bot", "Completed", timeout=90)
    store.upload_artifact(learned_adapter, job["status"]["outputModel"]["uri"], kind="adapter", base_model=TINY_MODEL_URI)

    qa_dataset_ready(cluster, object_store)
    phases = cluster.phases_until("evaluations", "base-vs-tuned", {"Completed", "Failed"}, timeout=150)
    done = cluster.get("evaluations", "base-vs-tuned")
    status = done["status"]
    assert phases[-1] == "Completed", (phases, status, runner_logs(runner))
    assert "Running" in phases

    scores = {(s["model"], s["grader"]): s for s in status["scores"]}
    assert set(scores) == {(m, g) for m in ("base", "tuned") for g in ("exact_match", "f1")}
    tuned, base = scores[("tuned", "exact_match")], scores[("base", "exact_match")]
    assert tuned["mean"] == 1.0 and tuned["n"] == 5 and tuned["errors"] == 0
    assert base["mean"] < 1.0 and "delta" not in base
    assert tuned["delta"] == pytest.approx(1.0 - base["mean"])
    assert status["samples"] == 5
    assert status["headline"] == f"exact_match 1.00 ({tuned['delta']:+.2f})"
    assert status["resultsUri"] == f"s3://finetune/evaluations/{cluster.namespace}/base-vs-tuned-{done['metadata']['uid']}/results.jsonl"
    results = object_store.client().get_object("finetune", status["resultsUri"].split("/", 3)[3]).read().decode().splitlines()
    assert len(results) == 10 and {json.loads(line)["model"] for line in results} == {"base", "tuned"}
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Passed"]["status"], conditions["Passed"]["reason"]) == ("True", "CriterionMet")
    assert conditions["Succeeded"]["reason"] == "Scored"

    # The Job the operator made: the trainer image's evaluate command, deterministic name, no API access.
    eval_job = cluster.batch.read_namespaced_job("base-vs-tuned-eval", cluster.namespace)
    pod_spec = eval_job.spec.template.spec
    assert pod_spec.containers[0].command == ["finetune-trainer", "evaluate", "--config", "/etc/finetune/config.json"]
    assert pod_spec.automount_service_account_token is False

    expected = {"Pending", "Running", "Completed", "Passed"}
    events = events_eventually(cluster, "base-vs-tuned", lambda evs: expected <= {e["reason"] for e in evs})
    assert expected <= {e["reason"] for e in events}, events
    assert cluster.kubectl("get", "evaluations").stdout.count(status["headline"]) == 1

    code, out = show(cluster, "base-vs-tuned", capsys)
    assert code == 0
    assert "model           | exact_match" in out
    assert "base (baseline) |" in out and f"1.000 [1.000, 1.000] {tuned['delta']:+.3f}" in out
    assert "5 samples per model" in out and "Pass criterion: PASSED (CriterionMet)" in out


def test_a_regex_that_does_not_compile_fails_with_the_evaluators_reason(cluster, object_store, start_operator, runner, capsys):
    start_operator()
    cluster.storage_secret(object_store)
    qa_dataset_ready(cluster, object_store)
    cluster.apply(BAD_REGEX_YAML)
    failed = cluster.wait_phase("evaluations", "bad-regex", "Failed", timeout=90)
    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "InvalidRegex", (failed["status"], runner_logs(runner))
    assert "grader 'digits': pattern '([0-9]+' does not compile" in condition["message"]
    assert "scores" not in failed["status"] and "headline" not in failed["status"]
    job = cluster.batch.read_namespaced_job("bad-regex-eval", cluster.namespace)
    assert (job.status.failed or 0) == 1, "a bad config is not retried"
    def warned(events):
        return any(e["type"] == "Warning" and "InvalidRegex" in e["message"] for e in events)

    assert warned(events_eventually(cluster, "bad-regex", warned))

    code, out = show(cluster, "bad-regex", capsys)
    assert code == 1 and "Evaluation failed: InvalidRegex" in out


ENDPOINT_API_KEY = "sk-eval-" + "5d2a" * 6

ENDPOINT_YAML = """
apiVersion: finetune.dev/v1alpha1
kind: InferenceEndpoint
metadata:
  name: qa-server
spec:
  baseModel:
    uri: s3://finetune/models/tiny
  adapters:
    - name: qa-tuned
      uri: s3://finetune/models/adapters/qa-tuned
  apiKeySecretRef:
    name: qa-server-key
"""

ENDPOINT_EVALUATION_YAML = """
apiVersion: finetune.dev/v1alpha1
kind: Evaluation
metadata:
  name: served
spec:
  models:
    - name: base
      inferenceEndpoint: qa-server
    - name: adapter
      inferenceEndpoint: qa-server
      model: qa-tuned
  baseline: base
  dataset: qa
  graders:
    - name: exact_match
      type: exact_match
  generation:
    maxTokens: 12
"""


def test_the_models_of_an_inference_endpoint_are_graded_through_its_api_with_its_key(cluster, object_store, store, start_operator, runner, tiny_model, learned_adapter, capsys):
    start_operator()
    cluster.storage_secret(object_store)
    cluster.core.create_namespaced_secret(cluster.namespace, {"metadata": {"name": "qa-server-key", "labels": {"finetune.dev/allow-use": "true"}}, "stringData": {"apiKey": ENDPOINT_API_KEY}})
    store.upload_artifact(tiny_model, TINY_MODEL_URI, kind="model")
    store.upload_artifact(learned_adapter, "s3://finetune/models/adapters/qa-tuned", kind="adapter", base_model=TINY_MODEL_URI)
    qa_dataset_ready(cluster, object_store)

    # The Evaluation waits for the endpoint, then asks it through the Service with the endpoint's key.
    cluster.apply(ENDPOINT_EVALUATION_YAML)
    pending = cluster.wait_phase("evaluations", "served", "Pending")
    assert pending["status"]["message"] == "model base: InferenceEndpoint qa-server does not exist"
    cluster.apply(ENDPOINT_YAML)
    phases = cluster.phases_until("evaluations", "served", {"Completed", "Failed"}, timeout=150)
    status = cluster.get("evaluations", "served")["status"]
    assert phases[-1] == "Completed", (phases, status, runner_logs(runner))

    scores = {s["model"]: s for s in status["scores"]}
    assert scores["base"]["errors"] == 0 and scores["adapter"]["errors"] == 0, "every request was answered: the key was sent"
    assert scores["adapter"]["mean"] == 1.0 and scores["base"]["mean"] < 1.0
    assert scores["adapter"]["delta"] == pytest.approx(1.0 - scores["base"]["mean"])

    # The key reached the pod as a file, never as text in the config or the Job.
    configmap = cluster.core.read_namespaced_config_map("served-eval", cluster.namespace)
    assert ENDPOINT_API_KEY not in configmap.data["config.json"]
    assert '"endpoint": "http://qa-server-server.' in configmap.data["config.json"]
    code, out = show(cluster, "served", capsys)
    assert code == 0 and "adapter " in out and ENDPOINT_API_KEY not in out
