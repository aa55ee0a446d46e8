"""The FineTuneJob lifecycle as a pure function: (object, observed world) → status, children, events.

Nothing here talks to the API or the object store; the handler gathers what is observed (the Datasets,
the child ConfigMap, Job and pods, progress.json) and applies the ``Plan`` this returns. The phase is
derived from the conditions (``derive_phase``; docs/architecture.md has the table).

Once its Job exists a job's inputs are fixed: they are in its ConfigMap, and the Job carries the
Dataset's sha256. Every status field follows from what is observed, so an operator killed between two
writes heals on its next pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune_operator import naming, tenancy
from finetune_operator.api.finetunejob import ConditionType as C
from finetune_operator.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus, Reason, TERMINAL_PHASES, preference_figures, progress_status, spec_problems
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests.trainer_job import DATASET_SHA_ANNOTATION, build_trainer_children, inputs_from_config_map, recorded_model_name
from finetune_operator.reconcile.common import Event, Plan, Reconciliation
from finetune_operator.reconcile.inputs import trainer_inputs
from finetune_operator.reconcile.conditions import Conditions, now, rfc3339
from finetune_operator.reconcile.jobs import job_behind_its_pods, job_condition, job_failure, pod_waiting_problem, pods_running, pods_unscheduled, queue_status
from finetune_trainer import contract

INPUTS_RETRY_SECONDS = 15


@dataclass
class Observed:
    """What the handler read from the API and the object store for one reconcile."""

    dataset: dict | None = None
    validation_dataset: dict | None = None
    checkpoint_source: dict | None = None
    job: dict | None = None
    config_map: dict | None = None
    """The trainer's ConfigMap, read while the Job is missing: once made, it holds the job's inputs."""
    pods: list[dict] = field(default_factory=list)
    progress: contract.Progress | None = None
    model_complete: bool = False
    """The output model's manifest.json exists (checked only once the Job completed)."""
    secrets: dict[str, dict[str, str] | None] | None = None
    """The labels of each Secret the spec names (None: missing); None: not read."""


@dataclass
class FineTuneJobPlan(Plan):
    create: list[dict] = field(default_factory=list)
    job_patch: dict | None = None
    delete_job: bool = False


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


def reconcile(obj: dict, observed: Observed, config: OperatorConfig) -> FineTuneJobPlan:
    """Decide the next status and actions for the FineTuneJob ``obj`` (as read from the API)."""
    plan = _decide(obj, observed, config)
    if plan.new_phase != "Queued" and (obj.get("status") or {}).get("queue"):
        plan.status["queue"] = None  # the queue is shown only while the job waits in it
    return plan


def _decide(obj: dict, observed: Observed, config: OperatorConfig) -> FineTuneJobPlan:
    r = Reconciliation(obj, derive_phase, _transition_event, FineTuneJobStatus, final_phases=tuple(TERMINAL_PHASES))
    plan = FineTuneJobPlan(status={})
    if r.conditions.is_true(C.SUCCEEDED) or r.conditions.is_true(C.FAILED):
        r.out["message"] = r.old.get("message", "")  # terminal states are sticky
        return r.finish(plan)
    spec, problem = r.parse(FineTuneJobSpec)
    if spec is not None:
        problem = "; ".join(spec_problems(spec, config, r.name) + tenancy.finetunejob_problems(spec, r.namespace, config)) or None
    if problem:
        r.conditions.set(C.VALIDATED, False, Reason.INVALID_SPEC, problem)
        r.conditions.set(C.FAILED, True, Reason.INVALID_SPEC, problem)
        r.out["message"] = f"Invalid spec: {problem}"
        return r.finish(plan)
    r.out["artifactsUri"] = r.old.get("artifactsUri") or naming.finetunejob_artifacts_uri(config, r.namespace, r.name, r.uid, spec.output.uri)
    if spec.cancel:
        return _cancel(r, plan, observed)
    if observed.job is None:
        return _create_job(r, plan, spec, observed, config)
    return _follow_job(r, plan, spec, observed)


def _cancel(r: Reconciliation, plan: FineTuneJobPlan, observed: Observed) -> FineTuneJobPlan:
    """Stop the pods for good, keep the checkpoints."""
    plan.delete_job = observed.job is not None
    r.conditions.set(C.RUNNING, False, Reason.STOPPED, "cancelled by the user")
    r.conditions.set(C.FAILED, True, Reason.CANCELLED, "cancelled by the user (spec.cancel)")
    r.out["message"] = "Fine-tuning job cancelled"
    r.keep("progress", "jobName", "datasetSha256")
    return r.finish(plan)


