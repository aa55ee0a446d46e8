"""The FineTuneJob lifecycle decided by the pure reconcile function, step by step, and the Job it builds.

These tests feed the reconciler the world as the API and the object store would show it and check
what it decides; the integration tests (test_operator_integration.py) show the same story through
a real API server.
"""

from __future__ import annotations

import copy

import pytest

from finetune_operator.config import GpuType, OperatorConfig
from finetune_operator.reconcile.conditions import Conditions
from finetune_operator.naming import output_model_name
from finetune_operator.reconcile.finetunejob import Observed, derive_phase, reconcile
from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_trainer import contract

CONFIG = OperatorConfig(
    trainer_image="registry.example/finetune-trainer:1",
    storage_endpoint="minio:9000",
    storage_bucket="ft",
    gpu_types={"a100": GpuType(nodeSelector={"gpu": "a100"}, tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}])},
)
OWNER = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "chat-bot", "namespace": "team-a", "uid": "u-1", "generation": 1}}
SPEC = {"baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"}, "dataset": "support-chats", "suffix": "support"}
READY_DATASET = {"status": {"phase": "Ready", "trainUri": "s3://ft/datasets/team-a/support-chats/abc/train.jsonl", "validationUri": "s3://ft/datasets/team-a/support-chats/abc/validation.jsonl", "sha256": "abc"}}


def run(spec=SPEC, status=None, observed=None, config=CONFIG):
    obj = {**OWNER, "spec": spec, "status": status}
    return reconcile(obj, observed or Observed(), config)


def job_of(plan):
    return next(c for c in plan.create if c["kind"] == "Job")


def test_pending_with_the_reason_until_the_dataset_exists_and_is_ready():
    plan = run()
    assert plan.new_phase == "Pending" and plan.create == []
    assert "support-chats does not exist" in plan.status["message"]
    assert plan.retry_after
    validating = {"status": {"phase": "Validating"}}
    plan = run(status=plan.status, observed=Observed(dataset=validating))
    assert plan.new_phase == "Pending" and "to be Ready (it is Validating)" in plan.status["message"]
    invalid = {"status": {"phase": "Invalid", "message": "line 3: not_json"}}
    plan = run(status=plan.status, observed=Observed(dataset=invalid))
    assert plan.new_phase == "Pending" and "Invalid: line 3: not_json" in plan.status["message"]
    reasons = {c["type"]: c["reason"] for c in plan.status["conditions"]}
    assert reasons["Validated"] == "DatasetInvalid"


def test_ready_dataset_creates_configmap_and_job_and_queues():
    plan = run(observed=Observed(dataset=READY_DATASET))
    kinds = [c["kind"] for c in plan.create]
    assert kinds == ["ConfigMap", "Job"]
    assert plan.new_phase == "Queued" and plan.status["jobName"] == "chat-bot-train"
    config = contract.TrainerConfig.model_validate_json(plan.create[0]["data"]["config.json"])
    assert config.train_data == [READY_DATASET["status"]["trainUri"]]
    assert config.validation_data == [READY_DATASET["status"]["validationUri"]]
    assert config.hyperparameters.learning_rate == 1e-4 and config.lora.r == 16 and config.lora.target_modules == "all-linear"
    assert config.output_uri == "s3://ft/jobs/team-a/chat-bot-u-1"
    assert config.output_model_name == "team-a/Llama-3.2-1B-Instruct:support:chat-bot"
    assert config.storage.credentials_dir and "secret" not in plan.create[0]["data"]["config.json"].lower().replace("secrets/finetune", "")


def test_trainer_job_spec():
    job = job_of(run(spec={**SPEC, "resources": {"gpus": 2, "gpuType": "a100", "cpu": "8", "memory": "64Gi"}}, observed=Observed(dataset=READY_DATASET)))
    assert job["metadata"]["name"] == "chat-bot-train"
    ref = job["metadata"]["ownerReferences"][0]
    assert ref["uid"] == "u-1" and ref["controller"] is True
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod["tolerations"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/finetune-trainer:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["command"] == ["finetune-trainer", "train", "--config", "/etc/finetune/config.json"]  # it starts one worker per GPU
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [42]}}
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"] == [{"type": "DisruptionTarget"}]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/run/secrets/finetune/storage"]["readOnly"] is True
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "storage-credentials")
    assert secret_volume["secret"]["secretName"] == "finetune-storage"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert not any("KEY" in k or "SECRET" in k for k in env), "credentials are files, never env values"


