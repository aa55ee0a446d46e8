"""FineTuneJob handlers: every trigger (the object itself, its Job and pods, its Datasets, a timer
for progress) ends in the same level-triggered ``reconcile_finetunejob``."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf

from finetune_operator import kube as k
from finetune_operator import metrics, naming, runtime
from finetune_operator.api import DATASET, FINETUNEJOB
from finetune_operator.api.finetunejob import KIND, TERMINAL_PHASES, FineTuneJobSpec
from finetune_operator.config import OperatorConfig
from finetune_operator.handlers import common
from finetune_operator.reconcile import finetunejob as rec

logger = logging.getLogger(__name__)

FTJ = FINETUNEJOB.gvr
OWNER_LABEL = naming.owner_label(KIND)
_ENV_CONFIG = OperatorConfig.from_env()
ACTIVE_PHASES = ("Running", "Uploading")


def _observe(body: dict, rt: runtime.Runtime) -> rec.Observed:
    meta, spec, status = body["metadata"], body.get("spec", {}), body.get("status", {}) or {}
    ns, name = meta["namespace"], meta["name"]
    observed = rec.Observed()
    if status.get("phase") in TERMINAL_PHASES and status.get("conditions"):
        return observed
    if spec.get("dataset"):
        observed.dataset = rt.kube.get(k.DATASETS, ns, spec["dataset"])
    if spec.get("validationDataset"):
        observed.validation_dataset = rt.kube.get(k.DATASETS, ns, spec["validationDataset"])
    if spec.get("fromCheckpoint"):
        observed.checkpoint_source = rt.kube.get(k.FINETUNEJOBS, ns, spec["fromCheckpoint"].partition(":")[0])
    child = naming.trainer_job_name(name)
    observed.job = rt.kube.get(k.JOBS, ns, child)
    if observed.job is None:
        observed.config_map = rt.kube.get(k.CONFIGMAPS, ns, child)  # the inputs, if the Job was ever made
        observed.secrets = common.secret_labels(rt, ns, FineTuneJobSpec, spec)
    else:
        observed.pods = rt.kube.list(k.PODS, ns, label_selector=f"{naming.JOB_NAME_LABEL}={child}")
        if status.get("artifactsUri"):
            observed.progress = rt.storage.read_progress(status["artifactsUri"])
        complete = any(c.get("type") == "Complete" and c.get("status") == "True" for c in observed.job.get("status", {}).get("conditions", []) or [])
        if complete and observed.progress is not None and observed.progress.model_uri:
            observed.model_complete = rt.storage.manifest_exists(observed.progress.model_uri)
    return observed


def queue_wait_seconds(status_before: dict, now_: dt.datetime | None = None) -> float | None:
    queued_at = (status_before.get("queue") or {}).get("queuedAt")
    if not queued_at:
        return None
    t = dt.datetime.fromisoformat(queued_at.replace("Z", "+00:00"))
    return max(0.0, ((now_ or dt.datetime.now(dt.UTC)) - t).total_seconds())


def reconcile_finetunejob(namespace: str, name: str, body: dict | None = None, raise_retry: bool = False) -> rec.FineTuneJobPlan | None:
    """Read, decide, act, write status. Serialised per object."""

    def decide(fresh: dict, rt: runtime.Runtime) -> rec.FineTuneJobPlan:
        return rec.reconcile(fresh, _observe(fresh, rt), rt.config)

    def act(fresh: dict, rt: runtime.Runtime, plan: rec.FineTuneJobPlan) -> None:
        for child in plan.create:
            rt.kube.create(child)
        if plan.job_patch:
            rt.kube.patch(k.JOBS, namespace, naming.trainer_job_name(name), plan.job_patch)
        if plan.delete_job:
            rt.kube.delete(k.JOBS, namespace, naming.trainer_job_name(name))

    done = common.reconcile_object(KIND, k.FINETUNEJOBS, namespace, name, body, decide, act)
    if done is None:
        return None
    fresh, plan = done
    if plan.new_phase == "Running" and plan.old_phase in ("Queued", "Pending", None):
        waited = queue_wait_seconds(fresh.get("status") or {})
        if waited is not None:
            metrics.QUEUE_WAIT.observe(waited)
    if raise_retry and plan.retry_after:
        raise kopf.TemporaryError(plan.status.get("message") or "waiting", delay=plan.retry_after)
    return plan


@kopf.on.resume(*FTJ)
@kopf.on.create(*FTJ)
@kopf.on.update(*FTJ)
def on_finetunejob(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    reconcile_finetunejob(namespace, name, body=dict(body))


@kopf.timer(*FTJ, interval=_ENV_CONFIG.progress_interval_seconds, initial_delay=_ENV_CONFIG.progress_interval_seconds,
            when=lambda status, **_: (status or {}).get("phase") in ACTIVE_PHASES)
def poll_progress(namespace: str, name: str, **_: Any) -> None:
    """While the trainer runs, progress.json changes without any API event: read it every interval."""
    reconcile_finetunejob(namespace, name)


WAITING_PHASES = ("Pending", "Queued", "Suspended")


@kopf.timer(*FTJ, interval=30, initial_delay=30, when=lambda status, **_: (status or {}).get("phase") in WAITING_PHASES)
def resync_waiting(namespace: str, name: str, **_: Any) -> None:
    """Waiting is driven by events (a Dataset's phase, a pod's state, a spec change); this slow timer is
    the level-triggered backstop for what sends none (a Secret created later) and for an event a watch
    reconnect lost, without logging the wait as an error. A reconcile that finds nothing new writes nothing."""
    reconcile_finetunejob(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={OWNER_LABEL: kopf.PRESENT})
def on_trainer_job(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    reconcile_finetunejob(namespace, labels[OWNER_LABEL])


@kopf.on.event("", "v1", "pods", labels={OWNER_LABEL: kopf.PRESENT})
def on_trainer_pod(labels: kopf.Labels, namespace: str, **_: Any) -> None:
    reconcile_finetunejob(namespace, labels[OWNER_LABEL])


@kopf.index(*FTJ)
def finetunejobs_by_dataset(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict:
    keys = {(namespace, spec.get("dataset")), (namespace, spec.get("validationDataset")), (namespace, (spec.get("fromCheckpoint") or "").partition(":")[0])}
    return {key: name for key in keys if key[1]}


@kopf.index(*FTJ, when=lambda status, **_: (status or {}).get("phase") == "Queued" and bool(((status or {}).get("queue") or {}).get("name")))
def queued_finetunejobs(namespace: str, name: str, status: kopf.Status, meta: kopf.Meta, **_: Any) -> dict:
    queue = status["queue"]
    return {(namespace, queue["name"]): (queue.get("queuedAt") or "", meta.get("creationTimestamp") or "", name)}


def queue_position(queued: kopf.Index, namespace: str, queue: str, name: str) -> int | None:
    """1 for the job that waited longest in this queue among this operator's Queued jobs."""
    entries = sorted(set(queued.get((namespace, queue), [])))
    names = [entry[2] for entry in entries]
    return names.index(name) + 1 if name in names else None


