"""The FineTuneJob lifecycle as a pure function: (spec, observed world) → status, children, events.

Nothing here talks to the API or the object store; the handler gathers what is observed (the
Datasets, the child Job and its pods, progress.json) and applies the ``Plan`` this returns. That keeps
the whole lifecycle testable without a cluster and makes every decision visible in one place.

Phases are derived from conditions (``derive_phase``), never stored as the only truth:

    Failed (reason Cancelled)            → Cancelled
    Failed                               → Failed
    Succeeded                            → Completed
    Suspended                            → Suspended
    Validated not True                   → Pending      (inputs not ready, or a pod misses a Secret)
    Admitted not True                    → Queued       (Kueue has not admitted the Job)
    Running True, reason Uploading       → Uploading
    Running True                         → Running
    otherwise                            → Queued       (admitted, pods not scheduled yet)
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from finetune_operator.api.finetunejob import ConditionType as C
from finetune_operator.api.finetunejob import FineTuneJobSpec, Reason
from finetune_operator.config import OperatorConfig
from finetune_operator.reconcile.conditions import Conditions, now, rfc3339
from finetune_operator.reconcile.jobs import job_behind_its_pods
from finetune_trainer import contract


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Observed:
    """What the handler read from the API and the object store for one reconcile."""

    dataset: dict | None = None
    validation_dataset: dict | None = None
    checkpoint_source: dict | None = None
    job: dict | None = None
    pods: list[dict] = field(default_factory=list)
    progress: contract.Progress | None = None
    model_complete: bool = False
    """The output model's manifest.json exists (checked only once the Job completed)."""


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[dict] = field(default_factory=list)
    job_patch: dict | None = None
    delete_job: bool = False
    events: list[Event] = field(default_factory=list)
    retry_after: float | None = None
    """Waiting on something that will heal (a Dataset, a Secret): reconcile again after this many seconds."""
    old_phase: str | None = None
    new_phase: str = "Pending"


def effective_learning_rate(spec: FineTuneJobSpec) -> float:
    if spec.hyperparameters.learning_rate is not None:
        return spec.hyperparameters.learning_rate
    return 1e-5 if spec.method == "full" else 1e-4


def derive_phase(conditions: Conditions) -> str:
    if conditions.is_true(C.FAILED):
        return "Cancelled" if conditions.reason(C.FAILED) == Reason.CANCELLED else "Failed"
    if conditions.is_true(C.SUCCEEDED):
        return "Completed"
    if conditions.is_true(C.SUSPENDED):
        return "Suspended"
    if not conditions.is_true(C.VALIDATED):
        return "Pending"
    if not conditions.is_true(C.ADMITTED):
        return "Queued"
    if conditions.is_true(C.RUNNING):
        return "Uploading" if conditions.reason(C.RUNNING) == Reason.UPLOADING else "Running"
    return "Queued"


def base_model_short(uri: str) -> str:
    """``hf://meta-llama/Llama-3.2-1B@main`` → ``Llama-3.2-1B``; ``s3://b/models/tiny/`` → ``tiny``."""
    path = uri.split("://", 1)[-1].split("@", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1] or path


def output_model_name(namespace: str, name: str, spec: FineTuneJobSpec) -> str:
    """The Together pattern: ``<namespace>/<base-model-short>:<suffix>:<job-name>``."""
    parts = [base_model_short(spec.base_model.uri)]
    if spec.suffix:
        parts.append(spec.suffix)
    parts.append(name)
    return f"{namespace}/{':'.join(parts)}"


def job_name(name: str) -> str:
    return f"{name}-train"


def artifacts_uri(config: OperatorConfig, namespace: str, name: str, uid: str, spec: FineTuneJobSpec) -> str:
    if spec.output.uri:
        return contract.join_uri(spec.output.uri, f"{name}-{uid}")
    return f"s3://{config.storage_bucket}/{contract.job_prefix(namespace, name, uid)}"