def _create_job(r: Reconciliation, plan: FineTuneJobPlan, spec: FineTuneJobSpec, observed: Observed, config: OperatorConfig) -> FineTuneJobPlan:
    """Make the ConfigMap and the Job: from the ConfigMap's inputs when one exists (a crash between the two
    creates, or a Job deleted by hand), else from the Datasets as they are now."""
    recreating = bool(r.old.get("jobName"))
    inputs = inputs_from_config_map(observed.config_map, r.uid)
    if inputs is None:
        inputs, problem = trainer_inputs(spec, observed.dataset, observed.validation_dataset, observed.checkpoint_source,
                                         r.out["artifactsUri"], r.name, spec.queue_name or config.default_queue or None, r.namespace, config)
        problem = tenancy.secret_problem(spec, observed.secrets, r.namespace, config) or problem
        if problem is None and recreating and r.old.get("datasetSha256") and inputs.dataset_sha256 != r.old["datasetSha256"]:
            problem = (Reason.DATASET_CHANGED, f"the Job {naming.trainer_job_name(r.name)} is gone and Dataset {spec.dataset} "
                       f"now holds other data (sha256 {inputs.dataset_sha256}, this job trained on {r.old['datasetSha256']}); "
                       "create a new FineTuneJob to train on it")  # fmt: skip
        if problem:
            reason, message = problem
            r.conditions.set(C.VALIDATED, False, reason, message)
            r.out["message"] = message
            plan.retry_after = INPUTS_RETRY_SECONDS
            r.keep("jobName", "datasetSha256", "progress", "checkpoints", "startTime")
            return r.finish(plan)
    r.conditions.set(C.VALIDATED, True, Reason.INPUTS_READY, "dataset and base model reference resolved")
    plan.create = build_trainer_children(r.obj, spec, inputs, config)
    r.out["jobName"] = naming.trainer_job_name(r.name)
    r.out["datasetSha256"] = inputs.dataset_sha256
    if recreating:
        plan.events.append(Event("Warning", "JobRecreated", f"Job {r.out['jobName']} was missing; created it again (training resumes from the last checkpoint)"))
        r.out["message"] = "Job recreated"
        r.keep("progress", "checkpoints", "startTime", "queue")
        return r.finish(plan)
    if spec.suspend:
        r.conditions.set(C.SUSPENDED, True, Reason.USER_SUSPENDED, "spec.suspend is true")
        r.conditions.set(C.ADMITTED, False, Reason.SUSPENDED, "suspended by the user")
        r.out["message"] = "Fine-tuning job suspended"
    elif inputs.queue:
        r.conditions.set(C.ADMITTED, False, Reason.WAITING_FOR_QUEUE, f"waiting for Kueue to admit the job in queue {inputs.queue}")
        r.out["queue"], r.out["message"] = queue_status(r.old, inputs.queue), f"Job queued in {inputs.queue}"
    else:
        r.conditions.set(C.ADMITTED, True, Reason.ADMITTED, "no queue: admitted at once")
        r.conditions.set(C.RUNNING, False, Reason.POD_PENDING, "waiting for the trainer pod to be scheduled")
        r.out["queue"], r.out["message"] = queue_status(r.old, None), "Job queued"
    return r.finish(plan)


def _follow_job(r: Reconciliation, plan: FineTuneJobPlan, spec: FineTuneJobSpec, observed: Observed) -> FineTuneJobPlan:
    """The Job exists: what it and its pods say, read again on every pass (a restart loses nothing)."""
    job = observed.job or {}
    r.conditions.set(C.VALIDATED, True, Reason.INPUTS_READY, "dataset and base model reference resolved")
    r.out["jobName"] = job["metadata"]["name"]
    sha = ((job.get("metadata") or {}).get("annotations") or {}).get(DATASET_SHA_ANNOTATION)
    r.out["datasetSha256"] = sha or r.old.get("datasetSha256")
    r.keep("startTime")
    progress = observed.progress
    if progress is not None:
        r.out["progress"] = progress_status(progress)
        r.out["checkpoints"] = [{"step": cp.step, "uri": cp.uri} for cp in progress.checkpoints if tenancy.under_own_prefix(cp.uri, r.out["artifactsUri"])]
    else:
        r.keep("progress", "checkpoints")
    r.out["retries"] = int(job.get("status", {}).get("failed", 0) or 0)
    if spec.suspend:
        return _suspend(r, plan, job)
    job = _resume(r, plan, job)
    finished = _finished(r, plan, spec, observed, job)
    if finished is not None:
        return finished
    return _waiting_or_running(r, plan, observed, job)


