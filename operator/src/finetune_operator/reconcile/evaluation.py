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

import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from finetune_operator.api.common import SecretKeyRef
from finetune_operator.api.evaluation import ConditionType as C
from finetune_operator.api.evaluation import EvaluationSpec, PassCriterion, Reason, ScoreStatus
from finetune_operator.config import OperatorConfig
from finetune_operator.reconcile.conditions import Conditions, now, rfc3339
from finetune_operator.reconcile.jobs import job_behind_its_pods
from finetune_operator.reconcile.finetunejob import Event, format_validation_error, termination_message
from finetune_trainer import contract

DEFAULT_API_KEY = "apiKey"
DEFAULT_HF_TOKEN_KEY = "token"
RETRY_SECONDS = 15


# ----------------------------------------------------------------------------------------------
# What is observed, what is decided


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


@dataclass
class ResolvedModel:
    """One row of the results table, as the evaluation Job reaches it."""

    name: str
    endpoint: str | None = None
    model: str | None = None
    api_key: SecretKeyRef | None = None
    """Secret (and key) of the endpoint's API key; mounted as a file, never copied."""
    model_uri: str | None = None
    adapter_uri: str | None = None
    hf_token: SecretKeyRef | None = None
    """Secret with a Hugging Face token for an hf:// model_uri (a FineTuneJob's baseModel.secretRef)."""


@dataclass
class Inputs:
    dataset_uri: str
    models: list[ResolvedModel]
    judges: dict[str, ResolvedModel] = field(default_factory=dict)
    """The judge of each llm_judge grader, by grader name."""
    output_uri: str = ""


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[dict] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    retry_after: float | None = None
    old_phase: str | None = None
    new_phase: str = "Pending"


# ----------------------------------------------------------------------------------------------
# Names and object store layout


def job_name(name: str) -> str:
    return f"{name}-eval"


def output_uri(config: OperatorConfig, namespace: str, name: str, uid: str) -> str:
    """``s3://<bucket>/evaluations/<ns>/<name>-<uid>``: a new object under an old name never reads old results."""
    return f"s3://{config.storage_bucket}/{contract.evaluation_prefix(namespace, name, uid)}"


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


def _phase(obj: dict) -> str:
    return (obj.get("status") or {}).get("phase") or "Pending"


def dataset_uri(spec: EvaluationSpec, dataset: dict | None) -> tuple[str | None, tuple[str, str] | None]:
    """The normalised file to evaluate on: the validation split by default, else the training file."""
    if dataset is None:
        return None, (Reason.DATASET_NOT_FOUND, f"Dataset {spec.dataset} does not exist")
    status = dataset.get("status") or {}
    phase = _phase(dataset)
    if phase != "Ready" or not status.get("trainUri"):
        detail = f": {status['message']}" if phase == "Invalid" and status.get("message") else ""
        return None, (Reason.DATASET_NOT_READY, f"waiting for Dataset {spec.dataset} to be Ready (it is {phase}{detail})")
    if spec.split == "validation" and status.get("validationUri"):
        return status["validationUri"], None
    return status["trainUri"], None


def _endpoint_model(row: str, endpoint_name: str, requested: str | None, endpoint: dict | None, what: str) -> tuple[ResolvedModel | None, tuple[str, str] | None]:
    if endpoint is None:
        return None, (Reason.MODEL_NOT_FOUND, f"{what}: InferenceEndpoint {endpoint_name} does not exist")
    status = endpoint.get("status") or {}
    if _phase(endpoint) != "Ready" or not status.get("url"):
        return None, (Reason.MODEL_NOT_READY, f"{what}: waiting for InferenceEndpoint {endpoint_name} to be Ready (it is {_phase(endpoint)})")
    spec = endpoint.get("spec") or {}
    model = requested or spec.get("servedModelName") or endpoint["metadata"]["name"]
    served = status.get("models") or []
    if served and model not in served:
        return None, (Reason.MODEL_NOT_READY, f"{what}: InferenceEndpoint {endpoint_name} does not serve {model!r} (yet); it serves {', '.join(served)}")
    ref = spec.get("apiKeySecretRef")
    api_key = SecretKeyRef(name=ref["name"], key=ref.get("key") or DEFAULT_API_KEY) if ref else None
    return ResolvedModel(name=row, endpoint=status["url"], model=model, api_key=api_key), None