def _condition(obj: dict | None, type_: str) -> dict | None:
    for c in (obj or {}).get("status", {}).get("conditions", []) or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _dataset_problem(kind_label: str, name: str, ds: dict | None) -> tuple[str, str] | None:
    """(reason, message) when a Dataset cannot be used yet, else None."""
    if ds is None:
        return Reason.DATASET_NOT_FOUND, f"{kind_label} {name} does not exist"
    phase = ds.get("status", {}).get("phase", "Pending")
    if phase == "Invalid":
        detail = ds.get("status", {}).get("message", "")
        return Reason.DATASET_INVALID, f"{kind_label} {name} is Invalid" + (f": {detail}" if detail else "")
    if phase != "Ready" or not ds.get("status", {}).get("trainUri"):
        return Reason.DATASET_NOT_READY, f"waiting for {kind_label} {name} to be Ready (it is {phase})"
    observed = ds.get("status", {}).get("observedGeneration")
    if observed is not None and observed != ds.get("metadata", {}).get("generation", observed):
        # Its source just changed: the Ready status still describes the old file.
        return Reason.DATASET_NOT_READY, f"waiting for {kind_label} {name} to validate its new source"
    return None


def resolve_checkpoint(ref: str, source: dict | None) -> tuple[str | None, tuple[str, str] | None]:
    """fromCheckpoint `<job>` or `<job>:<step>` → (uri, problem)."""
    job, _, step = ref.partition(":")
    if source is None:
        return None, (Reason.CHECKPOINT_NOT_FOUND, f"fromCheckpoint: FineTuneJob {job} does not exist")
    status = source.get("status", {})
    if step:
        for cp in status.get("checkpoints", []) or []:
            if str(cp.get("step")) == step:
                return cp["uri"], None
        steps = ", ".join(str(cp.get("step")) for cp in status.get("checkpoints", []) or []) or "none yet"
        if status.get("phase") in ("Failed", "Cancelled", "Completed"):
            return None, (Reason.CHECKPOINT_NOT_FOUND, f"fromCheckpoint: {job} has no checkpoint at step {step} (it has: {steps})")
        return None, (Reason.CHECKPOINT_NOT_READY, f"fromCheckpoint: waiting for {job} to reach step {step} (checkpoints: {steps})")
    model = status.get("outputModel") or {}
    if status.get("phase") == "Completed" and model.get("uri"):
        return model["uri"], None
    if status.get("phase") in ("Failed", "Cancelled"):
        return None, (Reason.CHECKPOINT_NOT_FOUND, f"fromCheckpoint: {job} ended {status.get('phase')} without a model")
    return None, (Reason.CHECKPOINT_NOT_READY, f"fromCheckpoint: waiting for {job} to complete")


def operator_side_problems(spec: FineTuneJobSpec, config: OperatorConfig, name: str) -> list[str]:
    """What the CRD schema cannot check: references to operator configuration, self-references."""
    problems = []
    if spec.resources.gpu_type and spec.resources.gpu_type not in config.gpu_types:
        known = ", ".join(sorted(config.gpu_types)) or "none are configured"
        problems.append(f"spec.resources.gpuType: unknown GPU type {spec.resources.gpu_type!r} (known: {known})")
    if spec.from_checkpoint and spec.from_checkpoint.partition(":")[0] == name:
        problems.append("spec.fromCheckpoint: a job cannot continue from itself")
    if spec.method == "qlora" and spec.resources.gpus == 0:
        problems.append("spec.method: qlora needs GPUs (resources.gpus > 0)")
    if spec.num_nodes > 1 and spec.resources.gpus == 0:
        problems.append("spec.numNodes: more than one node needs GPUs on each (resources.gpus > 0)")
    if spec.hyperparameters.n_evals > 0 and not (spec.validation_dataset or spec.validation_split):
        pass  # the Dataset's own validation split may provide it; checked when inputs resolve
    return problems


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{loc}: {err['msg']}")
    return "; ".join(parts)


def _pod_waiting_problem(pods: list[dict]) -> tuple[str, str] | None:
    """A pod that cannot start for a reason the user must fix (a missing Secret or ConfigMap)."""
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            message = waiting.get("message", "")
            # A Secret named in env is CreateContainerConfigError; one mounted as a volume keeps the pod
            # ContainerCreating with the same words.
            m = re.search(r'secrets? "([^"]+)" not found', message)
            if m:
                return Reason.SECRET_NOT_FOUND, f"Secret {m.group(1)} does not exist in this namespace"
            if waiting.get("reason") in {"CreateContainerConfigError", "CreateContainerError"}:
                return Reason.POD_PENDING, message or waiting["reason"]
    return None