def _suspend(r: Reconciliation, plan: FineTuneJobPlan, job: dict) -> FineTuneJobPlan:
    if not job.get("spec", {}).get("suspend"):
        plan.job_patch = {"spec": {"suspend": True}, "metadata": {"annotations": {"finetune.dev/suspended-by": "user"}}}
    r.conditions.set(C.SUSPENDED, True, Reason.USER_SUSPENDED, "spec.suspend is true: pods stopped, checkpoints kept")
    r.conditions.set(C.ADMITTED, False, Reason.SUSPENDED, "suspended by the user")
    r.conditions.set(C.RUNNING, False, Reason.STOPPED, "suspended")
    r.out["message"] = "Fine-tuning job suspended"
    return r.finish(plan)


def _resume(r: Reconciliation, plan: FineTuneJobPlan, job: dict) -> dict:
    """Undo a user's suspend (never Kueue's); returns the Job as it will be."""
    if r.conditions.is_true(C.SUSPENDED):
        r.conditions.set(C.SUSPENDED, False, Reason.RESUMED, "spec.suspend is false: resuming from the last checkpoint")
        plan.events.append(Event("Normal", "Resumed", "Fine-tuning job resumed from the last checkpoint"))
    annotations = job.get("metadata", {}).get("annotations", {}) or {}
    if job.get("spec", {}).get("suspend") and annotations.get("finetune.dev/suspended-by") == "user":
        plan.job_patch = {"spec": {"suspend": False}, "metadata": {"annotations": {"finetune.dev/suspended-by": None}}}
        return {**job, "spec": {**job.get("spec", {}), "suspend": False}}
    return job


def _finished(r: Reconciliation, plan: FineTuneJobPlan, spec: FineTuneJobSpec, observed: Observed, job: dict) -> FineTuneJobPlan | None:
    """Failed or Completed, when the Job says so; None while it runs."""
    failed = job_condition(job, "Failed", "FailureTarget")
    progress = observed.progress
    if failed is not None:
        reason, message = job_failure(failed, progress, observed.pods, Reason.TRAINER_FAILED, "trainer", "the job ran longer than maxDurationSeconds")
        r.conditions.set(C.RUNNING, False, Reason.STOPPED, "the trainer stopped")
        r.conditions.set(C.FAILED, True, reason, message)
        r.out["message"] = f"Job failed: {message}"
        return r.finish(plan)
    if job_condition(job, "Complete") is None:
        return None
    if progress is not None and not all(tenancy.under_own_prefix(u, r.out["artifactsUri"]) for u in (progress.model_uri, progress.merged_model_uri) if u):
        message = f"progress.json names a model outside this job's folder {r.out['artifactsUri']}; it is not trusted"
        r.conditions.set(C.RUNNING, False, Reason.STOPPED, "the trainer exited")
        r.conditions.set(C.FAILED, True, Reason.OUTPUT_OUTSIDE_ITS_FOLDER, message)
        r.out["message"] = f"Job failed: {message}"
        return r.finish(plan)
    if not (observed.model_complete and progress is not None and progress.model_uri):
        r.conditions.set(C.RUNNING, False, Reason.STOPPED, "the trainer exited")
        r.conditions.set(C.FAILED, True, Reason.TRAINER_FAILED, "the trainer exited 0 but no complete model (manifest.json) was found")
        r.out["message"] = "Job failed: the trainer exited without a complete model"
        return r.finish(plan)
    model_name = recorded_model_name(job) or naming.output_model_name(r.namespace, r.name, spec.base_model.uri, spec.suffix)
    r.out["outputModel"] = {"name": model_name, "uri": progress.model_uri, "adapter": spec.method != "full"}
    if progress.merged_model_uri:
        r.out["outputModel"]["mergedUri"] = progress.merged_model_uri
    r.conditions.set(C.RUNNING, False, Reason.STOPPED, "training finished")
    r.conditions.set(C.SUCCEEDED, True, Reason.MODEL_UPLOADED, f"model {model_name} uploaded")
    r.out["message"] = f"Fine-tuning job completed: model {model_name}" + (preference_figures(progress) if spec.objective == "dpo" else "")
    if r.out.get("progress"):
        r.out["progress"] = {**r.out["progress"], "percent": 100, "summary": f"100% ({progress.step}/{progress.total_steps or progress.step})"}
    return r.finish(plan)


