"""What a child batch/v1 Job and its pods say, read the same way by every kind's reconcile."""

from __future__ import annotations

import datetime as dt
import re

from finetune_operator.reconcile.conditions import now, rfc3339
from finetune_trainer import contract


def _disrupted(pod: dict) -> bool:
    """A pod stopped by a disruption (preemption, eviction, a lost node): the trainer Jobs' podFailurePolicy
    ignores it, so the Job never counts it as failed."""
    return any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or []
    )


def job_behind_its_pods(job: dict, pods: list[dict]) -> bool:
    """Whether a pod of ``job`` has ended that the Job's status does not count yet.

    Between a pod ending and the Job controller recording it (succeeded, failed, Complete or Failed) there
    is a gap of milliseconds to seconds. In that gap the Job has no active pod and no verdict, and a phase
    derived from it would step back (Running → Queued → Completed). Until the Job catches up nothing new is
    known, so the reconcilers keep the phase they had.
    """
    status = job.get("status") or {}
    uncounted = status.get("uncountedTerminatedPods") or {}
    if uncounted.get("succeeded") or uncounted.get("failed"):
        return True
    succeeded = failed = 0
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Succeeded":
            succeeded += 1
        elif phase == "Failed" and not _disrupted(pod):
            failed += 1
    return succeeded > int(status.get("succeeded") or 0) or failed > int(status.get("failed") or 0)


def owned_by(pod: dict, job: dict) -> bool:
    """Whether ``pod`` belongs to ``job`` (a pod of an older Job of the same name does not)."""
    uid = job.get("metadata", {}).get("uid")
    refs = pod.get("metadata", {}).get("ownerReferences") or []
    return not uid or not refs or any(r.get("uid") == uid for r in refs)


def last_exit_code(pods: list[dict]) -> int | None:
    """Exit code of the newest terminated container of ``pods``."""
    newest: tuple[str, int] | None = None
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if term.get("exitCode") is not None:
                stamp = term.get("finishedAt") or ""
                if newest is None or stamp >= newest[0]:
                    newest = (stamp, int(term["exitCode"]))
    return newest[1] if newest else None


SECRET_NOT_FOUND = "SecretNotFound"
POD_PENDING = "PodPending"


def missing_secret(pods: list[dict]) -> str | None:
    """The Secret a pod's container waits for: named in env (CreateContainerConfigError), or mounted as a
    volume (the pod stays ContainerCreating with the same words)."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses", []) or []:
            message = ((cs.get("state") or {}).get("waiting") or {}).get("message") or ""
            found = re.search(r'secrets? "([^"]+)" not found', message, re.IGNORECASE)
            if found:
                return found.group(1)
    return None


def missing_config_map(pods: list[dict]) -> str | None:
    """What a pod's container says of a ConfigMap (or key) it waits for, in a sentence; None when none."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses", []) or []:
            message = ((cs.get("state") or {}).get("waiting") or {}).get("message") or ""
            found = re.search(r'configmap "([^"]+)" (not found|has no key "([^"]+)")', message, re.IGNORECASE)
            if found and found.group(3):
                return f"ConfigMap {found.group(1)} has no key {found.group(3)}"
            if found:
                return f"ConfigMap {found.group(1)} does not exist in this namespace"
            if "non-existent config key" in message:
                return f"the ConfigMap has no such key: {message}"
    return None


def pod_waiting_problem(pods: list[dict]) -> tuple[str, str] | None:
    """(reason, message) when a pod cannot start for something the user must create or fix."""
    secret = missing_secret(pods)
    if secret:
        return SECRET_NOT_FOUND, f"Secret {secret} does not exist in this namespace"
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses", []) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in {"CreateContainerConfigError", "CreateContainerError"}:
                return POD_PENDING, waiting.get("message") or waiting["reason"]
    return None


def pods_running(pods: list[dict]) -> bool:
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)


def pods_unscheduled(pods: list[dict]) -> bool:
    return not any(
        c.get("type") == "PodScheduled" and c.get("status") == "True"
        for pod in pods for c in (pod.get("status") or {}).get("conditions", []) or []
    )  # fmt: skip


def termination_message(pods: list[dict]) -> str | None:
    """A container's termination message from the newest failed pod: the trainer's own last word."""
    newest: tuple[str, str] | None = None
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if term.get("exitCode") not in (None, 0) and term.get("message"):
                stamp = term.get("finishedAt") or ""
                if newest is None or stamp > newest[0]:
                    newest = (stamp, term["message"].strip())
    return newest[1] if newest else None


def typed_reason(message: str, fallback: str) -> tuple[str, str]:
    """``Reason: words`` (how the trainer's termination messages start) → (Reason, words); else (fallback, message)."""
    reason, sep, rest = message.partition(":")
    if sep and re.fullmatch(r"[A-Z][A-Za-z]+", reason.strip()):
        return reason.strip(), rest.strip()
    return fallback, message


def job_condition(job: dict | None, *types: str) -> dict | None:
    """The first True condition of one of ``types`` on a batch/v1 Job."""
    for c in (job or {}).get("status", {}).get("conditions", []) or []:
        if c.get("type") in types and c.get("status") == "True":
            return c
    return None


BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"


def job_failure(condition: dict, progress: contract.Progress | None, pods: list[dict], fallback: str, who: str, deadline_words: str) -> tuple[str, str]:
    """The typed reason and message of a failed Job: the program's own words first (its progress.json, then
    its termination message ``Reason: words``), then the Job controller's."""
    term = termination_message(pods)
    if progress is not None and progress.phase == "failed" and progress.reason:
        return progress.reason, progress.message or term or condition.get("message") or progress.reason
    if term:
        return typed_reason(term, fallback)
    if condition.get("reason") == DEADLINE_EXCEEDED:
        return DEADLINE_EXCEEDED, deadline_words
    if condition.get("reason") == BACKOFF_LIMIT_EXCEEDED:
        return BACKOFF_LIMIT_EXCEEDED, f"the {who} failed on every retry"
    return condition.get("reason") or fallback, condition.get("message") or f"the {who} failed"


def slow_start(what: str, pods: list[dict], mounted: list[str], after_seconds: float, now_: dt.datetime) -> str | None:
    """A hint for a pod stuck creating its container without saying why: a kubelet reports a missing Secret or
    ConfigMap volume only in the pod's Events (FailedMount), which the operator does not read, and the image
    may also still be pulling. ``mounted`` names what the pod mounts."""
    for pod in pods:
        created = pod.get("metadata", {}).get("creationTimestamp")
        if not created:
            continue
        age = (now_ - dt.datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
        waiting = [((cs.get("state") or {}).get("waiting") or {}).get("reason") for cs in pod.get("status", {}).get("containerStatuses", []) or []]
        if age >= after_seconds and "ContainerCreating" in waiting:
            return (
                f"the {what} {pod['metadata'].get('name', '')} has been creating its container for {int(age)} s: "
                f"the image may still be pulling, or a volume cannot be mounted (check that {', '.join(mounted)} exist; "
                "kubectl describe pod shows FailedMount events)"
            )
    return None


def queue_status(old: dict, queue: str | None) -> dict:
    """A waiting job's ``status.queue``: when it was first queued (kept across reconciles) and in which queue."""
    status = dict(old.get("queue") or {})
    status.setdefault("queuedAt", rfc3339(now()))
    if queue:
        status["name"] = queue
    return status