@kopf.timer(*FTJ, interval=15, initial_delay=2, when=lambda status, **_: (status or {}).get("phase") == "Queued" and bool(((status or {}).get("queue") or {}).get("name")))
def refresh_queue_position(namespace: str, name: str, status: kopf.Status, queued_finetunejobs: kopf.Index, **_: Any) -> None:
    """Queue position, as the hosted services show it: cheap (the index is in memory), patched only on change."""
    queue = dict(status.get("queue") or {})
    position = queue_position(queued_finetunejobs, namespace, queue["name"], name)
    if position is not None and position != queue.get("position"):
        runtime.get().kube.patch_status(k.FINETUNEJOBS, namespace, name, {"queue": {"position": position}})


@kopf.on.field(*DATASET.gvr, field="status.phase")
def on_dataset_phase(namespace: str, name: str, finetunejobs_by_dataset: kopf.Index, **_: Any) -> None:
    """A Dataset became Ready (or Invalid): the jobs waiting for it move on at once."""
    for job in set(finetunejobs_by_dataset.get((namespace, name), [])):
        reconcile_finetunejob(namespace, job)


@kopf.on.field(*FTJ, field="status.phase")
def on_finetunejob_phase(namespace: str, name: str, new: str | None, finetunejobs_by_dataset: kopf.Index, **_: Any) -> None:
    """A job completed (or reached a checkpoint): jobs continuing from it (fromCheckpoint) move on."""
    for job in set(finetunejobs_by_dataset.get((namespace, name), [])):
        if job != name:
            reconcile_finetunejob(namespace, job)


@kopf.on.delete(*FTJ, optional=_ENV_CONFIG.artifact_policy != "delete")
def on_finetunejob_deleted(body: kopf.Body, namespace: str, name: str, uid: str, status: kopf.Status, **_: Any) -> None:
    """Children go with the owner (owner references). Artifacts stay unless FINETUNE_ARTIFACT_POLICY=delete."""
    rt = runtime.get()
    metrics.PHASES.set(KIND, namespace, name, None)
    runtime.forget(uid)
    uri = (status or {}).get("artifactsUri")
    if rt.config.artifact_policy == "delete" and uri:
        deleted = rt.storage.delete_prefix(uri)
        logger.info("deleted %d artifacts of %s/%s under %s", deleted, namespace, name, uri)
