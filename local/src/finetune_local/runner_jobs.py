"""The Job controller part of the local runner: batch/v1 Jobs to Pods, and Job status like the real one.

Follows kube-controller-manager's Job controller where it matters to a user: pods named
``<job>-<random>`` (``<job>-<index>-<random>`` for Indexed jobs) with the Job's labels and a controller
owner reference; ``parallelism`` / ``completions`` / ``completionMode: Indexed``; ``suspend``;
``backoffLimit`` with a back-off between retries (0.5 s doubling, at most ``RETRY_BACKOFF_CAP_SECONDS``
so local runs stay quick); ``activeDeadlineSeconds``; ``podFailurePolicy`` (FailJob / Ignore / Count on
exit codes and pod conditions); and the status fields and condition types and reasons kubectl shows.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune_local.runner_kube import now_iso, parse_time

log = logging.getLogger("finetune_local.runner")

RETRY_BACKOFF_CAP_SECONDS = 4.0
DEFAULT_BACKOFF_LIMIT = 6
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def random_suffix(length: int = 5) -> str:
    return "".join(random.choice(NAME_SUFFIX_ALPHABET) for _ in range(length))


def controller_uid(obj: dict) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def has_condition(obj: dict, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in (obj.get("status") or {}).get("conditions") or []
    )


def set_condition(conditions: list[dict], kind: str, status: str, reason: str, message: str) -> list[dict]:
    """Add or update one condition; ``lastTransitionTime`` moves only when its status changes."""
    now = now_iso()
    result, found = [], False
    for condition in conditions:
        if condition.get("type") == kind:
            found = True
            if condition.get("status") == status and condition.get("reason") == reason:
                result.append(condition)
                continue
            transition = now if condition.get("status") != status else condition.get("lastTransitionTime") or now
            condition = {"type": kind, "status": status, "reason": reason, "message": message,
                         "lastProbeTime": now, "lastTransitionTime": transition}
        result.append(condition)
    if not found:
        result.append({"type": kind, "status": status, "reason": reason, "message": message,
                       "lastProbeTime": now, "lastTransitionTime": now})
    return result


def compress_indexes(indexes: set[int]) -> str:
    """``{0, 1, 2, 4, 6, 7}`` → ``"0-2,4,6,7"``: the Job controller's format of ``status.completedIndexes``
    (a run of two is written as two numbers, a longer run as a range)."""
    parts, ordered, i = [], sorted(indexes), 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if i == j:
            parts.append(str(ordered[i]))
        elif j == i + 1:
            parts.append(f"{ordered[i]},{ordered[j]}")
        else:
            parts.append(f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def pod_index(pod: dict) -> int | None:
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(INDEX_ANNOTATION) or (meta.get("labels") or {}).get(INDEX_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _terminated_containers(pod: dict) -> list[dict]:
    status = pod.get("status") or {}
    result = []
    for entry in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        terminated = (entry.get("state") or {}).get("terminated")
        if terminated:
            result.append({"name": entry.get("name"), **terminated})
    return result


def match_pod_failure_policy(job: dict, pod: dict) -> tuple[str, str] | None:
    """The first ``podFailurePolicy`` rule a failed pod matches: (action, message), or None."""
    rules = ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []
    meta = pod.get("metadata") or {}
    pod_ref = f"{meta.get('namespace')}/{meta.get('name')}"
    for index, rule in enumerate(rules):
        action = rule.get("action")
        on_exit = rule.get("onExitCodes")
        if on_exit:
            values = set(on_exit.get("values") or [])
            for container in _terminated_containers(pod):
                if on_exit.get("containerName") and container["name"] != on_exit["containerName"]:
                    continue
                code = int(container.get("exitCode") or 0)
                if code == 0:
                    continue
                matches = code in values if on_exit.get("operator", "In") == "In" else code not in values
                if matches:
                    return action, (
                        f"Container {container['name']} for pod {pod_ref} failed with exit code {code} "
                        f"matching {action} rule at index {index}"
                    )
        for pattern in rule.get("onPodConditions") or []:
            for condition in (pod.get("status") or {}).get("conditions") or []:
                if condition.get("type") == pattern.get("type") and condition.get("status") == pattern.get("status", "True"):
                    return action, f"Pod {pod_ref} has condition {pattern.get('type')} matching {action} rule at index {index}"
    return None


@dataclass
class JobMemory:
    """What the controller remembers about a Job between syncs (lost on restart; rebuilt from its pods)."""

    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)
    succeeded_indexes: set[int] = field(default_factory=set)
    seen_active: set[str] = field(default_factory=set)
    last_failure_at: float = 0.0


@dataclass
class Verdict:
    """A terminal decision about a Job."""

    condition: str  # "Complete" | "Failed"
    reason: str
    message: str


class JobController:
    """Syncs one Job at a time against the pods it owns; the runner calls ``sync`` for every Job."""

    def __init__(
        self,
        create_pod: Callable[[dict], None],
        delete_pod: Callable[[dict], None],
        patch_status: Callable[[dict, dict], None],
        removed_pod: Callable[[str], bool],
        runner_annotations: dict[str, str],
        delete_job: Callable[[dict], None] | None = None,
    ) -> None:
        self.delete_job = delete_job
        self.create_pod = create_pod
        self.delete_pod = delete_pod
        self.patch_status = patch_status
        self.removed_pod = removed_pod
        self.runner_annotations = runner_annotations
        self.memory: dict[str, JobMemory] = {}

    def forget(self, job_uid: str) -> None:
        self.memory.pop(job_uid, None)

    def sync(self, job: dict, pods: list[dict]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        status = job.get("status") or {}
        uid = meta["uid"]
        memory = self.memory.setdefault(uid, JobMemory())
        indexed = spec.get("completionMode") == "Indexed"

        active: list[dict] = []
        terminating: list[dict] = []
        failed_pods: list[dict] = []
        for pod in pods:
            pod_uid = pod["metadata"]["uid"]
            phase = (pod.get("status") or {}).get("phase")
            removed = self.removed_pod(pod_uid) or bool(pod["metadata"].get("deletionTimestamp"))
            if phase == "Succeeded" and pod_uid not in memory.succeeded:
                memory.succeeded.add(pod_uid)
                if indexed and pod_index(pod) is not None:
                    memory.succeeded_indexes.add(pod_index(pod))  # type: ignore[arg-type]
            elif phase == "Failed" and not self.removed_pod(pod_uid):
                if pod_uid not in memory.failed and pod_uid not in memory.ignored:
                    self._count_failure(job, pod, memory)
                if pod_uid in memory.failed:
                    failed_pods.append(pod)
            elif phase not in ("Succeeded", "Failed"):
                (terminating if removed else active).append(pod)
        # a pod that vanished while it ran (deleted by someone else) counts as a failure
        present = {pod["metadata"]["uid"] for pod in pods}
        for pod_uid in memory.seen_active - present:
            if not self.removed_pod(pod_uid) and pod_uid not in memory.succeeded | memory.failed | memory.ignored:
                memory.failed.add(pod_uid)
                memory.last_failure_at = time.monotonic()
        memory.seen_active = {pod["metadata"]["uid"] for pod in active}

        failed = max(len(memory.failed), int(status.get("failed") or 0))
        succeeded = len(memory.succeeded_indexes) if indexed else len(memory.succeeded)
        succeeded = max(succeeded, int(status.get("succeeded") or 0)) if not indexed else succeeded
        restarts = sum(
            int(c.get("restartCount") or 0)
            for pod in active
            for c in (pod.get("status") or {}).get("containerStatuses") or []
        )
        conditions = list(status.get("conditions") or [])
        new_status: dict[str, Any] = {}

        finished = has_condition(job, "Complete") or has_condition(job, "Failed")
        if finished and self._expired(job):
            return
        # A decision is taken once (FailureTarget / SuccessCriteriaMet) and made final (Failed / Complete)
        # when no pod of the Job is still terminating, as the Job controller does since Kubernetes 1.31.
        verdict = None if finished else self._decided(job) or self._verdict(
            job, spec, status, failed_pods, failed + restarts, succeeded, active
        )
        if finished or verdict or meta.get("deletionTimestamp"):
            for pod in active:
                self.delete_pod(pod)
            terminating += active
            active = []
        if verdict is not None:
            target, final = ("FailureTarget", "Failed") if verdict.condition == "Failed" else ("SuccessCriteriaMet", "Complete")
            conditions = set_condition(conditions, target, "True", verdict.reason, verdict.message)
            if not terminating:
                conditions = set_condition(conditions, final, "True", verdict.reason, verdict.message)
                if final == "Complete":
                    new_status["completionTime"] = now_iso()
                log.info("job %s/%s: %s (%s)", meta.get("namespace"), meta["name"], final, verdict.reason)
        elif not finished and not meta.get("deletionTimestamp"):
            if spec.get("suspend"):
                for pod in active:
                    self.delete_pod(pod)
                terminating += active
                active = []
                conditions = set_condition(conditions, "Suspended", "True", "JobSuspended", "Job suspended")
                if status.get("startTime"):
                    new_status["startTime"] = None
            else:
                if has_condition(job, "Suspended"):
                    conditions = set_condition(conditions, "Suspended", "False", "JobResumed", "Job resumed")
                    new_status["startTime"] = now_iso()
                elif not status.get("startTime"):
                    new_status["startTime"] = now_iso()
                active += self._start_pods(job, spec, memory, active, succeeded, indexed)

        ready = sum(1 for pod in active if _pod_ready(pod))
        new_status.update({
            "active": len(active),
            "ready": ready,
            "succeeded": succeeded,
            "failed": failed,
            "terminating": len(terminating),
            "conditions": conditions,
        })
        if indexed:
            new_status["completedIndexes"] = compress_indexes(memory.succeeded_indexes)
        if not status.get("uncountedTerminatedPods"):
            new_status["uncountedTerminatedPods"] = {}
        changed = {k: v for k, v in new_status.items() if status.get(k) != v and not (v is None and k not in status)}
        if changed:
            self.patch_status(job, changed)

    def _expired(self, job: dict) -> bool:
        """The TTL-after-finished controller's part: delete a finished Job once its TTL has passed."""
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None or self.delete_job is None or job["metadata"].get("deletionTimestamp"):
            return False
        finished_at = max(
            (parse_time(c.get("lastTransitionTime")) or 0.0)
            for c in (job.get("status") or {}).get("conditions") or []
            if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        )
        if time.time() < finished_at + float(ttl):
            return False
        log.info("job %s/%s: finished more than %ss ago; deleting it", job["metadata"].get("namespace"), job["metadata"]["name"], ttl)
        self.delete_job(job)
        return True

    def _count_failure(self, job: dict, pod: dict, memory: JobMemory) -> None:
        pod_uid = pod["metadata"]["uid"]
        matched = match_pod_failure_policy(job, pod)
        if matched and matched[0] == "Ignore":
            memory.ignored.add(pod_uid)
            return
        memory.failed.add(pod_uid)
        memory.last_failure_at = time.monotonic()

    def _decided(self, job: dict) -> Verdict | None:
        """The decision already recorded in the Job's conditions, if any."""
        for condition in (job.get("status") or {}).get("conditions") or []:
            if condition.get("status") != "True":
                continue
            if condition.get("type") == "FailureTarget":
                return Verdict("Failed", condition.get("reason") or "", condition.get("message") or "")
            if condition.get("type") == "SuccessCriteriaMet":
                return Verdict("Complete", condition.get("reason") or "", condition.get("message") or "")
        return None

    def _verdict(
        self,
        job: dict,
        spec: dict,
        status: dict,
        failed_pods: list[dict],
        failures: int,
        succeeded: int,
        active: list[dict],
    ) -> Verdict | None:
        # podFailurePolicy FailJob: the first failed pod that matches a FailJob rule ends the Job
        for pod in failed_pods:
            matched = match_pod_failure_policy(job, pod)
            if matched and matched[0] == "FailJob":
                return Verdict("Failed", "PodFailurePolicy", matched[1])
        backoff_limit = spec.get("backoffLimit")
        backoff_limit = DEFAULT_BACKOFF_LIMIT if backoff_limit is None else int(backoff_limit)
        if failures > backoff_limit:
            return Verdict("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        deadline = spec.get("activeDeadlineSeconds")
        started = parse_time(status.get("startTime"))
        if deadline is not None and started is not None and not spec.get("suspend"):
            if time.time() - started >= float(deadline):
                return Verdict("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        completions = spec.get("completions")
        if completions is None and spec.get("parallelism") is None:
            completions = 1
        if completions is not None and succeeded >= int(completions):
            return Verdict("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        if completions is None and succeeded >= 1 and not active:
            return Verdict("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        return None

    def _start_pods(
        self, job: dict, spec: dict, memory: JobMemory, active: list[dict], succeeded: int, indexed: bool
    ) -> list[dict]:
        parallelism = spec.get("parallelism")
        parallelism = 1 if parallelism is None else int(parallelism)
        completions = spec.get("completions")
        if completions is None and spec.get("parallelism") is None:
            completions = 1
        if memory.failed:
            delay = min(0.5 * 2 ** (len(memory.failed) - 1), RETRY_BACKOFF_CAP_SECONDS)
            if time.monotonic() < memory.last_failure_at + delay:
                return []
        created: list[dict] = []
        if indexed:
            total = int(completions or 0)
            busy = {pod_index(pod) for pod in active}
            pending = [i for i in range(total) if i not in memory.succeeded_indexes and i not in busy]
            for index in pending[: max(0, parallelism - len(active))]:
                created.append(self._new_pod(job, index))
        else:
            if completions is not None:
                wanted = min(parallelism, int(completions) - succeeded)
            else:
                wanted = parallelism if succeeded == 0 else 0
            for _ in range(max(0, wanted - len(active))):
                created.append(self._new_pod(job, None))
        for pod in created:
            self.create_pod(pod)
        return created

    def _new_pod(self, job: dict, index: int | None) -> dict:
        meta = job["metadata"]
        template = job["spec"].get("template") or {}
        template_meta = template.get("metadata") or {}
        name, uid = meta["name"], meta["uid"]
        labels = dict(template_meta.get("labels") or {})
        labels.update({
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        })
        annotations = dict(template_meta.get("annotations") or {})
        annotations.update(self.runner_annotations)
        spec = _deep_copy(template.get("spec") or {})
        generate_name = f"{name}-"
        if index is not None:
            labels[INDEX_ANNOTATION] = str(index)
            annotations[INDEX_ANNOTATION] = str(index)
            generate_name = f"{name}-{index}-"
            spec["hostname"] = f"{name}-{index}"
            for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
                env = [e for e in container.get("env") or [] if e.get("name") != "JOB_COMPLETION_INDEX"]
                env.insert(0, {
                    "name": "JOB_COMPLETION_INDEX",
                    "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}},
                })
                container["env"] = env
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": generate_name[:58] + random_suffix(),
                "generateName": generate_name,
                "namespace": meta.get("namespace") or "default",
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }],
            },
            "spec": spec,
        }


def _pod_ready(pod: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or []
    )


def _deep_copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


