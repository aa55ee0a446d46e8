"""The Dataset lifecycle as a pure function: (spec, observed world) → status, children, events.

Each generation of a Dataset is validated once, by its own Job (``<name>-validate-g<generation>``),
which writes a check report to a URI the operator chose (``reports/<generation>-<uid8>.json`` under the
Dataset's prefix) and, when the file passes, the normalised files under ``<prefix>/<sha256>/`` with a
manifest. The handler gathers what is observed (that Job, its pods, the report, whether the manifest
exists) and applies the ``Plan`` returned here.

Phases are derived from the conditions (``derive_phase``):

    Ready True                                   → Ready
    Validated False                              → Invalid      (final for this generation)
    Validated Unknown, reason Validating         → Validating
    otherwise                                    → Pending      (a Secret is missing, the source is
                                                                 unreachable: retried)

Ready and Invalid are final for a generation; a spec change (a new generation) starts over, and until
the new file passes the status shows none of the previous generation's results.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from finetune_operator.api.dataset import CheckReport, DatasetSpec, Reason
from finetune_operator.api.dataset import ConditionType as C
from finetune_operator.config import OperatorConfig
from finetune_operator.reconcile.conditions import Conditions, now
from finetune_operator.reconcile.finetunejob import Event, format_validation_error, termination_message
from finetune_trainer import contract

MAX_CHILD_NAME = 63
RESULT_FIELDS = (
    "format",
    "sha256",
    "numSamples",
    "trainSamples",
    "validationSamples",
    "trainUri",
    "validationUri",
    "report",
    "tokenStats",
    "messageStats",
)
"""Status fields that describe a validation's result; none of them survives into a new generation."""
READY_ONLY_FIELDS = ("trainUri", "validationUri", "trainSamples", "validationSamples")
"""Shown only when Ready: an Invalid file has no normalised files."""
MAX_ERRORS_IN_STATUS = 50
SLOW_START_SECONDS = 120
"""A validation pod still creating its container after this long gets a hint in status."""


@dataclass
class Observed:
    """What the handler read from the API and the object store for one reconcile."""

    job: dict | None = None
    """The validation Job of the current generation."""
    pods: list[dict] = field(default_factory=list)
    """That Job's pods."""
    report: contract.DatasetCheckReport | None = None
    """The check report at the generation's report URI (read once the Job finished or a pod failed)."""
    report_malformed: bool = False
    """A report exists but does not follow the contract."""
    manifest_exists: bool = False
    """``<prefix>/<report.sha256>/manifest.json`` exists (checked only for a passed report)."""


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[dict] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    """Jobs to delete: a failed one, so that the next reconcile validates again (a retry), or an
    unfinished one of an older generation, whose verdict nobody will read."""
    events: list[Event] = field(default_factory=list)
    retry_after: float | None = None
    old_phase: str | None = None
    new_phase: str = "Pending"


# ----------------------------------------------------------------------------------------------
# Names and object store layout


def job_name(name: str, generation: int | None) -> str:
    """``<name>-validate-g<generation>``; a long name is shortened with a hash so it fits in 63 characters."""
    suffix = f"-validate-g{generation or 0}"
    if len(name) + len(suffix) <= MAX_CHILD_NAME:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    keep = MAX_CHILD_NAME - len(suffix) - len(digest) - 1
    return f"{name[:keep].rstrip('-')}-{digest}{suffix}"


def output_uri(config: OperatorConfig, namespace: str, name: str) -> str:
    """Where the validator writes ``<sha256>/``: ``s3://<bucket>/datasets/<ns>/<name>``."""
    return f"s3://{config.storage_bucket}/{contract.dataset_prefix(namespace, name)}"


def report_uri(config: OperatorConfig, namespace: str, name: str, uid: str, generation: int | None) -> str:
    """The check report of one generation: ``.../reports/<generation>-<uid8>.json`` (a Dataset deleted and
    created again under the same name has another uid, so it never reads its predecessor's reports)."""
    return contract.join_uri(output_uri(config, namespace, name), "reports", f"{generation or 0}-{uid[:8]}.json")


def folder_uri(config: OperatorConfig, namespace: str, name: str, sha256: str) -> str:
    return contract.join_uri(output_uri(config, namespace, name), sha256)


# ----------------------------------------------------------------------------------------------
# Phases and what the Job and its pods say


def derive_phase(conditions: Conditions) -> str:
    if conditions.is_true(C.READY):
        return "Ready"
    validated = conditions.get(C.VALIDATED)
    if validated and validated.get("status") == "False":
        return "Invalid"
    if validated and validated.get("status") == "Unknown" and validated.get("reason") == Reason.VALIDATING:
        return "Validating"
    return "Pending"


