"""The Evaluation lifecycle as a pure function: (spec, observed world) → status, children, events.

An Evaluation waits until every input is ready (its Dataset Ready, each FineTuneJob Completed, each
InferenceEndpoint Ready), then runs one Job (``<name>-eval``) of ``finetune-trainer evaluate``, which
writes ``progress.json``, ``results.jsonl``, ``summary.json`` and, last, ``manifest.json`` under
``s3://<bucket>/evaluations/<ns>/<name>-<uid>/``. The handler gathers what is observed (the inputs,
that Job and its pods, progress and summary) and applies the ``Plan`` returned here.

Phases are derived from the conditions (``derive_phase``):

    Failed True                    → Failed
    Succeeded True                 → Completed
    Running True                   → Running
    otherwise                      → Pending      (inputs not ready, a Secret missing, pod not started)

Completed and Failed are final: an Evaluation is immutable, a new question is a new object. Nothing is
reported as a score that the evaluator did not compute: a grader that scored no sample has no mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune_operator import naming, tenancy
from finetune_operator.api.common import SecretKeyRef
from finetune_operator.api.evaluation import ConditionType as C
from finetune_operator.api.evaluation import EvaluationSpec, EvaluationStatus, Reason, headline, pass_verdict, score_rows, spec_problems
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests.evaluation_job import Inputs, ResolvedModel, build_evaluation_children
from finetune_operator.reconcile.common import Event, Plan, Reconciliation, clip
from finetune_operator.reconcile.conditions import Conditions, now, rfc3339
from finetune_operator.reconcile.inputs import DEFAULT_API_KEY, dataset_uri, endpoint_model, finetunejob_model
from finetune_operator.reconcile.jobs import job_behind_its_pods, job_condition, job_failure, pod_waiting_problem, pods_running
from finetune_trainer import contract

RETRY_SECONDS = 15


@dataclass
class Observed:
    """What the handler read from the API and the object store for one reconcile."""

    dataset: dict | None = None
    finetunejobs: dict[str, dict | None] = field(default_factory=dict)
    """Every FineTuneJob the spec names, by name (None: it does not exist)."""
    endpoints: dict[str, dict | None] = field(default_factory=dict)
    """Every InferenceEndpoint the spec names (models and judges), by name (None: it does not exist)."""
    job: dict | None = None
    pods: list[dict] = field(default_factory=list)
    progress: contract.Progress | None = None
    summary: contract.EvaluationSummary | None = None
    """summary.json (read once the Job completed)."""
    summary_malformed: bool = False
    results_complete: bool = False
    """manifest.json exists under the output URI (written last: the results are complete)."""
    secrets: dict[str, dict[str, str] | None] | None = None
    """The labels of each Secret the spec names (None: missing); None: not read."""


@dataclass
class EvaluationPlan(Plan):
    create: list[dict] = field(default_factory=list)


def derive_phase(conditions: Conditions) -> str:
    if conditions.is_true(C.FAILED):
        return "Failed"
    if conditions.is_true(C.SUCCEEDED):
        return "Completed"
    if conditions.is_true(C.RUNNING):
        return "Running"
    return "Pending"


# ----------------------------------------------------------------------------------------------
# Inputs


def resolve_inputs(spec: EvaluationSpec, observed: Observed) -> tuple[Inputs | None, tuple[str, str] | None]:
    """Every input the Job needs, or the first (reason, message) that keeps it from starting."""
    uri, problem = dataset_uri(spec, observed.dataset)
    if problem:
        return None, problem
    models: list[ResolvedModel] = []
    for m in spec.models:
        if m.inference_endpoint:
            resolved, problem = endpoint_model(m.name, m.inference_endpoint, m.model, observed.endpoints.get(m.inference_endpoint), f"model {m.name}")
        elif m.fine_tune_job:
            resolved, problem = finetunejob_model(m.name, m.fine_tune_job, observed.finetunejobs.get(m.fine_tune_job))
        else:
            resolved, problem = ResolvedModel(name=m.name, model_uri=m.base_model), None
        if problem:
            return None, problem
        models.append(resolved)  # type: ignore[arg-type]
    judges: dict[str, ResolvedModel] = {}
    for g in spec.graders:
        if g.judge is None:
            continue
        what = f"judge of grader {g.name}"
        if g.judge.inference_endpoint:
            judge, problem = endpoint_model(f"{g.name}-judge", g.judge.inference_endpoint, g.judge.model, observed.endpoints.get(g.judge.inference_endpoint), what)
            if problem:
                return None, problem
        else:
            judge = ResolvedModel(name=f"{g.name}-judge", endpoint=g.judge.url, model=g.judge.model)
        if g.judge.api_key_secret_ref is not None:
            ref = g.judge.api_key_secret_ref
            judge.api_key = SecretKeyRef(name=ref.name, key=ref.key or DEFAULT_API_KEY)  # type: ignore[union-attr]
        judges[g.name] = judge  # type: ignore[assignment]
    return Inputs(dataset_uri=uri, models=models, judges=judges), None  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# What the Job and its pods say


def _progress_message(progress: contract.Progress | None) -> tuple[str, str]:
    if progress is None or progress.phase in ("pending", "downloading"):
        return Reason.EVALUATING, "Evaluating: loading the dataset and the models"
    if progress.phase in ("uploading", "done"):
        return Reason.UPLOADING, "Evaluating: uploading the results"
    if progress.total_steps:
        return Reason.EVALUATING, f"Evaluating: {progress.step}/{progress.total_steps} samples answered and graded"
    return Reason.EVALUATING, "Evaluating"


# ----------------------------------------------------------------------------------------------
# The decision


def reconcile(obj: dict, observed: Observed, config: OperatorConfig) -> EvaluationPlan:
    """Decide the next status and actions for the Evaluation ``obj`` (as read from the API)."""
    r = Reconciliation(obj, derive_phase, _transition_event, EvaluationStatus, final_phases=("Completed", "Failed"), transition_first=True)
    plan = EvaluationPlan(status={})
    if r.conditions.is_true(C.SUCCEEDED) or r.conditions.is_true(C.FAILED):
        r.out["message"] = r.old.get("message", "")  # Completed and Failed are final
        return r.finish(plan)
    spec, problem = r.parse(EvaluationSpec)
    if spec is not None:
        problem = "; ".join(spec_problems(spec, config) + tenancy.evaluation_problems(spec, r.namespace, config)) or None
    if problem:
        return _fail_invalid_spec(r, plan, problem)
    results = naming.evaluation_output_uri(config, r.namespace, r.name, r.uid)
    if observed.job is None:
        return _create_job(r, plan, spec, observed, config, results)
    r.conditions.set(C.VALIDATED, True, Reason.INPUTS_READY, "the dataset and every model are ready")
    r.out["jobName"] = naming.evaluation_job_name(r.name)
    failed = job_condition(observed.job, "Failed", "FailureTarget")
    if failed is not None:
        reason, message = job_failure(failed, observed.progress, observed.pods, Reason.EVALUATOR_FAILED, "evaluator", "the evaluation ran past its deadline")
        r.conditions.set(C.RUNNING, False, Reason.STOPPED, "the evaluator stopped")
        r.conditions.set(C.FAILED, True, reason, message)
        r.out["message"] = clip(f"Evaluation failed: {reason}: {message}", 4096)
        _no_verdict(spec, r.conditions, "the evaluation failed; there are no scores")
        return r.finish(plan)
    if job_condition(observed.job, "Complete", "SuccessCriteriaMet") is not None:
        return _job_complete(r, plan, spec, observed, results)
    return _running(r, plan, observed)


def _create_job(r: Reconciliation, plan: EvaluationPlan, spec: EvaluationSpec, observed: Observed, config: OperatorConfig, results: str) -> EvaluationPlan:
    """Before the Job exists every input must be ready. A Job that vanished (deleted by hand) is made again
    under the same name: an evaluation is cheap to redo."""
    inputs, problem = resolve_inputs(spec, observed)
    problem = tenancy.secret_problem(spec, observed.secrets, r.namespace, config) or problem
    if not problem:  # models from FineTuneJobs' status are held to this namespace's storage too
        outside = tenancy.problems(tenancy.check_read(u, f"model {m.name}", r.namespace, config)
                                   for m in inputs.models for u in (m.model_uri, m.adapter_uri) if u)  # fmt: skip
        problem = (Reason.MODEL_NOT_READY, "; ".join(outside)) if outside else None
    if problem:
        r.conditions.set(C.VALIDATED, False, *problem)
        r.out["message"] = problem[1]
        plan.retry_after = RETRY_SECONDS
        return r.finish(plan)
    inputs.output_uri = results  # type: ignore[union-attr]
    r.conditions.set(C.VALIDATED, True, Reason.INPUTS_READY, "the dataset and every model are ready")
    r.conditions.set(C.RUNNING, False, Reason.POD_PENDING, "waiting for the evaluation pod to start")
    plan.create = build_evaluation_children(r.obj, spec, inputs, config)  # type: ignore[arg-type]
    if r.old.get("jobName"):
        plan.events.append(Event("Warning", "JobRecreated", f"Job {naming.evaluation_job_name(r.name)} was missing; created it again"))
    r.out["jobName"] = naming.evaluation_job_name(r.name)
    r.out["message"] = f"Evaluation Job {r.out['jobName']} created; waiting for its pod"
    return r.finish(plan)


def _job_complete(r: Reconciliation, plan: EvaluationPlan, spec: EvaluationSpec, observed: Observed, results: str) -> EvaluationPlan:
    summary = observed.summary
    if summary is None or not observed.results_complete:
        words = "summary.json does not follow the contract" if observed.summary_malformed else f"no complete results under {results}"
        message = f"the evaluator exited 0 but left {words}"
        r.conditions.set(C.RUNNING, False, Reason.STOPPED, "the evaluator exited")
        r.conditions.set(C.FAILED, True, Reason.INCOMPLETE_RESULTS, message)
        r.out["message"] = f"Evaluation failed: {message}"
        _no_verdict(spec, r.conditions, "the evaluation left no scores")
        return r.finish(plan)
    return _completed(r, plan, spec, summary, results)


def _running(r: Reconciliation, plan: EvaluationPlan, observed: Observed) -> EvaluationPlan:
    problem = pod_waiting_problem(observed.pods)
    if problem:
        reason, message = problem
        r.conditions.set(C.VALIDATED, False, reason, message)
        r.conditions.set(C.RUNNING, False, Reason.POD_PENDING, message)
        r.out["message"] = message
        plan.retry_after = RETRY_SECONDS
        return r.finish(plan)
    if r.conditions.is_true(C.RUNNING) and job_behind_its_pods(observed.job or {}, observed.pods):
        # The evaluator's pod ended and the Job controller has not recorded it yet: hold the phase.
        r.out["message"] = r.old.get("message", "")
        r.keep("startTime")
        return r.finish(plan)
    if pods_running(observed.pods):
        reason, message = _progress_message(observed.progress)
        r.conditions.set(C.RUNNING, True, reason, message)
        r.out["startTime"] = r.old.get("startTime") or rfc3339(now())
        r.out["message"] = message
        return r.finish(plan)
    r.conditions.set(C.RUNNING, False, Reason.POD_PENDING, "waiting for the evaluation pod to start")
    r.out["message"] = "Waiting for the evaluation pod to start"
    return r.finish(plan)


def _fail_invalid_spec(r: Reconciliation, plan: EvaluationPlan, message: str) -> EvaluationPlan:
    r.conditions.set(C.VALIDATED, False, Reason.INVALID_SPEC, message)
    r.conditions.set(C.FAILED, True, Reason.INVALID_SPEC, message)
    r.out["message"] = f"Invalid spec: {message}"
    return r.finish(plan)


def _no_verdict(spec: EvaluationSpec, conditions: Conditions, message: str) -> None:
    if spec.pass_criterion is not None:
        conditions.set(C.PASSED, False, Reason.SCORE_MISSING, message)


def _completed(r: Reconciliation, plan: EvaluationPlan, spec: EvaluationSpec, summary: contract.EvaluationSummary, results: str) -> EvaluationPlan:
    rows = score_rows(summary)
    title = headline(spec, rows)
    r.out["scores"] = [row.dump() for row in rows]
    r.out["headline"] = title
    r.out["samples"] = summary.samples
    trusted = summary.results_uri if tenancy.under_own_prefix(summary.results_uri, results) else None
    r.out["resultsUri"] = trusted or contract.join_uri(results, contract.RESULTS_FILE)
    r.out["startTime"] = r.old.get("startTime") or rfc3339(now())
    r.conditions.set(C.RUNNING, False, Reason.STOPPED, "the evaluator finished")
    r.conditions.set(C.SUCCEEDED, True, Reason.SCORED, f"{len(rows)} scores over {summary.samples} samples")
    r.out["message"] = f"Evaluation completed: {title}" if title else "Evaluation completed"
    if spec.pass_criterion is not None:
        passed, reason, message = pass_verdict(spec.pass_criterion, spec, rows)
        r.conditions.set(C.PASSED, passed, reason, message)
        plan.events.append(Event("Normal", "Passed", f"Pass criterion met: {message}") if passed else Event("Warning", "NotPassed", f"Pass criterion not met ({reason}): {message}"))
    return r.finish(plan)


def _transition_event(phase: str, message: str, out: dict, old: dict) -> Event:
    message = message or old.get("message", "")
    if phase == "Running":
        return Event("Normal", "Running", "Evaluation started")
    if phase == "Completed":
        return Event("Normal", "Completed", message or "Evaluation completed")
    if phase == "Failed":
        return Event("Warning", "Failed", message or "Evaluation failed")
    return Event("Normal", "Pending", message or "Evaluation pending")
