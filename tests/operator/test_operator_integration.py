"""A FineTuneJob's life through the Kubernetes API: the operator runs as in production (its own
process, kopf, real HTTP and watches), the local runner runs the Jobs it makes, and a trainer that
follows the contract stands in for the real one (tests/trainer covers that)."""

from __future__ import annotations

import io
import json
import re
import textwrap
import time

import pytest

pytestmark = pytest.mark.timeout(300)

DATASET_YAML = """
apiVersion: finetune.dev/v1alpha1
kind: Dataset
metadata:
  name: support-chats
spec:
  source:
    uri: s3://finetune/uploads/{namespace}/support-chats.jsonl
  format: chat
"""


def finetunejob_yaml(name: str = "support-bot", base: str = "s3://finetune/models/tiny", **spec_lines: str) -> str:
    extra = "".join(f"  {k}: {v}\n" for k, v in spec_lines.items())
    return textwrap.dedent(
        f"""
        apiVersion: finetune.dev/v1alpha1
        kind: FineTuneJob
        metadata:
          name: {name}
        spec:
          baseModel:
            uri: {base}
          dataset: support-chats
          suffix: support
          resources:
            gpus: 0
          hyperparameters:
            epochs: 1
            nCheckpoints: 2
        """
    ) + extra


def runner_logs(runner) -> str:
    """The containers' output, to explain a failure."""
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted((runner.work_dir / "logs").rglob("*")) if p.is_file())


def chat_jsonl(n: int = 24) -> bytes:
    lines = []
    for i in range(n):
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": f"My order {i} has not arrived."},
            {"role": "assistant", "content": f"Sorry about order {i}; I have sent a replacement."},
        ]}))
    return ("\n".join(lines) + "\n").encode()


def make_dataset_ready(cluster, object_store, timeout: float = 90) -> dict:
    """A chat file uploaded and its Dataset validated for real (the validation Job runs the validator)."""
    data = chat_jsonl()
    object_store.client().put_object("finetune", f"uploads/{cluster.namespace}/support-chats.jsonl", io.BytesIO(data), len(data))
    cluster.apply(DATASET_YAML.format(namespace=cluster.namespace))
    return cluster.wait_phase("datasets", "support-chats", "Ready", timeout=timeout)