def test_restricted_pod_security():
    from tests.chart.pod_security import check_restricted

    job = job_of(run(observed=Observed(dataset=READY_DATASET)))
    assert check_restricted(job["spec"]["template"]["spec"]) == []


def test_multi_node_is_an_indexed_job_with_headless_service_and_rendezvous_env():
    plan = run(spec={**SPEC, "numNodes": 3, "resources": {"gpus": 8}}, observed=Observed(dataset=READY_DATASET))
    kinds = [c["kind"] for c in plan.create]
    assert kinds == ["ConfigMap", "Service", "Job"]
    service, job = plan.create[1], plan.create[2]
    assert service["spec"]["clusterIP"] == "None" and service["metadata"]["name"] == "chat-bot-train"
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3 and job["spec"]["parallelism"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "chat-bot-train"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "chat-bot-train-0.chat-bot-train" and env["NNODES"] == "3" and env["NPROC_PER_NODE"] == "8"
    assert pod["containers"][0]["command"][:2] == ["finetune-trainer", "train"]  # node rank from JOB_COMPLETION_INDEX


def test_kueue_queue_creates_a_suspended_labelled_job_and_shows_queued():
    plan = run(spec={**SPEC, "queueName": "gpu-queue"}, observed=Observed(dataset=READY_DATASET))
    job = job_of(plan)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert plan.new_phase == "Queued" and plan.status["queue"]["name"] == "gpu-queue"
    # Kueue has not admitted it yet.
    plan2 = run(spec={**SPEC, "queueName": "gpu-queue"}, status=plan.status, observed=Observed(dataset=READY_DATASET, job=job))
    assert plan2.new_phase == "Queued" and plan2.job_patch is None, "the operator must not unsuspend a Kueue-held Job"


def running_world(job, progress=None, pod_phase="Running"):
    pod = {"status": {"phase": pod_phase, "conditions": [{"type": "PodScheduled", "status": "True"}]}}
    job = copy.deepcopy(job)
    job["spec"]["suspend"] = False
    job["status"] = {"active": 1}
    return Observed(dataset=READY_DATASET, job=job, pods=[pod], progress=progress)


def test_running_uploading_completed_with_progress():
    plan = run(observed=Observed(dataset=READY_DATASET))
    job = job_of(plan)
    progress = contract.Progress(phase="training", step=5, total_steps=20, epoch=0.75, train_loss=1.5, tokens_per_second=1234.5, eta_seconds=30)
    plan = run(status=plan.status, observed=running_world(job, progress))
    assert plan.new_phase == "Running"
    assert plan.status["progress"]["summary"] == "25% (5/20)" and plan.status["progress"]["trainLoss"] == 1.5
    assert any(e.message == "Trainer started" for e in plan.events)
    progress = progress.model_copy(update={"phase": "uploading", "step": 20})
    plan = run(status=plan.status, observed=running_world(job, progress))
    assert plan.new_phase == "Uploading"
    done = progress.model_copy(update={"phase": "done", "model_uri": "s3://ft/jobs/team-a/chat-bot-u-1/model"})
    finished = running_world(job, done, pod_phase="Succeeded")
    finished.job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    finished.model_complete = True
    plan = run(status=plan.status, observed=finished)
    assert plan.new_phase == "Completed"
    assert plan.status["outputModel"] == {"name": "team-a/Llama-3.2-1B-Instruct:support:chat-bot", "uri": done.model_uri, "adapter": True}
    assert plan.status["completionTime"]


def test_the_phase_holds_while_the_job_controller_has_not_recorded_the_ended_pod():
    """On a real cluster the pod ends milliseconds to seconds before the Job controller counts it: in that
    gap the Job has no active pod and no verdict, and the phase must not step back to Queued."""
    plan = run(observed=Observed(dataset=READY_DATASET))
    job = job_of(plan)
    training = contract.Progress(phase="training", step=5, total_steps=6)
    running = run(status=plan.status, observed=running_world(job, training))
    assert running.new_phase == "Running"
    done = training.model_copy(update={"phase": "done", "step": 6, "model_uri": "s3://ft/jobs/team-a/chat-bot-u-1/model"})
    gap = running_world(job, done, pod_phase="Succeeded")
    gap.job["status"] = {"active": 0, "ready": 0}  # the Job controller has not caught up yet
    held = run(status=running.status, observed=gap)
    assert held.new_phase == "Running" and held.events == [], (held.new_phase, held.events)
    gap.job["status"] = {"active": 0, "uncountedTerminatedPods": {"succeeded": ["p-1"]}}
    assert run(status=held.status, observed=gap).new_phase == "Running"
    gap.job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    gap.model_complete = True
    assert run(status=held.status, observed=gap).new_phase == "Completed"


def test_a_failed_pod_holds_the_phase_until_counted_then_the_retry_shows_queued():
    plan = run(observed=Observed(dataset=READY_DATASET))
    job = job_of(plan)
    running = run(status=plan.status, observed=running_world(job, contract.Progress(phase="training", step=2, total_steps=6)))
    crashed = running_world(job, pod_phase="Failed")
    crashed.job["status"] = {"active": 0}
    held = run(status=running.status, observed=crashed)
    assert held.new_phase == "Running" and held.events == []
    crashed.job["status"] = {"active": 0, "failed": 1}  # counted; a new pod comes: an explicit cause
    assert run(status=held.status, observed=crashed).new_phase == "Queued"


def test_a_disrupted_pod_the_job_never_counts_does_not_hold_the_phase():
    plan = run(observed=Observed(dataset=READY_DATASET))
    job = job_of(plan)
    running = run(status=plan.status, observed=running_world(job, contract.Progress(phase="training", step=2, total_steps=6)))
    evicted = running_world(job, pod_phase="Failed")
    evicted.pods[0]["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True"})
    evicted.job["status"] = {"active": 0}
    assert run(status=running.status, observed=evicted).new_phase == "Queued"