def _pods_unscheduled(pods: list[dict]) -> bool:
    if not pods:
        return True
    for pod in pods:
        for c in pod.get("status", {}).get("conditions", []) or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "True":
                return False
    return True


def _pods_running(pods: list[dict]) -> bool:
    return any(p.get("status", {}).get("phase") == "Running" for p in pods)


def termination_message(pods: list[dict]) -> str | None:
    """The trainer container's termination message from the newest failed pod."""
    newest: tuple[str, str] | None = None
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if term.get("exitCode") not in (None, 0) and term.get("message"):
                stamp = term.get("finishedAt") or ""
                if newest is None or stamp > newest[0]:
                    newest = (stamp, term["message"].strip())
    return newest[1] if newest else None


def _progress_status(progress: contract.Progress) -> dict[str, Any]:
    total = progress.total_steps or 0
    percent = min(100, int(100 * progress.step / total)) if total else 0
    out: dict[str, Any] = {
        "step": progress.step,
        "percent": percent,
        "summary": f"{percent}% ({progress.step}/{total})" if total else progress.phase,
        "epoch": round(progress.epoch, 3),
        "updatedAt": rfc3339(progress.updated_at),
    }
    if total:
        out["totalSteps"] = total
    for key, value in (("trainLoss", progress.train_loss), ("evalLoss", progress.eval_loss), ("tokensPerSecond", progress.tokens_per_second)):
        if value is not None and math.isfinite(value):
            out[key] = round(float(value), 6)
    if progress.eta_seconds is not None and math.isfinite(progress.eta_seconds):
        out["etaSeconds"] = max(0, int(progress.eta_seconds))
    return out


