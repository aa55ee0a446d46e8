"""Evaluation handlers: every trigger (the object itself, its Job and pods, the Datasets, FineTuneJobs and
InferenceEndpoints it waits for, a timer for progress) ends in the same level-triggered
``reconcile_evaluation``."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from finetune_trainer import contract
from pydantic import ValidationError

from finetune_operator import kube as k
from finetune_operator import metrics, naming, runtime
from finetune_operator.api import DATASET, EVALUATION, FINETUNEJOB, INFERENCEENDPOINT
from finetune_operator.api.evaluation import KIND, EvaluationSpec
from finetune_operator.handlers import common
from finetune_operator.reconcile import evaluation as rec

logger = logging.getLogger(__name__)

EVALUATIONS = EVALUATION.gvr
OWNER_LABEL = naming.owner_label(KIND)
FINAL_PHASES = ("Completed", "Failed")
PROGRESS_INTERVAL_SECONDS = 5


def _inputs_named(spec: dict) -> tuple[set[str], set[str]]:
    """(FineTuneJobs, InferenceEndpoints) the spec names, judges included."""
    jobs = {m["fineTuneJob"] for m in spec.get("models", []) or [] if m.get("fineTuneJob")}
    endpoints = {m["inferenceEndpoint"] for m in spec.get("models", []) or [] if m.get("inferenceEndpoint")}
    endpoints |= {g["judge"]["inferenceEndpoint"] for g in spec.get("graders", []) or [] if (g.get("judge") or {}).get("inferenceEndpoint")}
    return jobs, endpoints


def _ended(job: dict, *types: str) -> bool:
    return any(c.get("type") in types and c.get("status") == "True" for c in (job.get("status") or {}).get("conditions", []) or [])


def _observe(body: dict, rt: runtime.Runtime) -> rec.Observed:
    meta, spec, status = body["metadata"], body.get("spec", {}) or {}, body.get("status", {}) or {}
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    observed = rec.Observed()
    if status.get("phase") in FINAL_PHASES and status.get("conditions"):
        return observed
    observed.job = rt.kube.get(k.JOBS, ns, naming.evaluation_job_name(name))
    if observed.job is None:
        # Inputs matter only until the Job exists: its config is fixed then.
        if spec.get("dataset"):
            observed.dataset = rt.kube.get(k.DATASETS, ns, spec["dataset"])
        jobs, endpoints = _inputs_named(spec)
        observed.finetunejobs = {j: rt.kube.get(k.FINETUNEJOBS, ns, j) for j in sorted(jobs)}
        observed.endpoints = {e: rt.kube.get(k.INFERENCEENDPOINTS, ns, e) for e in sorted(endpoints)}
        observed.secrets = common.secret_labels(rt, ns, EvaluationSpec, spec)
        return observed
    observed.pods = rt.kube.list(k.PODS, ns, label_selector=f"{naming.JOB_NAME_LABEL}={naming.evaluation_job_name(name)}")
    output = naming.evaluation_output_uri(rt.config, ns, name, uid)
    observed.progress = rt.storage.read_progress(output)
    if _ended(observed.job, "Complete", "SuccessCriteriaMet"):
        observed.results_complete = rt.storage.manifest_exists(output)
        data = rt.storage.read_json(contract.join_uri(output, contract.SUMMARY_FILE))
        if data is not None:
            try:
                observed.summary = contract.EvaluationSummary.model_validate(data)
            except ValidationError:
                logger.warning("the summary of %s/%s does not follow the contract", ns, name)
                observed.summary_malformed = True
    return observed


def reconcile_evaluation(namespace: str, name: str, body: dict | None = None) -> rec.EvaluationPlan | None:
    """Read, decide, act, write status. Serialised per object."""

    def decide(fresh: dict, rt: runtime.Runtime) -> rec.EvaluationPlan:
        return rec.reconcile(fresh, _observe(fresh, rt), rt.config)

    def act(fresh: dict, rt: runtime.Runtime, plan: rec.EvaluationPlan) -> None:
        for child in plan.create:
            rt.kube.create(child)

    done = common.reconcile_object(KIND, k.EVALUATIONS, namespace, name, body, decide, act)
    return done[1] if done else None


@kopf.on.resume(*EVALUATIONS)
@kopf.on.create(*EVALUATIONS)
@kopf.on.update(*EVALUATIONS)
def on_evaluation(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    reconcile_evaluation(namespace, name, body=dict(body))


@kopf.timer(*EVALUATIONS, interval=PROGRESS_INTERVAL_SECONDS, initial_delay=PROGRESS_INTERVAL_SECONDS,
            when=lambda status, **_: (status or {}).get("phase") == "Running")
def poll_progress(namespace: str, name: str, **_: Any) -> None:
    """While the evaluator runs, progress.json changes without any API event: read it every few seconds."""
    reconcile_evaluation(namespace, name)


@kopf.timer(*EVALUATIONS, interval=30, initial_delay=30, when=lambda status, **_: (status or {}).get("phase") == "Pending")
def retry_pending(namespace: str, name: str, **_: Any) -> None:
    """The backstop for what sends no event (a Secret created later)."""
    reconcile_evaluation(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={OWNER_LABEL: kopf.PRESENT})
def on_evaluation_job(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    reconcile_evaluation(namespace, labels[OWNER_LABEL])


@kopf.on.event("", "v1", "pods", labels={OWNER_LABEL: kopf.PRESENT})
def on_evaluation_pod(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    reconcile_evaluation(namespace, labels[OWNER_LABEL])


@kopf.index(*EVALUATIONS)
def evaluations_by_input(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict:
    """(kind, namespace, input name) → the Evaluations waiting for that input."""
    jobs, endpoints = _inputs_named(dict(spec))
    keys = {("Dataset", namespace, spec.get("dataset"))}
    keys |= {("FineTuneJob", namespace, j) for j in jobs}
    keys |= {("InferenceEndpoint", namespace, e) for e in endpoints}
    return {key: name for key in keys if key[2]}


def _wake(kind: str, namespace: str, name: str, index: kopf.Index) -> None:
    for evaluation in set(index.get((kind, namespace, name), [])):
        reconcile_evaluation(namespace, evaluation)


@kopf.on.field(*DATASET.gvr, field="status.phase")
def on_dataset_phase_for_evaluations(namespace: str, name: str, evaluations_by_input: kopf.Index, **_: Any) -> None:
    """A Dataset became Ready: the Evaluations waiting for it start at once."""
    _wake("Dataset", namespace, name, evaluations_by_input)


@kopf.on.field(*FINETUNEJOB.gvr, field="status.phase")
def on_finetunejob_phase_for_evaluations(namespace: str, name: str, evaluations_by_input: kopf.Index, **_: Any) -> None:
    """A FineTuneJob completed: the Evaluations of its model start at once."""
    _wake("FineTuneJob", namespace, name, evaluations_by_input)


@kopf.on.field(*INFERENCEENDPOINT.gvr, field="status.phase")
def on_endpoint_phase_for_evaluations(namespace: str, name: str, evaluations_by_input: kopf.Index, **_: Any) -> None:
    """An InferenceEndpoint became Ready: the Evaluations of its models start at once."""
    _wake("InferenceEndpoint", namespace, name, evaluations_by_input)


@kopf.on.field(*INFERENCEENDPOINT.gvr, field="status.models")
def on_endpoint_models_for_evaluations(namespace: str, name: str, evaluations_by_input: kopf.Index, **_: Any) -> None:
    """A Ready endpoint began serving another model (an adapter hot-loaded): Evaluations of it start at once."""
    _wake("InferenceEndpoint", namespace, name, evaluations_by_input)


@kopf.on.delete(*EVALUATIONS, optional=True)
def on_evaluation_deleted(namespace: str, name: str, uid: str, **_: Any) -> None:
    """Children go with the owner (owner references); the results in the object store stay."""
    metrics.PHASES.set(KIND, namespace, name, None)
    runtime.forget(uid)