def test_finetunejob_from_yaml_runs_pending_to_completed(cluster, object_store, start_operator, runner):
    operator = start_operator()
    cluster.storage_secret(object_store)
    cluster.apply(finetunejob_yaml())
    # No Dataset yet: Pending with the reason, and no Job.
    job = cluster.wait_phase("finetunejobs", "support-bot", "Pending")
    assert "support-chats does not exist" in job["status"]["message"]
    assert cluster.trainer_jobs() == []

    make_dataset_ready(cluster, object_store)
    phases = cluster.phases_until("finetunejobs", "support-bot", {"Completed", "Failed"})
    assert phases[-1] == "Completed", (phases, cluster.get("finetunejobs", "support-bot")["status"], runner_logs(runner))
    done = cluster.get("finetunejobs", "support-bot")
    status = done["status"]
    ns = cluster.namespace
    assert status["outputModel"]["name"] == f"{ns}/tiny:support:support-bot"
    assert status["outputModel"]["uri"].endswith("/model")
    assert status["progress"]["percent"] == 100 and status["progress"]["step"] == 6
    assert [c["step"] for c in status["checkpoints"]] == [3]
    assert status["observedGeneration"] == done["metadata"]["generation"]
    assert status["startTime"] and status["completionTime"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == "True" and conditions["Succeeded"]["reason"] == "ModelUploaded"

    # The Job the operator made, as the user would inspect it.
    [trainer_job] = cluster.trainer_jobs()
    assert trainer_job.metadata.name == "support-bot-train"
    assert trainer_job.metadata.owner_references[0].name == "support-bot"
    pod_spec = trainer_job.spec.template.spec
    assert pod_spec.automount_service_account_token is False
    assert pod_spec.containers[0].command[:2] == ["finetune-trainer", "train"]
    assert trainer_job.spec.pod_failure_policy.rules[0].action == "FailJob"

    # The event log reads like the hosted services'.
    messages = [e["message"] for e in cluster.events_for("support-bot")]
    assert "Trainer started" in messages and "Training started" not in messages, "the operator's words, not the trainer's"
    assert any(m.startswith("Fine-tuning job completed") for m in messages)

    # `kubectl get finetunejobs` shows phase, progress and model.
    table = cluster.kubectl("get", "finetunejobs").stdout
    assert "Completed" in table and "100% (6/6)" in table and f"{ns}/tiny:support:support-bot" in table

    metrics = operator.metrics_once('finetune_objects{kind="FineTuneJob",phase="Completed"}', 'kind="FineTuneJob",to_phase="Completed"}')
    assert "finetune_reconcile_duration_seconds_bucket" in metrics
    # The path it took, each step once (polling the phase could miss a short one; the counters cannot).
    transitions = {
        (labels["from_phase"], labels["to_phase"]): value
        for line in metrics.splitlines() if line.startswith("finetune_phase_transitions_total{")
        for labels, value in [(dict(re.findall(r'(\w+)="([^"]*)"', line)), float(line.rsplit(" ", 1)[1]))]
        if labels["kind"] == "FineTuneJob"
    }
    path = ["None", "Pending", "Queued", "Running"]
    for before, after in zip(path, path[1:]):
        assert transitions.get((before, after)) == 1.0, transitions
    assert sum(v for (_, to), v in transitions.items() if to == "Completed") == 1.0, transitions
    assert all(v == 1.0 for v in transitions.values()), transitions


def test_bad_input_exit_code_fails_at_once_with_the_trainers_message(cluster, object_store, start_operator, runner):
    start_operator()
    cluster.storage_secret(object_store)
    make_dataset_ready(cluster, object_store)
    cluster.apply(finetunejob_yaml(name="bad", base="s3://finetune/models/fail-bad-input"))
    failed = cluster.wait_phase("finetunejobs", "bad", "Failed")
    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "InvalidDataset"
    assert "unknown role 'bot'" in condition["message"]
    [job] = cluster.trainer_jobs()
    assert (job.status.failed or 0) == 1, "a bad-input exit is not retried"
    assert any(e["type"] == "Warning" and "unknown role" in e["message"] for e in cluster.events_for("bad"))


def test_a_crash_is_retried_and_the_job_still_completes(cluster, object_store, start_operator, runner):
    start_operator()
    cluster.storage_secret(object_store)
    make_dataset_ready(cluster, object_store)
    cluster.apply(finetunejob_yaml(name="flaky", base="s3://finetune/models/crash-once"))
    done = cluster.wait_phase("finetunejobs", "flaky", "Completed", timeout=90)
    assert done["status"]["retries"] == 1


def test_kueue_held_job_shows_queued_until_admitted(cluster, object_store, start_operator, runner):
    start_operator()
    cluster.storage_secret(object_store)
    make_dataset_ready(cluster, object_store)
    cluster.apply(finetunejob_yaml(name="queued", queueName="gpu-queue"))
    queued = cluster.wait_phase("finetunejobs", "queued", "Queued")
    assert queued["status"]["queue"]["name"] == "gpu-queue"
    queued = cluster.wait_for("finetunejobs", "queued", lambda o: o["status"].get("queue", {}).get("position") == 1, timeout=30, what="to show its queue position")
    time.sleep(2)  # nothing runs while Kueue holds the Job
    [job] = cluster.trainer_jobs()
    assert job.spec.suspend is True and job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert cluster.get("finetunejobs", "queued")["status"]["phase"] == "Queued"
    # Kueue admits the workload by unsuspending the Job.
    cluster.batch.patch_namespaced_job(job.metadata.name, cluster.namespace, {"spec": {"suspend": False}})
    done = cluster.wait_phase("finetunejobs", "queued", "Completed", timeout=90)
    assert "queue" not in done["status"] or done["status"]["queue"] is None


def test_cancel_ends_cancelled_and_stops_the_trainer(cluster, object_store, start_operator, runner):
    start_operator()
    cluster.storage_secret(object_store)
    make_dataset_ready(cluster, object_store)
    cluster.apply(finetunejob_yaml(name="cancel-me", base="s3://finetune/models/hold"))
    cluster.wait_for("finetunejobs", "cancel-me", lambda o: (o.get("status", {}).get("checkpoints") or []) != [], timeout=60, what="to be holding mid-run")
    cluster.patch_spec("finetunejobs", "cancel-me", {"cancel": True})
    cancelled = cluster.wait_phase("finetunejobs", "cancel-me", "Cancelled")
    assert cancelled["status"]["message"] == "Fine-tuning job cancelled"
    deadline = time.monotonic() + 30
    while cluster.trainer_jobs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.trainer_jobs() == []
    # Cancel cannot be undone (a CEL rule on the CRD).
    result = cluster.kubectl("patch", "finetunejob", "cancel-me", "--type=merge", "-p", '{"spec":{"cancel":false}}', check=False)
    assert result.returncode != 0 and "cancel cannot be undone" in result.stderr


def test_suspend_and_resume_continue_from_the_last_checkpoint(cluster, object_store, start_operator, runner, monkeypatch):
    start_operator()
    cluster.storage_secret(object_store)
    make_dataset_ready(cluster, object_store)
    cluster.apply(finetunejob_yaml(name="pausable", base="s3://finetune/models/hold", **{"hyperparameters": "{epochs: 1, nCheckpoints: 3}"}))
    cluster.wait_for("finetunejobs", "pausable", lambda o: (o.get("status", {}).get("checkpoints") or []) != [], timeout=60, what="to save a checkpoint")
    cluster.patch_spec("finetunejobs", "pausable", {"suspend": True})
    suspended = cluster.wait_phase("finetunejobs", "pausable", "Suspended")
    saved = max(c["step"] for c in suspended["status"]["checkpoints"])
    [job] = cluster.trainer_jobs()
    assert job.spec.suspend is True
    cluster.patch_spec("finetunejobs", "pausable", {"suspend": False})
    done = cluster.wait_phase("finetunejobs", "pausable", "Completed", timeout=90)
    assert done["status"]["progress"]["step"] == 6
    assert any(e["reason"] == "Resumed" for e in cluster.events_for("pausable"))
    events = object_store.client().get_object("finetune", done["status"]["artifactsUri"].split("/", 3)[3] + "/events.jsonl").read().decode()
    assert f"Resuming from checkpoint at step {saved}" in events or "Resuming from checkpoint" in events


def test_operator_killed_mid_job_makes_no_second_job_and_loses_no_status(cluster, object_store, start_operator, runner):
    operator = start_operator()
    cluster.storage_secret(object_store)
    make_dataset_ready(cluster, object_store)
    cluster.apply(finetunejob_yaml(name="survivor", base="s3://finetune/models/slow"))
    running = cluster.wait_phase("finetunejobs", "survivor", "Running", timeout=60)
    operator.kill()
    time.sleep(1)
    start_operator()
    done = cluster.wait_phase("finetunejobs", "survivor", "Completed", timeout=90)
    assert [j.metadata.name for j in cluster.trainer_jobs()] == ["survivor-train"]
    configmaps = [c.metadata.name for c in cluster.core.list_namespaced_config_map(cluster.namespace).items if c.metadata.name.startswith("survivor")]
    assert configmaps == ["survivor-train"]
    assert done["status"]["startTime"] == running["status"]["startTime"], "status survives the operator's restart"


def test_missing_storage_secret_keeps_the_job_pending_with_the_reason(cluster, object_store, start_operator, runner):
    start_operator()
    cluster.storage_secret(object_store)
    make_dataset_ready(cluster, object_store)
    cluster.core.delete_namespaced_secret("finetune-storage", cluster.namespace)
    cluster.apply(finetunejob_yaml(name="no-secret"))
    pending = cluster.wait_for(
        "finetunejobs", "no-secret", lambda o: "Secret finetune-storage (this namespace's object store key) does not exist"
        in o.get("status", {}).get("message", ""), timeout=60,
    )  # fmt: skip
    assert pending["status"]["phase"] == "Pending"
    assert "storage_keys grant --namespace" in pending["status"]["message"], "what the admin runs"
    assert cluster.trainer_jobs() == [], "with scoped keys the Secret is checked before any pod"


def test_invalid_specs_never_get_a_job(cluster, object_store, start_operator, runner):
    start_operator()
    cluster.storage_secret(object_store)
    make_dataset_ready(cluster, object_store)
    # What the schema can check, the API server rejects with the field path.
    result = cluster.kubectl("apply", "-f", "-", input=finetunejob_yaml(name="zero-epochs").replace("epochs: 1", "epochs: 0"), check=False)
    assert result.returncode != 0 and "spec.hyperparameters.epochs" in result.stderr
    # What only the operator knows (its GPU types) ends Failed with the field path, an Event, no Job.
    cluster.apply(finetunejob_yaml(name="odd-gpu").replace("gpus: 0", "gpus: 1\n    gpuType: tpu-v9"))
    failed = cluster.wait_phase("finetunejobs", "odd-gpu", "Failed")
    assert "spec.resources.gpuType: unknown GPU type 'tpu-v9'" in failed["status"]["message"]
    assert next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")["reason"] == "InvalidSpec"
    assert any(e["type"] == "Warning" for e in cluster.events_for("odd-gpu"))
    assert cluster.trainer_jobs() == []


def test_deleting_the_namespace_is_no_error_and_nothing_is_made_again(kube_api, cluster, object_store, start_operator, runner):
    """The namespace controller deletes a running job's Job and pods before the FineTuneJob; the operator
    must neither fight it (nothing can be created in a terminating namespace) nor report it as an error."""
    import kubernetes

    operator = start_operator()
    cluster.storage_secret(object_store)
    make_dataset_ready(cluster, object_store)
    cluster.apply(finetunejob_yaml(name="doomed", base="s3://finetune/models/slow"))
    cluster.wait_phase("finetunejobs", "doomed", "Running", timeout=60)
    before = len(operator.log().splitlines())
    cluster.core.delete_namespace(cluster.namespace)

    def gone() -> bool:
        try:
            cluster.core.read_namespace(cluster.namespace)
        except kubernetes.client.ApiException as error:
            return error.status == 404
        return False

    deadline = time.monotonic() + 180
    while not gone():
        assert time.monotonic() < deadline, "the namespace was not deleted"
        time.sleep(0.5)
    after = operator.log().splitlines()[before:]
    about_it = [line for line in after if cluster.namespace in line]
    assert not [line for line in about_it if "ERROR" in line or "failed permanently" in line or "Traceback" in line], "\n".join(about_it)
    retries = [line for line in about_it if "will retry" in line.lower() or "retrying" in line.lower()]
    assert len(retries) <= 3, "\n".join(retries)