def test_complete_job_without_a_manifest_is_not_reported_as_a_model():
    plan = run(observed=Observed(dataset=READY_DATASET))
    world = running_world(job_of(plan), contract.Progress(phase="done", step=3, total_steps=3, model_uri="s3://ft/x/model"), pod_phase="Succeeded")
    world.job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    world.model_complete = False
    plan = run(status=plan.status, observed=world)
    assert plan.new_phase == "Failed" and "outputModel" not in plan.status


def test_bad_input_exit_fails_with_the_trainers_reason():
    plan = run(observed=Observed(dataset=READY_DATASET))
    world = running_world(job_of(plan), pod_phase="Failed")
    world.job["status"] = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}
    world.pods[0]["status"]["containerStatuses"] = [
        {"name": "trainer", "state": {"terminated": {"exitCode": 42, "message": "InvalidDataset: line 7: unknown role 'bot'", "finishedAt": "2026-01-01T00:00:00Z"}}}
    ]
    plan = run(status=plan.status, observed=world)
    assert plan.new_phase == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidDataset" and "unknown role 'bot'" in failed["message"]
    assert plan.events[-1].type == "Warning"


def test_cancel_deletes_the_job_and_ends_cancelled():
    plan = run(observed=Observed(dataset=READY_DATASET))
    world = running_world(job_of(plan))
    plan = run(spec={**SPEC, "cancel": True}, status=plan.status, observed=world)
    assert plan.delete_job and plan.new_phase == "Cancelled"
    again = run(spec={**SPEC, "cancel": True}, status=plan.status, observed=Observed())
    assert again.new_phase == "Cancelled" and not again.create, "terminal phases are sticky"


def test_suspend_and_resume():
    plan = run(observed=Observed(dataset=READY_DATASET))
    world = running_world(job_of(plan))
    plan = run(spec={**SPEC, "suspend": True}, status=plan.status, observed=world)
    assert plan.new_phase == "Suspended" and plan.job_patch["spec"] == {"suspend": True}
    world.job["spec"]["suspend"] = True
    world.job["metadata"]["annotations"] = {"finetune.dev/suspended-by": "user"}
    world.pods = []
    plan = run(spec=SPEC, status=plan.status, observed=world)
    assert plan.job_patch["spec"] == {"suspend": False}
    assert any(e.reason == "Resumed" for e in plan.events)
    assert plan.new_phase == "Queued"  # admitted; waiting for the new pod to be scheduled