def _finetunejob_model(row: str, job_name_: str, job: dict | None) -> tuple[ResolvedModel | None, tuple[str, str] | None]:
    what = f"model {row}"
    if job is None:
        return None, (Reason.MODEL_NOT_FOUND, f"{what}: FineTuneJob {job_name_} does not exist")
    phase = _phase(job)
    output = (job.get("status") or {}).get("outputModel") or {}
    if phase in ("Failed", "Cancelled"):
        return None, (Reason.MODEL_NOT_READY, f"{what}: FineTuneJob {job_name_} ended {phase} without a model")
    if phase != "Completed" or not output.get("uri"):
        return None, (Reason.MODEL_NOT_READY, f"{what}: waiting for FineTuneJob {job_name_} to complete (it is {phase})")
    base = (job.get("spec") or {}).get("baseModel") or {}
    if output.get("adapter", True):
        if not base.get("uri"):
            return None, (Reason.MODEL_NOT_READY, f"{what}: FineTuneJob {job_name_} names no baseModel.uri")
        resolved = ResolvedModel(name=row, model_uri=base["uri"], adapter_uri=output["uri"])
        ref = base.get("secretRef")
        if ref and base["uri"].startswith("hf://"):
            resolved.hf_token = SecretKeyRef(name=ref["name"], key=ref.get("key") or DEFAULT_HF_TOKEN_KEY)
        return resolved, None
    return ResolvedModel(name=row, model_uri=output["uri"]), None


def resolve_inputs(spec: EvaluationSpec, observed: Observed) -> tuple[Inputs | None, tuple[str, str] | None]:
    """Every input the Job needs, or the first (reason, message) that keeps it from starting."""
    uri, problem = dataset_uri(spec, observed.dataset)
    if problem:
        return None, problem
    models: list[ResolvedModel] = []
    for m in spec.models:
        if m.inference_endpoint:
            resolved, problem = _endpoint_model(m.name, m.inference_endpoint, m.model, observed.endpoints.get(m.inference_endpoint), f"model {m.name}")
        elif m.fine_tune_job:
            resolved, problem = _finetunejob_model(m.name, m.fine_tune_job, observed.finetunejobs.get(m.fine_tune_job))
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
            judge, problem = _endpoint_model(f"{g.name}-judge", g.judge.inference_endpoint, g.judge.model, observed.endpoints.get(g.judge.inference_endpoint), what)
            if problem:
                return None, problem
        else:
            judge = ResolvedModel(name=f"{g.name}-judge", endpoint=g.judge.url, model=g.judge.model)
        if g.judge.api_key_secret_ref is not None:
            ref = g.judge.api_key_secret_ref
            judge.api_key = SecretKeyRef(name=ref.name, key=ref.key or DEFAULT_API_KEY)  # type: ignore[union-attr]
        judges[g.name] = judge  # type: ignore[assignment]
    return Inputs(dataset_uri=uri, models=models, judges=judges), None  # type: ignore[arg-type]


def operator_side_problems(spec: EvaluationSpec, config: OperatorConfig) -> list[str]:
    """What the CRD's schema and CEL rules say too (an API server may skip a rule), and what only the
    operator knows (its GPU types)."""
    problems = []
    models = [m.name for m in spec.models]
    graders = [g.name for g in spec.graders]
    for field_name, names in (("models", models), ("graders", graders)):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append(f"spec.{field_name}: names must be unique; repeated: {', '.join(repeated)}")
    for i, m in enumerate(spec.models):
        if sum(x is not None for x in (m.inference_endpoint, m.fine_tune_job, m.base_model)) != 1:
            problems.append(f"spec.models[{i}]: set exactly one of inferenceEndpoint, fineTuneJob and baseModel")
        if m.model and not m.inference_endpoint:
            problems.append(f"spec.models[{i}].model: model goes with inferenceEndpoint")
    for i, g in enumerate(spec.graders):
        if g.type == "regex" and not g.pattern:
            problems.append(f"spec.graders[{i}].pattern: a regex grader needs a pattern")
        if g.type == "llm_judge" and (g.judge is None or not g.rubric):
            problems.append(f"spec.graders[{i}].judge: an llm_judge grader needs judge and rubric")
        if g.judge is not None and (g.judge.inference_endpoint is None) == (g.judge.url is None):
            problems.append(f"spec.graders[{i}].judge: set exactly one of inferenceEndpoint and url")
    if spec.baseline and spec.baseline not in models:
        problems.append(f"spec.baseline: {spec.baseline!r} is not one of the models ({', '.join(models)})")
    criterion = spec.pass_criterion
    if criterion is not None:
        if criterion.grader not in graders:
            problems.append(f"spec.passCriterion.grader: {criterion.grader!r} is not one of the graders ({', '.join(graders)})")
        if criterion.min_delta is None and criterion.min_score is None:
            problems.append("spec.passCriterion: set minDelta or minScore")
        if criterion.min_delta is not None and not spec.baseline:
            problems.append("spec.passCriterion.minDelta: a delta needs a baseline (spec.baseline)")
        if spec.baseline and len(spec.models) < 2:
            problems.append("spec.passCriterion: every model is the baseline; there is no model to judge")
    gpu_type = spec.resources.gpu_type
    if gpu_type and gpu_type not in config.gpu_types:
        known = ", ".join(sorted(config.gpu_types)) or "none are configured"
        problems.append(f"spec.resources.gpuType: unknown GPU type {gpu_type!r} (known: {known})")
    return problems