def _job_condition(job: dict, *types: str) -> dict | None:
    for c in job.get("status", {}).get("conditions", []) or []:
        if c.get("type") in types and c.get("status") == "True":
            return c
    return None


def _owned_by(pod: dict, job: dict) -> bool:
    uid = job.get("metadata", {}).get("uid")
    refs = pod.get("metadata", {}).get("ownerReferences") or []
    return not uid or not refs or any(r.get("uid") == uid for r in refs)


def pod_waiting_problem(pods: list[dict], spec: DatasetSpec, config: OperatorConfig) -> tuple[str, str] | None:
    """(reason, message) when the validation pod cannot start for something the user must create: a
    Secret (the source's or the object store's) or the source ConfigMap."""
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            message = waiting.get("message") or ""
            if not message:
                continue
            secret = re.search(r'secret "([^"]+)" not found', message, re.IGNORECASE)
            if secret:
                return Reason.SECRET_NOT_FOUND, f"Secret {secret.group(1)} does not exist in this namespace ({_secret_role(secret.group(1), spec, config)})"
            configmap = re.search(r'configmap "([^"]+)" (not found|has no key "([^"]+)")', message, re.IGNORECASE)
            if configmap:
                if configmap.group(3):
                    return Reason.SOURCE_UNAVAILABLE, f"ConfigMap {configmap.group(1)} has no key {configmap.group(3)} (spec.source.configMapRef)"
                return Reason.SOURCE_UNAVAILABLE, f"ConfigMap {configmap.group(1)} does not exist in this namespace (spec.source.configMapRef)"
            if "non-existent config key" in message:
                return Reason.SOURCE_UNAVAILABLE, f"the source ConfigMap has no such key: {message}"
    return None