def test_dataset_with_a_changed_source_is_not_ready_for_new_jobs():
    changed = {"metadata": {"generation": 2}, "status": {**READY_DATASET["status"], "observedGeneration": 1}}
    plan = run(observed=Observed(dataset=changed))
    assert plan.create == [] and "validate its new source" in plan.status["message"]


def test_missing_secret_volume_keeps_the_pod_creating_and_the_job_pending():
    plan = run(observed=Observed(dataset=READY_DATASET))
    world = running_world(job_of(plan), pod_phase="Pending")
    world.pods[0]["status"]["containerStatuses"] = [
        {"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating", "message": 'MountVolume.SetUp failed: secret "finetune-storage" not found'}}}
    ]
    plan = run(status=plan.status, observed=world)
    assert plan.new_phase == "Pending" and plan.status["conditions"][0]["reason"] == "SecretNotFound"


def test_missing_secret_in_pod_shows_pending_with_reason():
    plan = run(observed=Observed(dataset=READY_DATASET))
    world = running_world(job_of(plan), pod_phase="Pending")
    world.pods[0]["status"]["containerStatuses"] = [
        {"name": "trainer", "state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "finetune-storage" not found'}}}
    ]
    plan = run(status=plan.status, observed=world)
    assert plan.new_phase == "Pending" and "Secret finetune-storage does not exist" in plan.status["message"]


def test_missing_job_is_recreated_under_the_same_name():
    plan = run(observed=Observed(dataset=READY_DATASET))
    again = run(status=plan.status, observed=Observed(dataset=READY_DATASET, job=None))
    assert [c["metadata"]["name"] for c in again.create if c["kind"] == "Job"] == ["chat-bot-train"]
    assert any(e.reason == "JobRecreated" for e in again.events)


@pytest.mark.parametrize(
    "spec_patch, needle",
    [
        ({"resources": {"gpuType": "h200"}}, "unknown GPU type 'h200'"),
        ({"fromCheckpoint": "chat-bot"}, "cannot continue from itself"),
        ({"hyperparameters": {"epochs": 0}}, "spec.hyperparameters.epochs"),
    ],
)
def test_invalid_spec_fails_with_field_path_and_no_job(spec_patch, needle):
    plan = run(spec={**SPEC, **spec_patch}, observed=Observed(dataset=READY_DATASET))
    assert plan.create == [] and plan.new_phase == "Failed"
    assert needle in plan.status["message"]
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"


def test_from_checkpoint_waits_for_the_other_job_and_uses_its_checkpoint():
    other_running = {"status": {"phase": "Running", "checkpoints": [{"step": 10, "uri": "s3://ft/jobs/team-a/base-1/checkpoints/step-10"}]}}
    plan = run(spec={**SPEC, "fromCheckpoint": "base:20"}, observed=Observed(dataset=READY_DATASET, checkpoint_source=other_running))
    assert plan.new_phase == "Pending" and "reach step 20" in plan.status["message"]
    plan = run(spec={**SPEC, "fromCheckpoint": "base:10"}, observed=Observed(dataset=READY_DATASET, checkpoint_source=other_running))
    config = contract.TrainerConfig.model_validate_json(plan.create[0]["data"]["config.json"])
    assert config.from_checkpoint == "s3://ft/jobs/team-a/base-1/checkpoints/step-10"


def test_phase_is_derived_from_conditions():
    c = Conditions()
    assert derive_phase(c) == "Pending"
    c.set("Validated", True, "InputsReady")
    assert derive_phase(c) == "Queued"
    c.set("Admitted", True, "Admitted")
    c.set("Running", True, "Training")
    assert derive_phase(c) == "Running"
    c.set("Running", True, "Uploading")
    assert derive_phase(c) == "Uploading"
    c.set("Failed", True, "Cancelled")
    assert derive_phase(c) == "Cancelled"


def test_output_model_name_follows_the_together_pattern():
    spec = FineTuneJobSpec.model_validate({"baseModel": {"uri": "s3://models/base/tiny-llama/"}, "dataset": "d"})
    assert output_model_name("ns", "job1", spec.base_model.uri, spec.suffix) == "ns/tiny-llama:job1"