def reconcile(
    *,
    name: str,
    namespace: str,
    uid: str,
    generation: int | None,
    raw_spec: dict,
    status: dict | None,
    observed: Observed,
    config: OperatorConfig,
    build_children,
) -> Plan:
    """Decide the next status and actions. ``build_children(spec, inputs) -> [ConfigMap, Job, ...]``."""
    status = dict(status or {})
    conditions = Conditions.from_status(status, generation)
    old_phase = status.get("phase")
    plan = Plan(status={}, old_phase=old_phase)
    out: dict[str, Any] = {"observedGeneration": generation}

    def finish() -> Plan:
        phase = derive_phase(conditions)
        out["phase"] = phase
        out["conditions"] = conditions.as_list()
        plan.status = out
        plan.new_phase = phase
        if phase in ("Completed", "Failed", "Cancelled") and not status.get("completionTime"):
            out["completionTime"] = rfc3339(now())
        if phase != old_phase:
            plan.events.append(_transition_event(phase, out.get("message") or status.get("message", ""), out, status))
        return plan

    # Terminal states are sticky: nothing to decide but keeping the Job gone when cancelled.
    if conditions.is_true(C.SUCCEEDED) or conditions.is_true(C.FAILED):
        out["message"] = status.get("message", "")
        return finish()

    try:
        spec = FineTuneJobSpec.model_validate(raw_spec)
    except ValidationError as e:
        message = format_validation_error(e)
        conditions.set(C.VALIDATED, False, Reason.INVALID_SPEC, message)
        conditions.set(C.FAILED, True, Reason.INVALID_SPEC, message)
        out["message"] = f"Invalid spec: {message}"
        return finish()
    problems = operator_side_problems(spec, config, name)
    if problems:
        message = "; ".join(problems)
        conditions.set(C.VALIDATED, False, Reason.INVALID_SPEC, message)
        conditions.set(C.FAILED, True, Reason.INVALID_SPEC, message)
        out["message"] = f"Invalid spec: {message}"
        return finish()

    job = observed.job
    uri = status.get("artifactsUri") or artifacts_uri(config, namespace, name, uid, spec)
    out["artifactsUri"] = uri

    # Cancel: stop the pods for good, keep the checkpoints.
    if spec.cancel:
        if job is not None:
            plan.delete_job = True
        conditions.set(C.RUNNING, False, Reason.STOPPED, "cancelled by the user")
        conditions.set(C.FAILED, True, Reason.CANCELLED, "cancelled by the user (spec.cancel)")
        out["message"] = "Fine-tuning job cancelled"
        out["progress"] = status.get("progress")
        return finish()

    # Before the Job exists, the inputs must be ready. Once it exists its config is fixed: a Dataset
    # validated again later does not disturb a running job.
    if job is None and not status.get("jobName"):
        inputs, problem = _resolve_inputs(spec, observed)
        if problem:
            reason, message = problem
            conditions.set(C.VALIDATED, False, reason, message)
            out["message"] = message
            plan.retry_after = 15
            return finish()
        conditions.set(C.VALIDATED, True, Reason.INPUTS_READY, "dataset and base model reference resolved")
        queue = spec.queue_name or config.default_queue or None
        inputs["artifacts_uri"] = uri
        inputs["queue"] = queue
        inputs["output_model_name"] = output_model_name(namespace, name, spec)
        plan.create = build_children(spec, inputs)
        out["jobName"] = job_name(name)
        out["datasetSha256"] = inputs.get("dataset_sha256")
        if spec.suspend:
            conditions.set(C.SUSPENDED, True, Reason.USER_SUSPENDED, "spec.suspend is true")
            conditions.set(C.ADMITTED, False, Reason.SUSPENDED, "suspended by the user")
            out["message"] = "Fine-tuning job suspended"
        elif queue:
            conditions.set(C.ADMITTED, False, Reason.WAITING_FOR_QUEUE, f"waiting for Kueue to admit the job in queue {queue}")
            out["queue"] = {"name": queue, "queuedAt": rfc3339(now())}
            out["message"] = f"Job queued in {queue}"
        else:
            conditions.set(C.ADMITTED, True, Reason.ADMITTED, "no queue: admitted at once")
            conditions.set(C.RUNNING, False, Reason.POD_PENDING, "waiting for the trainer pod to be scheduled")
            out["queue"] = {"queuedAt": rfc3339(now())}
            out["message"] = "Job queued"
        return finish()

    if job is None:
        # The Job vanished while the FineTuneJob lives (deleted by hand, or garbage-collected): make it
        # again under the same name; the trainer resumes from its newest checkpoint.
        inputs, problem = _resolve_inputs(spec, observed)
        if problem:
            reason, message = problem
            conditions.set(C.VALIDATED, False, reason, message)
            out["message"] = message
            plan.retry_after = 15
            return finish()
        inputs.update(artifacts_uri=uri, queue=spec.queue_name or config.default_queue or None, output_model_name=output_model_name(namespace, name, spec))
        plan.create = build_children(spec, inputs)
        plan.events.append(Event("Warning", "JobRecreated", f"Job {job_name(name)} was missing; created it again (training resumes from the last checkpoint)"))
        out["jobName"] = job_name(name)
        out["message"] = "Job recreated"
        return finish()

    conditions.set(C.VALIDATED, True, Reason.INPUTS_READY, "dataset and base model reference resolved")
    job_spec = job.get("spec", {})
    job_status = job.get("status", {})
    progress = observed.progress
    if progress is not None:
        out["progress"] = _progress_status(progress)
        out["checkpoints"] = [{"step": cp.step, "uri": cp.uri} for cp in progress.checkpoints]
    elif status.get("progress"):
        out["progress"] = status["progress"]
    out["retries"] = int(job_status.get("failed", 0) or 0)

    # Suspend and resume.
    if spec.suspend:
        if not job_spec.get("suspend"):
            plan.job_patch = {"spec": {"suspend": True}, "metadata": {"annotations": {"finetune.dev/suspended-by": "user"}}}
        conditions.set(C.SUSPENDED, True, Reason.USER_SUSPENDED, "spec.suspend is true: pods stopped, checkpoints kept")
        conditions.set(C.ADMITTED, False, Reason.SUSPENDED, "suspended by the user")
        conditions.set(C.RUNNING, False, Reason.STOPPED, "suspended")
        out["message"] = "Fine-tuning job suspended"
        return finish()
    if conditions.is_true(C.SUSPENDED):
        conditions.set(C.SUSPENDED, False, Reason.RESUMED, "spec.suspend is false: resuming from the last checkpoint")
        plan.events.append(Event("Normal", "Resumed", "Fine-tuning job resumed from the last checkpoint"))
    annotations = job.get("metadata", {}).get("annotations", {}) or {}
    if job_spec.get("suspend") and annotations.get("finetune.dev/suspended-by") == "user":
        plan.job_patch = {"spec": {"suspend": False}, "metadata": {"annotations": {"finetune.dev/suspended-by": None}}}
        job_spec = {**job_spec, "suspend": False}

    failed = _condition(job, "Failed")
    complete = _condition(job, "Complete")
    if failed is not None or _condition(job, "FailureTarget") is not None:
        cond = failed or _condition(job, "FailureTarget") or {}
        job_reason = cond.get("reason", "")
        reason, message = _failure(job_reason, cond.get("message", ""), progress, observed.pods)
        conditions.set(C.RUNNING, False, Reason.STOPPED, "the trainer stopped")
        conditions.set(C.FAILED, True, reason, message)
        out["message"] = f"Job failed: {message}"
        return finish()
    if complete is not None:
        if observed.model_complete and progress is not None and progress.model_uri:
            model_name = output_model_name(namespace, name, spec)
            out["outputModel"] = {"name": model_name, "uri": progress.model_uri, "adapter": spec.method != "full"}
            if progress.merged_model_uri:
                out["outputModel"]["mergedUri"] = progress.merged_model_uri
            conditions.set(C.RUNNING, False, Reason.STOPPED, "training finished")
            conditions.set(C.SUCCEEDED, True, Reason.MODEL_UPLOADED, f"model {model_name} uploaded")
            out["message"] = f"Fine-tuning job completed: model {model_name}"
            if out.get("progress"):
                out["progress"] = {**out["progress"], "percent": 100, "summary": f"100% ({progress.step}/{progress.total_steps or progress.step})"}
            return finish()
        conditions.set(C.RUNNING, False, Reason.STOPPED, "the trainer exited")
        conditions.set(C.FAILED, True, Reason.TRAINER_FAILED, "the trainer exited 0 but no complete model (manifest.json) was found")
        out["message"] = "Job failed: the trainer exited without a complete model"
        return finish()

    # Not finished: queued, waiting for pods, or running.
    if job_spec.get("suspend"):
        queue = (job.get("metadata", {}).get("labels", {}) or {}).get("kueue.x-k8s.io/queue-name")
        conditions.set(C.ADMITTED, False, Reason.WAITING_FOR_QUEUE, f"waiting for Kueue to admit the job in queue {queue}" if queue else "the Job is suspended")
        conditions.set(C.RUNNING, False, Reason.POD_PENDING, "not admitted yet")
        queue_status = dict(status.get("queue") or {})
        queue_status.setdefault("queuedAt", rfc3339(now()))
        if queue:
            queue_status["name"] = queue
        out["queue"] = queue_status
        out["message"] = f"Job queued in {queue}" if queue else "Job queued"
        return finish()
    conditions.set(C.ADMITTED, True, Reason.ADMITTED, "the Job may run")
    problem = _pod_waiting_problem(observed.pods)
    if problem:
        reason, message = problem
        conditions.set(C.VALIDATED, False, reason, message)
        conditions.set(C.RUNNING, False, Reason.POD_PENDING, message)
        out["message"] = message
        plan.retry_after = 15
        return finish()
    if conditions.is_true(C.RUNNING) and job_behind_its_pods(job, observed.pods):
        # The trainer's pod ended and the Job controller has not recorded it yet: hold the phase.
        out["message"] = status.get("message", "")
        for key in ("startTime", "queue"):
            if status.get(key):
                out[key] = status[key]
        return finish()
    if _pods_running(observed.pods):
        trainer_phase = progress.phase if progress else "downloading"
        reason = {
            "uploading": Reason.UPLOADING,
            "training": Reason.TRAINING,
            "evaluating": Reason.TRAINING,
            "done": Reason.UPLOADING,
        }.get(trainer_phase, Reason.DOWNLOADING)
        words = {Reason.UPLOADING: "Uploading output model", Reason.TRAINING: "Training", Reason.DOWNLOADING: "Downloading base model and data"}
        conditions.set(C.RUNNING, True, reason, words[reason])
        if not status.get("startTime"):
            out["startTime"] = rfc3339(now())
        out["message"] = words[reason]
        if int(job_status.get("failed", 0) or 0) > int(status.get("retries", 0) or 0):
            plan.events.append(Event("Warning", "Retrying", f"Trainer pod failed; retrying ({job_status.get('failed')} of {job_spec.get('backoffLimit')})"))
        return finish()
    if _pods_unscheduled(observed.pods):
        conditions.set(C.RUNNING, False, Reason.POD_PENDING, "waiting for the trainer pod to be scheduled")
        out["message"] = "Waiting for the trainer pod to be scheduled"
    else:
        conditions.set(C.RUNNING, False, Reason.POD_PENDING, "the trainer pod is starting")
        out["message"] = "Trainer pod starting"
    queue_status = dict(status.get("queue") or {})
    queue_status.setdefault("queuedAt", rfc3339(now()))
    out["queue"] = queue_status
    return finish()


