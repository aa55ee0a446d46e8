"""What a child batch/v1 Job and its pods say, read the same way by every kind's reconcile."""

from __future__ import annotations


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