# ----------------------------------------------------------------------------------------------
# Scores


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def score_rows(summary: contract.EvaluationSummary) -> list[ScoreStatus]:
    """status.scores, in the summary's order. A delta is the evaluator's, or mean minus the baseline's
    mean when both were computed; a missing mean stays missing."""
    baseline_means = {r.grader: r.mean for r in summary.scores if summary.baseline and r.model == summary.baseline}
    rows = []
    for r in summary.scores:
        mean = _rounded(r.mean)
        delta = _rounded(r.delta)
        if delta is None and mean is not None and summary.baseline and r.model != summary.baseline:
            base = _rounded(baseline_means.get(r.grader))
            delta = _rounded(mean - base) if base is not None else None
        if mean is None:
            delta = None
        rows.append(
            ScoreStatus(
                model=r.model, grader=r.grader, mean=mean, ci_low=_rounded(r.ci_low) if mean is not None else None,
                ci_high=_rounded(r.ci_high) if mean is not None else None, n=r.n, errors=r.errors, delta=delta,
            )
        )
    return rows


def _find(rows: list[ScoreStatus], model: str, grader: str) -> ScoreStatus | None:
    return next((r for r in rows if r.model == model and r.grader == grader), None)


def _candidates(spec: EvaluationSpec) -> list[str]:
    """The models judged against the baseline: every model but the baseline."""
    return [m.name for m in spec.models if m.name != spec.baseline]


def headline(spec: EvaluationSpec, rows: list[ScoreStatus]) -> str | None:
    """``f1 0.62 (+0.41)``: the first grader's score of the first non-baseline model, and its delta."""
    candidates = _candidates(spec) or [spec.models[0].name]
    grader = spec.graders[0].name
    row = _find(rows, candidates[0], grader)
    if row is None:
        return None
    if row.mean is None:
        return f"{grader} n/a"
    text = f"{grader} {row.mean:.2f}"
    if row.delta is not None:
        text += f" ({row.delta:+.2f})"
    return text


def pass_verdict(criterion: PassCriterion, spec: EvaluationSpec, rows: list[ScoreStatus]) -> tuple[bool, str, str]:
    """(passed, reason, message) of the pass criterion over every non-baseline model."""
    grader = criterion.grader
    needs = []
    if criterion.min_score is not None:
        needs.append(f"{grader} >= {criterion.min_score:g}")
    if criterion.min_delta is not None:
        needs.append(f"delta >= {criterion.min_delta:+g}")
    rule = " and ".join(needs)
    missing, failing, passing = [], [], []
    for model in _candidates(spec) or [m.name for m in spec.models]:
        row = _find(rows, model, grader)
        if row is None or row.mean is None:
            missing.append(f"{model} has no {grader} score")
            continue
        if criterion.min_delta is not None and row.delta is None:
            missing.append(f"{model} has no {grader} delta (the baseline has no score)")
            continue
        text = f"{model}: {grader} {row.mean:.3f}" + (f" ({row.delta:+.3f})" if row.delta is not None else "")
        ok = (criterion.min_score is None or row.mean >= criterion.min_score) and (criterion.min_delta is None or (row.delta is not None and row.delta >= criterion.min_delta))
        (passing if ok else failing).append(text)
    if missing:
        return False, Reason.SCORE_MISSING, f"{'; '.join(missing)} (needs {rule})"
    if failing:
        return False, Reason.CRITERION_NOT_MET, f"{'; '.join(failing)} (needs {rule})"
    return True, Reason.CRITERION_MET, f"{'; '.join(passing)} (needs {rule})"