def _resolve_inputs(spec: FineTuneJobSpec, observed: Observed) -> tuple[dict[str, Any], tuple[str, str] | None]:
    inputs: dict[str, Any] = {}
    problem = _dataset_problem("Dataset", spec.dataset, observed.dataset)
    if problem:
        return inputs, problem
    ds_status = observed.dataset["status"]  # type: ignore[index]
    inputs["train_data"] = [ds_status["trainUri"]]
    inputs["dataset_sha256"] = ds_status.get("sha256")
    validation: list[str] = []
    if spec.validation_dataset:
        problem = _dataset_problem("validation Dataset", spec.validation_dataset, observed.validation_dataset)
        if problem:
            return inputs, problem
        vstatus = observed.validation_dataset["status"]  # type: ignore[index]
        validation = [vstatus.get("validationUri") or vstatus["trainUri"]]
    elif not spec.validation_split and ds_status.get("validationUri"):
        validation = [ds_status["validationUri"]]
    inputs["validation_data"] = validation
    if spec.from_checkpoint:
        uri, problem = resolve_checkpoint(spec.from_checkpoint, observed.checkpoint_source)
        if problem:
            return inputs, problem
        inputs["from_checkpoint"] = uri
    return inputs, None


def _failure(job_reason: str, job_message: str, progress: contract.Progress | None, pods: list[dict]) -> tuple[str, str]:
    """The typed reason and message of a failed Job: the trainer's own words first."""
    term = termination_message(pods)
    if progress is not None and progress.phase == "failed" and progress.reason:
        return progress.reason, progress.message or term or job_message or progress.reason
    if term:
        reason, sep, rest = term.partition(":")
        if sep and re.fullmatch(r"[A-Z][A-Za-z]+", reason.strip()):
            return reason.strip(), rest.strip()
        return Reason.TRAINER_FAILED, term
    if job_reason == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, "the job ran longer than maxDurationSeconds"
    if job_reason == "BackoffLimitExceeded":
        return Reason.BACKOFF_LIMIT_EXCEEDED, "the trainer failed on every retry"
    return job_reason or Reason.TRAINER_FAILED, job_message or "the trainer failed"


def _transition_event(phase: str, message: str, out: dict, old: dict) -> Event:
    """An Event in the words of the hosted services' event logs."""
    if phase == "Pending":
        return Event("Normal", "Pending", message or "Fine-tuning job created")
    if phase == "Queued":
        return Event("Normal", "Queued", message or "Job queued")
    if phase == "Running":
        return Event("Normal", "Running", "Training started")
    if phase == "Uploading":
        return Event("Normal", "Uploading", "Uploading output model")
    if phase == "Completed":
        return Event("Normal", "Completed", message or "Fine-tuning job completed")
    if phase == "Suspended":
        return Event("Normal", "Suspended", "Fine-tuning job suspended")
    if phase == "Cancelled":
        return Event("Normal", "Cancelled", "Fine-tuning job cancelled")
    return Event("Warning", "Failed", message or "Job failed")


def queue_wait_seconds(status_before: dict, now_: dt.datetime | None = None) -> float | None:
    queued_at = (status_before.get("queue") or {}).get("queuedAt")
    if not queued_at:
        return None
    t = dt.datetime.fromisoformat(queued_at.replace("Z", "+00:00"))
    return max(0.0, ((now_ or now()) - t).total_seconds())