def slow_start_hint(pods: list[dict], spec: DatasetSpec, config: OperatorConfig, now_: dt.datetime | None = None) -> str | None:
    """A hint for a pod stuck creating its container without saying why. A kubelet reports a missing
    Secret or ConfigMap volume only in the pod's Events (FailedMount), which this operator does not read;
    the image may also still be pulling."""
    current = now_ or now()
    for pod in pods:
        created = pod.get("metadata", {}).get("creationTimestamp")
        if not created:
            continue
        age = (current - dt.datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()
        waiting = [
            ((cs.get("state") or {}).get("waiting") or {}).get("reason")
            for cs in pod.get("status", {}).get("containerStatuses", []) or []
        ]
        if age >= SLOW_START_SECONDS and "ContainerCreating" in waiting:
            mounted = [f"Secret {config.storage_secret}"]
            if spec.source.secret_ref is not None and spec.source.uri:
                mounted.append(f"Secret {spec.source.secret_ref.name}")
            if spec.source.config_map_ref is not None:
                mounted.append(f"ConfigMap {spec.source.config_map_ref.name}")
            return (
                f"the validation pod {pod['metadata'].get('name', '')} has been creating its container for {int(age)} s: "
                f"the image may still be pulling, or a volume cannot be mounted (check that {', '.join(mounted)} exist; "
                "kubectl describe pod shows FailedMount events)"
            )
    return None


def _secret_role(secret: str, spec: DatasetSpec, config: OperatorConfig) -> str:
    if spec.source.secret_ref is not None and spec.source.secret_ref.name == secret:
        return "spec.source.secretRef"
    if secret == config.storage_secret:
        return "the object store credentials every validation and training pod mounts"
    return "mounted by the validation pod"


def _last_exit(pods: list[dict]) -> int | None:
    """Exit code of the newest terminated validator container."""
    newest: tuple[str, int] | None = None
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if term.get("exitCode") is not None:
                stamp = term.get("finishedAt") or ""
                if newest is None or stamp >= newest[0]:
                    newest = (stamp, int(term["exitCode"]))
    return newest[1] if newest else None


# ----------------------------------------------------------------------------------------------
# The report in status


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def report_status(report: contract.DatasetCheckReport) -> dict[str, Any]:
    """The report in the shape of Together's check_file (``status.report``), within the CRD's limits."""
    errors = [
        {"line": e.line, "rule": _clip(e.rule, 64), "message": _clip(e.message, 1024)}
        for e in report.errors[:MAX_ERRORS_IN_STATUS]
    ]
    data = report.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["message"] = _clip(report.message, 4096)
    data["errors"] = errors
    data["errorCount"] = max(report.error_count, len(report.errors))
    return CheckReport.model_validate(data).dump()


def first_errors(report: contract.DatasetCheckReport) -> str:
    """``line 7: unknown role 'bot' (unknown_role)`` for the first error, and how many more there are."""
    if not report.errors:
        return report.message or "the check failed"
    first = report.errors[0]
    where = f"line {first.line}: " if first.line is not None else ""
    text = f"{where}{first.message} ({first.rule})"
    more = max(report.error_count, len(report.errors)) - 1
    if more > 0:
        text += f"; {more} more error{'s' if more > 1 else ''}"
    return text


def _stats(stats: contract.TokenStats | None) -> dict | None:
    return stats.model_dump(mode="json") if stats is not None else None


def _ready_message(report: contract.DatasetCheckReport) -> str:
    total = report.num_samples or 0
    train = report.train_samples if report.train_samples is not None else total
    validation = report.validation_samples or 0
    return f"Dataset ready: {total:,} examples ({train:,} train / {validation:,} validation)"


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
    retry_failed: bool = False,
) -> Plan:
    """Decide the next status and actions. ``build_children(spec) -> [ConfigMap, Job]`` builds the
    validation Job of this generation. ``retry_failed`` (set by the slow retry timer) allows a Job that
    failed for a reason that may heal to be deleted, so the next reconcile validates again."""
    status = dict(status or {})
    conditions = Conditions.from_status(status, generation)
    old_phase = status.get("phase")
    plan = Plan(status={}, old_phase=old_phase)
    out: dict[str, Any] = {"observedGeneration": generation}
    child = job_name(name, generation)
    same_generation = status.get("observedGeneration") == generation

    def finish(event: Event | None = None) -> Plan:
        phase = derive_phase(conditions)
        out["phase"] = phase
        out["conditions"] = conditions.as_list()
        if phase != "Ready":
            for key in READY_ONLY_FIELDS:
                out.setdefault(key, None)
        if phase in ("Pending", "Validating"):
            for key in RESULT_FIELDS:
                out.setdefault(key, None)
        plan.status = out
        plan.new_phase = phase
        if phase != old_phase or not same_generation:
            plan.events.append(event or _transition_event(phase, out.get("message", "")))
        return plan

    # Ready and Invalid are final for a generation: nothing to read, nothing to decide.
    if same_generation and old_phase in ("Ready", "Invalid") and conditions.get(C.VALIDATED):
        out = {**status, "observedGeneration": generation}
        plan.status, plan.new_phase = out, old_phase
        return plan

    try:
        spec = DatasetSpec.model_validate(raw_spec)
    except ValidationError as e:
        return _invalid_spec(conditions, out, finish, format_validation_error(e))
    if (spec.source.uri is None) == (spec.source.config_map_ref is None):
        return _invalid_spec(conditions, out, finish, "spec.source: set exactly one of uri and configMapRef")
    out["validationJobName"] = child

    job = observed.job
    if job is None:
        plan.create = build_children(spec)
        previous = status.get("validationJobName")
        if previous and previous != child and old_phase in ("Pending", "Validating"):
            plan.delete_jobs.append(previous)  # e.g. stuck waiting for a Secret the new spec no longer names
        restarted = status.get("validationJobName") == child and same_generation
        conditions.set(C.VALIDATED, "Unknown", Reason.VALIDATING, f"validation Job {child} created")
        conditions.set(C.READY, False, Reason.VALIDATING, "the file is being validated")
        out["message"] = "Validating the file" + (" again" if restarted else "")
        return finish()

    pods = [p for p in observed.pods if _owned_by(p, job)]
    failed = _job_condition(job, "Failed", "FailureTarget")
    complete = _job_condition(job, "Complete", "SuccessCriteriaMet")
    report = observed.report

    if complete is not None and report is not None and report.is_check_passed:
        if observed.manifest_exists and report.sha256:
            return _ready(conditions, out, finish, report)
        return _retry_later(
            plan, conditions, out, finish, child, retry_failed,
            f"the validator reported success but {folder_uri(config, namespace, name, report.sha256 or '<sha256>')}/"
            f"{contract.MANIFEST_FILE} is missing",
        )
    if (failed is not None or complete is not None) and report is not None and not report.is_check_passed:
        if report.retryable:
            return _source_unavailable(plan, conditions, out, finish, child, retry_failed, report.message)
        return _invalid(conditions, out, finish, report)
    if failed is not None or complete is not None:
        # The Job ended without a usable report: the validator crashed, or its config was refused.
        words = termination_message(pods) or (failed or {}).get("message") or "the validator left no check report"
        if observed.report_malformed:
            words = f"the check report does not follow the contract ({words})"
        if failed is not None and _last_exit(pods) == int(contract.ExitCode.BAD_INPUT):
            conditions.set(C.VALIDATED, False, Reason.VALIDATOR_FAILED, words)
            conditions.set(C.READY, False, Reason.INVALID, words)
            out["message"] = words
            return finish()
        return _retry_later(plan, conditions, out, finish, child, retry_failed, words)

    # The Job runs.
    problem = pod_waiting_problem(pods, spec, config)
    if problem:
        reason, message = problem
        conditions.set(C.VALIDATED, "Unknown", reason, message)
        conditions.set(C.READY, False, reason, message)
        out["message"] = message
        plan.retry_after = 30
        return finish()
    if report is not None and report.retryable and int(job.get("status", {}).get("failed", 0) or 0) > 0:
        message = f"{report.message}; retrying"
        conditions.set(C.VALIDATED, "Unknown", Reason.SOURCE_UNAVAILABLE, message)
        conditions.set(C.READY, False, Reason.SOURCE_UNAVAILABLE, message)
        out["message"] = message
        return finish()
    hint = slow_start_hint(pods, spec, config)
    conditions.set(C.VALIDATED, "Unknown", Reason.VALIDATING, hint or f"validation Job {child} is running")
    conditions.set(C.READY, False, Reason.VALIDATING, "the file is being validated")
    out["message"] = f"Validating the file; {hint}" if hint else "Validating the file"
    return finish()