# ----------------------------------------------------------------------------------------------
# What the Job and its pods say


def _job_condition(job: dict, *types: str) -> dict | None:
    for c in (job.get("status") or {}).get("conditions", []) or []:
        if c.get("type") in types and c.get("status") == "True":
            return c
    return None


def pod_waiting_problem(pods: list[dict]) -> tuple[str, str] | None:
    """A pod that cannot start for something the user must create: a Secret (API key, storage)."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses", []) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            message = waiting.get("message") or ""
            secret = re.search(r'secret "([^"]+)" not found', message, re.IGNORECASE)
            if secret:
                return Reason.SECRET_NOT_FOUND, f"Secret {secret.group(1)} does not exist in this namespace"
            if waiting.get("reason") in {"CreateContainerConfigError", "CreateContainerError"}:
                return Reason.POD_PENDING, message or waiting["reason"]
    return None


def _pods_running(pods: list[dict]) -> bool:
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)


def failure(job_condition: dict, progress: contract.Progress | None, pods: list[dict]) -> tuple[str, str]:
    """The typed reason and message of a failed Job: the evaluator's own words first."""
    if progress is not None and progress.phase == "failed" and progress.reason:
        return progress.reason, progress.message or progress.reason
    term = termination_message(pods)
    if term:
        reason, sep, rest = term.partition(":")
        if sep and re.fullmatch(r"[A-Z][A-Za-z]+", reason.strip()):
            return reason.strip(), rest.strip()
        return Reason.EVALUATOR_FAILED, term
    if job_condition.get("reason") == "BackoffLimitExceeded":
        return Reason.BACKOFF_LIMIT_EXCEEDED, "the evaluator failed on every retry"
    return job_condition.get("reason") or Reason.EVALUATOR_FAILED, job_condition.get("message") or "the evaluator failed"


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
    """Decide the next status and actions. ``build_children(spec, inputs) -> [ConfigMap, Job]``."""
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
        if phase in ("Completed", "Failed") and not status.get("completionTime"):
            out["completionTime"] = rfc3339(now())
        if phase != old_phase:
            plan.events.insert(0, _transition_event(phase, out.get("message") or status.get("message", "")))
        return plan

    # Completed and Failed are final.
    if conditions.is_true(C.SUCCEEDED) or conditions.is_true(C.FAILED):
        out["message"] = status.get("message", "")
        return finish()

    try:
        spec = EvaluationSpec.model_validate(raw_spec)
    except ValidationError as e:
        return _fail_invalid_spec(conditions, out, finish, format_validation_error(e))
    problems = operator_side_problems(spec, config)
    if problems:
        return _fail_invalid_spec(conditions, out, finish, "; ".join(problems))

    job = observed.job
    results = output_uri(config, namespace, name, uid)
    if job is None:
        # Before the Job exists every input must be ready. A Job that vanished (deleted by hand) is made
        # again under the same name: an evaluation is cheap to redo.
        inputs, problem = resolve_inputs(spec, observed)
        if problem:
            reason, message = problem
            conditions.set(C.VALIDATED, False, reason, message)
            out["message"] = message
            plan.retry_after = RETRY_SECONDS
            return finish()
        inputs.output_uri = results  # type: ignore[union-attr]
        conditions.set(C.VALIDATED, True, Reason.INPUTS_READY, "the dataset and every model are ready")
        conditions.set(C.RUNNING, False, Reason.POD_PENDING, "waiting for the evaluation pod to start")
        plan.create = build_children(spec, inputs)
        if status.get("jobName"):
            plan.events.append(Event("Warning", "JobRecreated", f"Job {job_name(name)} was missing; created it again"))
        out["jobName"] = job_name(name)
        out["message"] = f"Evaluation Job {job_name(name)} created; waiting for its pod"
        return finish()

    conditions.set(C.VALIDATED, True, Reason.INPUTS_READY, "the dataset and every model are ready")
    out["jobName"] = job_name(name)
    progress = observed.progress
    failed = _job_condition(job, "Failed", "FailureTarget")
    complete = _job_condition(job, "Complete", "SuccessCriteriaMet")
    if failed is not None:
        reason, message = failure(failed, progress, observed.pods)
        conditions.set(C.RUNNING, False, Reason.STOPPED, "the evaluator stopped")
        conditions.set(C.FAILED, True, reason, message)
        out["message"] = _clip(f"Evaluation failed: {reason}: {message}", 4096)
        _no_verdict(spec, conditions, "the evaluation failed; there are no scores")
        return finish()
    if complete is not None:
        summary = observed.summary
        if summary is None or not observed.results_complete:
            words = "summary.json does not follow the contract" if observed.summary_malformed else f"no complete results under {results}"
            message = f"the evaluator exited 0 but left {words}"
            conditions.set(C.RUNNING, False, Reason.STOPPED, "the evaluator exited")
            conditions.set(C.FAILED, True, Reason.INCOMPLETE_RESULTS, message)
            out["message"] = f"Evaluation failed: {message}"
            _no_verdict(spec, conditions, "the evaluation left no scores")
            return finish()
        return _completed(spec, summary, results, conditions, out, plan, status, finish)

    problem = pod_waiting_problem(observed.pods)
    if problem:
        reason, message = problem
        conditions.set(C.VALIDATED, False, reason, message)
        conditions.set(C.RUNNING, False, Reason.POD_PENDING, message)
        out["message"] = message
        plan.retry_after = RETRY_SECONDS
        return finish()
    if conditions.is_true(C.RUNNING) and job_behind_its_pods(job, observed.pods):
        # The evaluator's pod ended and the Job controller has not recorded it yet: hold the phase.
        out["message"] = status.get("message", "")
        if status.get("startTime"):
            out["startTime"] = status["startTime"]
        return finish()
    if _pods_running(observed.pods):
        reason, message = _progress_message(progress)
        conditions.set(C.RUNNING, True, reason, message)
        if not status.get("startTime"):
            out["startTime"] = rfc3339(now())
        out["message"] = message
        return finish()
    conditions.set(C.RUNNING, False, Reason.POD_PENDING, "waiting for the evaluation pod to start")
    out["message"] = "Waiting for the evaluation pod to start"
    return finish()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fail_invalid_spec(conditions: Conditions, out: dict, finish, message: str) -> Plan:
    conditions.set(C.VALIDATED, False, Reason.INVALID_SPEC, message)
    conditions.set(C.FAILED, True, Reason.INVALID_SPEC, message)
    out["message"] = _clip(f"Invalid spec: {message}", 4096)
    return finish()