TRAINER_PHASE_REASONS = {"uploading": Reason.UPLOADING, "training": Reason.TRAINING, "evaluating": Reason.TRAINING, "done": Reason.UPLOADING}
REASON_WORDS = {Reason.UPLOADING: "Uploading output model", Reason.TRAINING: "Training", Reason.DOWNLOADING: "Downloading base model and data"}


def _waiting_or_running(r: Reconciliation, plan: FineTuneJobPlan, observed: Observed, job: dict) -> FineTuneJobPlan:
    """Not finished: queued by Kueue, waiting for pods, or running."""
    job_spec, job_status = job.get("spec", {}), job.get("status", {})
    if job_spec.get("suspend"):
        queue = (job.get("metadata", {}).get("labels", {}) or {}).get("kueue.x-k8s.io/queue-name")
        r.conditions.set(C.ADMITTED, False, Reason.WAITING_FOR_QUEUE, f"waiting for Kueue to admit the job in queue {queue}" if queue else "the Job is suspended")
        r.conditions.set(C.RUNNING, False, Reason.POD_PENDING, "not admitted yet")
        r.out["queue"] = queue_status(r.old, queue)
        r.out["message"] = f"Job queued in {queue}" if queue else "Job queued"
        return r.finish(plan)
    r.conditions.set(C.ADMITTED, True, Reason.ADMITTED, "the Job may run")
    problem = pod_waiting_problem(observed.pods)
    if problem:
        r.conditions.set(C.VALIDATED, False, *problem)
        r.conditions.set(C.RUNNING, False, Reason.POD_PENDING, problem[1])
        r.out["message"] = problem[1]
        plan.retry_after = INPUTS_RETRY_SECONDS
        return r.finish(plan)
    if r.conditions.is_true(C.RUNNING) and job_behind_its_pods(job, observed.pods):
        # The trainer's pod ended and the Job controller has not recorded it yet: hold the phase.
        r.out["message"] = r.old.get("message", "")
        r.keep("queue")
        return r.finish(plan)
    if pods_running(observed.pods):
        reason = TRAINER_PHASE_REASONS.get(observed.progress.phase if observed.progress else "downloading", Reason.DOWNLOADING)
        r.conditions.set(C.RUNNING, True, reason, REASON_WORDS[reason])
        r.out.setdefault("startTime", rfc3339(now()))
        r.out["message"] = REASON_WORDS[reason]
        if int(job_status.get("failed", 0) or 0) > int(r.old.get("retries", 0) or 0):
            plan.events.append(Event("Warning", "Retrying", f"Trainer pod failed; retrying ({job_status.get('failed')} of {job_spec.get('backoffLimit')})"))
        return r.finish(plan)
    if pods_unscheduled(observed.pods):
        r.conditions.set(C.RUNNING, False, Reason.POD_PENDING, "waiting for the trainer pod to be scheduled")
        r.out["message"] = "Waiting for the trainer pod to be scheduled"
    else:
        r.conditions.set(C.RUNNING, False, Reason.POD_PENDING, "the trainer pod is starting")
        r.out["message"] = "Trainer pod starting"
    r.out["queue"] = queue_status(r.old, None)
    return r.finish(plan)


TRANSITION_EVENTS = {
    # phase: (type, words; None: the status message, else the default words)
    "Pending": ("Normal", None, "Fine-tuning job created"),
    "Queued": ("Normal", None, "Job queued"),
    "Running": ("Normal", "Trainer started", ""),  # the trainer's own TrainingStarted follows its downloads
    "Uploading": ("Normal", "Uploading output model", ""),
    "Completed": ("Normal", None, "Fine-tuning job completed"),
    "Suspended": ("Normal", "Fine-tuning job suspended", ""),
    "Cancelled": ("Normal", "Fine-tuning job cancelled", ""),
    "Failed": ("Warning", None, "Job failed"),
}


def _transition_event(phase: str, message: str, out: dict, old: dict) -> Event:
    """An Event in the words of the hosted services' event logs."""
    kind, fixed, default = TRANSITION_EVENTS[phase]
    return Event(kind, phase, fixed or message or old.get("message") or default)
