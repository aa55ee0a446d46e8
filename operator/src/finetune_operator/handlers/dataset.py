"""Dataset handlers: every trigger (the object itself, its validation Job and pods, a slow retry timer)
ends in the same level-triggered ``reconcile_dataset``; deletion waits while a FineTuneJob uses it."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from finetune_trainer import contract
from pydantic import ValidationError

from finetune_operator import kube as k
from finetune_operator import metrics, naming, runtime
from finetune_operator.api import DATASET
from finetune_operator.api.dataset import KIND, DatasetSpec
from finetune_operator.api.finetunejob import TERMINAL_PHASES
from finetune_operator.handlers import common
from finetune_operator.reconcile import dataset as rec

logger = logging.getLogger(__name__)

DATASETS = DATASET.gvr
OWNER_LABEL = naming.owner_label(KIND)
FINAL_PHASES = ("Ready", "Invalid")
DELETE_RETRY_SECONDS = 10


def _finished_or_failing(job: dict) -> bool:
    status = job.get("status", {}) or {}
    ended = any(c.get("status") == "True" and c.get("type") in ("Complete", "Failed", "FailureTarget", "SuccessCriteriaMet") for c in status.get("conditions", []) or [])
    return ended or int(status.get("failed", 0) or 0) > 0


def _observe(body: dict, rt: runtime.Runtime) -> rec.Observed:
    meta, status = body["metadata"], body.get("status", {}) or {}
    ns, name, uid, generation = meta["namespace"], meta["name"], meta["uid"], meta.get("generation")
    observed = rec.Observed()
    if status.get("observedGeneration") == generation and status.get("phase") in FINAL_PHASES:
        return observed  # final for this generation: nothing to read
    child = naming.validation_job_name(name, generation)
    observed.job = rt.kube.get(k.JOBS, ns, child)
    if observed.job is None:
        observed.secrets = common.secret_labels(rt, ns, DatasetSpec, body.get("spec") or {})
        return observed
    observed.pods = rt.kube.list(k.PODS, ns, label_selector=f"{naming.JOB_NAME_LABEL}={child}")
    if not _finished_or_failing(observed.job):
        return observed
    data = rt.storage.read_json(naming.dataset_report_uri(rt.config, ns, name, uid, generation))
    if data is not None:
        try:
            observed.report = contract.DatasetCheckReport.model_validate(data)
        except ValidationError:
            logger.warning("the check report of %s/%s does not follow the contract", ns, name)
            observed.report_malformed = True
    report = observed.report
    if report is not None and report.is_check_passed and report.sha256:
        observed.manifest_exists = rt.storage.manifest_exists(naming.dataset_folder_uri(rt.config, ns, name, report.sha256))
    return observed


def reconcile_dataset(namespace: str, name: str, body: dict | None = None, retry_failed: bool = False) -> rec.DatasetPlan | None:
    """Read, decide, act, write status. Serialised per object."""

    def decide(fresh: dict, rt: runtime.Runtime) -> rec.DatasetPlan:
        return rec.reconcile(fresh, _observe(fresh, rt), rt.config, retry_failed=retry_failed)

    def act(fresh: dict, rt: runtime.Runtime, plan: rec.DatasetPlan) -> None:
        for child in plan.create:
            rt.kube.create(child)
        for job in plan.delete_jobs:
            rt.kube.delete(k.JOBS, namespace, job)

    done = common.reconcile_object(KIND, k.DATASETS, namespace, name, body, decide, act)
    return done[1] if done else None


@kopf.on.resume(*DATASETS)
@kopf.on.create(*DATASETS)
@kopf.on.update(*DATASETS)
def on_dataset(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    reconcile_dataset(namespace, name, body=dict(body))


@kopf.timer(*DATASETS, interval=30, initial_delay=30, when=lambda status, **_: (status or {}).get("phase") in ("Pending", "Validating"))
def retry_waiting(namespace: str, name: str, **_: Any) -> None:
    """The backstop for what sends no event (a source that comes back, a report that could not be read
    yet), and the only place a failed validation that may heal is started again: at most every 30 s."""
    reconcile_dataset(namespace, name, retry_failed=True)


@kopf.on.event("batch", "v1", "jobs", labels={OWNER_LABEL: kopf.PRESENT})
def on_validation_job(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    reconcile_dataset(namespace, labels[OWNER_LABEL])


@kopf.on.event("", "v1", "pods", labels={OWNER_LABEL: kopf.PRESENT})
def on_validation_pod(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    reconcile_dataset(namespace, labels[OWNER_LABEL])


def users_of(name: str, finetunejobs: list[dict]) -> list[str]:
    """FineTuneJobs that name the Dataset (dataset or validationDataset) and have not ended."""
    users = []
    for job in finetunejobs:
        spec = job.get("spec", {}) or {}
        if name not in (spec.get("dataset"), spec.get("validationDataset")):
            continue
        if (job.get("status", {}) or {}).get("phase") not in TERMINAL_PHASES:
            users.append(job["metadata"]["name"])
    return sorted(users)


@kopf.on.delete(*DATASETS)
def on_dataset_deleted(body: kopf.Body, namespace: str, name: str, uid: str, retry: int, **_: Any) -> None:
    """Held back (by the finalizer kopf adds for this handler) while a FineTuneJob still uses the Dataset.
    The validation Jobs go with it (owner references); the data in the object store stays."""
    rt = runtime.get()
    # In a namespace being deleted its FineTuneJobs go too: holding the Dataset back would only delay that.
    users = [] if runtime.namespace_terminating(namespace) else users_of(name, rt.kube.list(k.FINETUNEJOBS, namespace))
    if users:
        message = f"Deletion waits for FineTuneJob {', '.join(users)} to end (it uses this Dataset)"
        if retry % 30 == 0:  # said once, and again every few minutes while it waits
            kopf.event(body, type="Normal", reason="DeletionBlocked", message=message)
        raise kopf.TemporaryError(message, delay=DELETE_RETRY_SECONDS)
    metrics.PHASES.set(KIND, namespace, name, None)
    runtime.forget(uid)