def _no_verdict(spec: EvaluationSpec, conditions: Conditions, message: str) -> None:
    if spec.pass_criterion is not None:
        conditions.set(C.PASSED, False, Reason.SCORE_MISSING, message)


def _completed(spec: EvaluationSpec, summary: contract.EvaluationSummary, results: str, conditions: Conditions, out: dict, plan: Plan, status: dict, finish) -> Plan:
    rows = score_rows(summary)
    title = headline(spec, rows)
    out["scores"] = [r.dump() for r in rows]
    out["headline"] = title
    out["samples"] = summary.samples
    out["resultsUri"] = summary.results_uri or contract.join_uri(results, contract.RESULTS_FILE)
    if not status.get("startTime"):
        out["startTime"] = rfc3339(now())
    conditions.set(C.RUNNING, False, Reason.STOPPED, "the evaluator finished")
    conditions.set(C.SUCCEEDED, True, Reason.SCORED, f"{len(rows)} scores over {summary.samples} samples")
    out["message"] = f"Evaluation completed: {title}" if title else "Evaluation completed"
    if spec.pass_criterion is not None:
        passed, reason, message = pass_verdict(spec.pass_criterion, spec, rows)
        conditions.set(C.PASSED, passed, reason, message)
        plan.events.append(Event("Normal", "Passed", f"Pass criterion met: {message}") if passed else Event("Warning", "NotPassed", f"Pass criterion not met ({reason}): {message}"))
    return finish()


def _transition_event(phase: str, message: str) -> Event:
    if phase == "Running":
        return Event("Normal", "Running", "Evaluation started")
    if phase == "Completed":
        return Event("Normal", "Completed", message or "Evaluation completed")
    if phase == "Failed":
        return Event("Warning", "Failed", message or "Evaluation failed")
    return Event("Normal", "Pending", message or "Evaluation pending")
