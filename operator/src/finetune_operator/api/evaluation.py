"""Evaluation: grade models on a Dataset and compare them with a baseline (base versus fine-tuned)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from finetune_trainer import contract

from finetune_operator.config import OperatorConfig

from finetune_operator.api.common import (
    DNS_SUBDOMAIN,
    MODEL_URI,
    ApiModel,
    Condition,
    GpuResources,
    SecretKeyRef,
    cel,
    conditions_field,
)

KIND = "Evaluation"
PLURAL = "evaluations"
SINGULAR = "evaluation"
SHORT_NAMES = ["fteval"]

Phase = Literal["Pending", "Running", "Completed", "Failed"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]

ROW_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class ConditionType:
    VALIDATED = "Validated"
    """Spec and inputs are ready. Reasons: InputsReady, InvalidSpec, DatasetNotFound, DatasetNotReady,
    ModelNotFound, ModelNotReady, SecretNotFound."""
    RUNNING = "Running"
    """The evaluation Job runs. Reasons: PodPending, Evaluating, Uploading, Stopped."""
    SUCCEEDED = "Succeeded"
    """Scores are in status. Reasons: Scored."""
    FAILED = "Failed"
    """No scores. Reasons: InvalidSpec, the evaluator's own (UnknownGrader, InvalidRegex, NoReferences,
    ModelNotFound, ...), IncompleteResults, BackoffLimitExceeded, EvaluatorFailed."""
    PASSED = "Passed"
    """The pass criterion holds. Reasons: CriterionMet, CriterionNotMet, ScoreMissing."""


class Reason:
    INPUTS_READY = "InputsReady"
    INVALID_SPEC = "InvalidSpec"
    DATASET_NOT_FOUND = "DatasetNotFound"
    DATASET_NOT_READY = "DatasetNotReady"
    MODEL_NOT_FOUND = "ModelNotFound"
    MODEL_NOT_READY = "ModelNotReady"
    SECRET_NOT_FOUND = "SecretNotFound"
    POD_PENDING = "PodPending"
    EVALUATING = "Evaluating"
    UPLOADING = "Uploading"
    STOPPED = "Stopped"
    SCORED = "Scored"
    INCOMPLETE_RESULTS = "IncompleteResults"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    EVALUATOR_FAILED = "EvaluatorFailed"
    CRITERION_MET = "CriterionMet"
    CRITERION_NOT_MET = "CriterionNotMet"
    SCORE_MISSING = "ScoreMissing"


class EvaluatedModel(ApiModel):
    """A model to evaluate. Exactly one of inferenceEndpoint, fineTuneJob and baseModel."""

    name: str = Field(description="name of the row in the results table (e.g. base, fine-tuned).", max_length=63, pattern=ROW_NAME)
    inference_endpoint: str | None = Field(
        default=None,
        description="inferenceEndpoint names a Ready InferenceEndpoint of this namespace; answers come from its API.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    model: str | None = Field(
        default=None,
        description="model to request from the inferenceEndpoint (one of its served names). Default: its base model.",
        max_length=128,
    )
    fine_tune_job: str | None = Field(
        default=None,
        description="fineTuneJob names a Completed FineTuneJob; its output model is loaded directly by the evaluation Job.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    base_model: str | None = Field(
        default=None,
        description="baseModel is a model URI (hf://, s3://, pvc://) loaded directly by the evaluation Job.",
        max_length=1024,
        pattern=MODEL_URI,
    )

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [
            cel(
                "(has(self.inferenceEndpoint) ? 1 : 0) + (has(self.fineTuneJob) ? 1 : 0) + (has(self.baseModel) ? 1 : 0) == 1",
                "set exactly one of inferenceEndpoint, fineTuneJob and baseModel",
            ),
            cel("!has(self.model) || has(self.inferenceEndpoint)", "model goes with inferenceEndpoint", field_path=".model"),
        ]
    }


class JudgeSpec(ApiModel):
    """The judge model of an llm_judge grader: any OpenAI-compatible endpoint."""

    inference_endpoint: str | None = Field(default=None, description="inferenceEndpoint names an InferenceEndpoint of this namespace.", max_length=253)
    url: str | None = Field(default=None, description="url of an OpenAI-compatible API (…/v1).", max_length=1024, pattern=r"^https?://[^\s]+$")
    model: str = Field(description="model name to send to the judge.", max_length=256)
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, description="apiKeySecretRef for the judge's API key (key `apiKey`).")

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [cel("has(self.inferenceEndpoint) != has(self.url)", "set exactly one of inferenceEndpoint and url")]
    }


class GraderSpec(ApiModel):
    """How answers are scored."""

    name: str = Field(description="name of the grader (a column of the results table).", max_length=63, pattern=ROW_NAME)
    type: Literal["exact_match", "f1", "contains", "regex", "semantic_similarity", "llm_judge", "pairwise"] = Field(
        description="type: exact_match and f1 (SQuAD normalisation), contains, regex, semantic_similarity "
        "(embedding cosine), llm_judge (a rubric prompt to a judge model), pairwise (the judge picks the better of "
        "a model's answer and the baseline's, asked twice with the answers' order swapped; the score is the win "
        "rate against the baseline, a tie counting half; needs spec.baseline)."
    )
    pattern: str | None = Field(default=None, description="pattern of a regex grader; the answer passes when it matches.", max_length=4096)
    case_sensitive: bool = Field(default=False, description="caseSensitive for contains and regex. Default false.")
    threshold: float | None = Field(default=None, ge=0, le=1, description="threshold turns a similarity score into pass (1) or fail (0).")
    judge: JudgeSpec | None = Field(default=None, description="judge model of an llm_judge or pairwise grader.")
    rubric: str | None = Field(
        default=None,
        description="rubric of an llm_judge grader: what a good answer is; of a pairwise grader: what makes one answer "
        "better than another (unset: helpful, correct and following the conversation's instructions).",
        max_length=16384,
    )

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [
            cel("self.type != 'regex' || has(self.pattern)", "a regex grader needs a pattern", field_path=".pattern"),
            cel("self.type != 'llm_judge' || (has(self.judge) && has(self.rubric))", "an llm_judge grader needs judge and rubric", field_path=".judge"),
            cel("self.type != 'pairwise' || has(self.judge)", "a pairwise grader needs a judge", field_path=".judge"),
        ]
    }


class GenerationSpec(ApiModel):
    max_tokens: int = Field(default=128, ge=1, le=32768, description="maxTokens per answer. Default 128.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="temperature; 0 decodes greedily (deterministic). Default 0.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="topP nucleus sampling. Default 1.")
    seed: int = Field(default=0, ge=0, le=4294967295, description="seed for sampling. Default 0.")
    stop: list[str] = Field(default_factory=list, max_length=4, description="stop sequences.", json_schema_extra={"items": {"type": "string", "maxLength": 64}})


class EvaluationResources(GpuResources):
    """Compute resources of the evaluation pod."""

    gpus: int = Field(
        default=0,
        ge=0,
        le=16,
        description="gpus of the evaluation pod (nvidia.com/gpu by default). Models loaded directly (fineTuneJob, "
        "baseModel) run on them; 0 runs on CPU, enough for models behind an inferenceEndpoint. Default 0.",
    )


class PassCriterion(ApiModel):
    """When the Passed condition is True: a GitOps pipeline promotes a model only when it beats its base."""

    grader: str = Field(description="grader whose score decides.", max_length=63)
    min_delta: float | None = Field(default=None, description="minDelta every non-baseline model must beat the baseline by.")
    min_score: float | None = Field(default=None, description="minScore every non-baseline model must reach.")

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [cel("has(self.minDelta) || has(self.minScore)", "set minDelta or minScore")]
    }


class EvaluationSpec(ApiModel):
    models: list[EvaluatedModel] = Field(min_length=1, max_length=8, description="models to evaluate, one row each.")
    baseline: str | None = Field(default=None, description="baseline names the row the others are compared with.", max_length=63)
    dataset: str = Field(description="dataset names a Ready Dataset of this namespace.", max_length=253, pattern=DNS_SUBDOMAIN)
    split: Literal["validation", "train"] = Field(
        default="validation", description="split of the Dataset to use. Default validation (falls back to train when there is none)."
    )
    max_samples: int | None = Field(default=None, ge=1, le=1000000, description="maxSamples to evaluate (the first ones). Default all.")
    graders: list[GraderSpec] = Field(min_length=1, max_length=16, description="graders scoring each answer.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="generation settings.")
    regrade: bool = Field(default=False, description="regrade grades the responses already in the dataset (`response` fields) without generating.")
    pass_criterion: PassCriterion | None = Field(default=None, description="passCriterion sets the Passed condition.")
    resources: EvaluationResources = Field(
        default_factory=EvaluationResources, description="resources of the evaluation pod. Default: no GPU, the operator's default cpu and memory."
    )

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [
            cel("self.models.all(m, self.models.exists_one(n, n.name == m.name))", "model names must be unique", field_path=".models"),
            cel("self.graders.all(g, self.graders.exists_one(h, h.name == g.name))", "grader names must be unique", field_path=".graders"),
            cel("!has(self.baseline) || self.models.exists(m, m.name == self.baseline)", "baseline must name one of models", field_path=".baseline"),
            cel(
                "has(self.baseline) || !self.graders.exists(g, g.type == 'pairwise')",
                "a pairwise grader compares each model with the baseline: set baseline",
                field_path=".baseline",
            ),
            cel(
                "!has(self.passCriterion) || self.graders.exists(g, g.name == self.passCriterion.grader)",
                "passCriterion.grader must name one of graders",
                field_path=".passCriterion.grader",
            ),
            cel("self == oldSelf", "an Evaluation is immutable; create a new one"),
        ]
    }


class ScoreStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    model: str = Field(description="model row.", max_length=63)
    grader: str = Field(description="grader column.", max_length=63)
    mean: float | None = Field(default=None, description="mean score over the samples graded (unset when none was).")
    ci_low: float | None = Field(default=None, description="ciLow: lower bound of the 95% confidence interval.")
    ci_high: float | None = Field(default=None, description="ciHigh: upper bound of the 95% confidence interval.")
    n: int = Field(default=0, description="n samples graded.")
    errors: int = Field(default=0, description="errors: samples that could not be answered or graded.")
    delta: float | None = Field(default=None, description="delta: mean minus the baseline's mean for the same grader.")


class EvaluationStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: Phase = Field(default="Pending", description="phase: Pending, Running, Completed or Failed.")
    message: str = Field(default="", description="message is the latest human-readable word on the evaluation.", max_length=4096)
    conditions: list[Condition] = conditions_field()
    observed_generation: int | None = Field(default=None, description="observedGeneration is the metadata.generation this status describes.")
    scores: list[ScoreStatus] = Field(default_factory=list, max_length=128, description="scores per model and grader.")
    headline: str | None = Field(default=None, description="headline: the first grader's score of the first non-baseline model and its delta.", max_length=128)
    samples: int | None = Field(default=None, description="samples evaluated.")
    results_uri: str | None = Field(default=None, description="resultsUri of the per-sample results (JSONL).", max_length=2048)
    job_name: str | None = Field(default=None, description="jobName of the evaluation Job.", max_length=63)
    start_time: dt.datetime | None = Field(default=None, description="startTime of the evaluation Job.")
    completion_time: dt.datetime | None = Field(default=None, description="completionTime when scores were written.")


# ----------------------------------------------------------------------------------------------
# The evaluator's summary (finetune_trainer.contract.EvaluationSummary) as status shows it, and the gate


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
# What the schema cannot check


def spec_problems(spec: EvaluationSpec, config: OperatorConfig) -> list[str]:
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
        if g.type == "pairwise" and g.judge is None:
            problems.append(f"spec.graders[{i}].judge: a pairwise grader needs a judge")
        if g.type == "pairwise" and not spec.baseline:
            problems.append(f"spec.baseline: grader {g.name} (pairwise) compares each model with the baseline: set baseline")
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