def _invalid_spec(conditions: Conditions, out: dict, finish, message: str) -> Plan:
    conditions.set(C.VALIDATED, False, Reason.INVALID_SPEC, message)
    conditions.set(C.READY, False, Reason.INVALID, message)
    out["message"] = f"Invalid spec: {message}"
    return finish()


def _ready(conditions: Conditions, out: dict, finish, report: contract.DatasetCheckReport) -> Plan:
    message = _ready_message(report)
    out.update(
        {
            "message": message,
            "format": report.format,
            "sha256": report.sha256,
            "numSamples": report.num_samples,
            "trainSamples": report.train_samples if report.train_samples is not None else report.num_samples,
            "validationSamples": report.validation_samples or 0,
            "trainUri": report.train_uri,
            "validationUri": report.validation_uri,
            "report": report_status(report),
            "tokenStats": _stats(report.token_stats),
            "messageStats": _stats(report.message_stats),
        }
    )
    conditions.set(C.VALIDATED, True, Reason.CHECK_PASSED, report.message)
    conditions.set(C.READY, True, Reason.READY, message)
    return finish(Event("Normal", "Ready", message))


def _invalid(conditions: Conditions, out: dict, finish, report: contract.DatasetCheckReport) -> Plan:
    summary = first_errors(report)
    rule = report.errors[0].rule if report.errors else ""
    reason = {"not_found": Reason.SOURCE_NOT_FOUND, "access_denied": Reason.ACCESS_DENIED}.get(rule, Reason.CHECK_FAILED)
    if not report.found and reason == Reason.CHECK_FAILED:
        reason = Reason.SOURCE_NOT_FOUND
    out.update(
        {
            "message": _clip(summary, 4096),
            "format": report.format,
            "sha256": report.sha256,
            "numSamples": report.num_samples,
            "report": report_status(report),
            "tokenStats": _stats(report.token_stats),
            "messageStats": _stats(report.message_stats),
        }
    )
    conditions.set(C.VALIDATED, False, reason, summary)
    conditions.set(C.READY, False, Reason.INVALID, summary)
    return finish(Event("Warning", "Invalid", _clip(f"Dataset invalid: {summary}", 1024)))


def _source_unavailable(plan: Plan, conditions: Conditions, out: dict, finish, child: str, retry_failed: bool, message: str) -> Plan:
    return _pending_retry(plan, conditions, out, finish, child, retry_failed, Reason.SOURCE_UNAVAILABLE, message)


def _retry_later(plan: Plan, conditions: Conditions, out: dict, finish, child: str, retry_failed: bool, message: str) -> Plan:
    return _pending_retry(plan, conditions, out, finish, child, retry_failed, Reason.VALIDATOR_FAILED, message)


def _pending_retry(plan: Plan, conditions: Conditions, out: dict, finish, child: str, retry_failed: bool, reason: str, message: str) -> Plan:
    """Pending with the reason; the slow retry timer deletes the finished Job, and the reconcile that
    follows creates it again under the same name."""
    if retry_failed:
        plan.delete_jobs.append(child)
        message = f"{message}; validating again"
    else:
        message = f"{message}; will retry"
    conditions.set(C.VALIDATED, "Unknown", reason, message)
    conditions.set(C.READY, False, reason, message)
    out["message"] = _clip(message, 4096)
    plan.retry_after = 30
    return finish()


def _transition_event(phase: str, message: str) -> Event:
    """An Event in the words of the hosted services' logs (at most 1024 characters, like kubectl shows)."""
    if phase == "Validating":
        return Event("Normal", "Validating", "Dataset validation started")
    if phase == "Ready":
        return Event("Normal", "Ready", _clip(message or "Dataset ready", 1024))
    if phase == "Invalid":
        return Event("Warning", "Invalid", _clip(f"Dataset invalid: {message}" if message else "Dataset invalid", 1024))
    return Event("Warning", "Pending", _clip(message or "Dataset pending", 1024))
