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
from dataclasses import dataclass, field

from finetune_operator import naming, tenancy
from finetune_operator.api.dataset import DatasetSpec, DatasetStatus, Reason, first_errors, ready_message, report_fields
from finetune_operator.api.dataset import ConditionType as C
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests.validation_job import build_validation_children
from finetune_operator.reconcile.common import Event, Plan, Reconciliation, backoff_seconds, clip
from finetune_operator.reconcile.jobs import job_condition, last_exit_code, missing_config_map, missing_secret, owned_by, slow_start, termination_message
from finetune_operator.reconcile.conditions import Conditions, now, rfc3339
from finetune_trainer import contract

RESULT_FIELDS = ("format", "sha256", "numSamples", "trainSamples", "validationSamples", "trainUri", "validationUri", "report",
                 "tokenStats", "messageStats")
"""Status fields that describe a validation's result; none of them survives into a new generation."""
READY_ONLY_FIELDS = ("trainUri", "validationUri", "trainSamples", "validationSamples")
"""Shown only when Ready: an Invalid file has no normalised files."""
SLOW_START_SECONDS = 120
"""A validation pod still creating its container after this long gets a hint in status."""
RETRY_SECONDS = 30
MAX_RETRY_SECONDS = 3600


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
    secrets: dict[str, dict[str, str] | None] | None = None
    """The labels of each Secret the spec names (None: missing); None: not read."""


@dataclass
class DatasetPlan(Plan):
    create: list[dict] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    """Jobs to delete: a failed one, so that the next reconcile validates again (a retry), or an
    unfinished one of an older generation, whose verdict nobody will read."""


def derive_phase(conditions: Conditions) -> str:
    if conditions.is_true(C.READY):
        return "Ready"
    validated = conditions.get(C.VALIDATED)
    if validated and validated.get("status") == "False":
        return "Invalid"
    if validated and validated.get("status") == "Unknown" and validated.get("reason") == Reason.VALIDATING:
        return "Validating"
    return "Pending"


def pod_waiting_problem(pods: list[dict], spec: DatasetSpec, config: OperatorConfig) -> tuple[str, str] | None:
    """(reason, message) when the validation pod cannot start for something the user must create: a
    Secret (the source's or the object store's) or the source ConfigMap."""
    secret = missing_secret(pods)
    if secret:
        return Reason.SECRET_NOT_FOUND, f"Secret {secret} does not exist in this namespace ({_secret_role(secret, spec, config)})"
    configmap = missing_config_map(pods)
    return (Reason.SOURCE_UNAVAILABLE, f"{configmap} (spec.source.configMapRef)") if configmap else None


def slow_start_hint(pods: list[dict], spec: DatasetSpec, config: OperatorConfig, now_: dt.datetime | None = None) -> str | None:
    """A hint for a validation pod stuck creating its container (see ``jobs.slow_start``)."""
    mounted = [f"Secret {config.storage_secret}"]
    if spec.source.secret_ref is not None and spec.source.uri:
        mounted.append(f"Secret {spec.source.secret_ref.name}")
    if spec.source.config_map_ref is not None:
        mounted.append(f"ConfigMap {spec.source.config_map_ref.name}")
    return slow_start("validation pod", pods, mounted, SLOW_START_SECONDS, now_ or now())


def _secret_role(secret: str, spec: DatasetSpec, config: OperatorConfig) -> str:
    if spec.source.secret_ref is not None and spec.source.secret_ref.name == secret:
        return "spec.source.secretRef"
    if secret == config.storage_secret:
        return "the object store credentials every validation and training pod mounts"
    return "mounted by the validation pod"


def reconcile(obj: dict, observed: Observed, config: OperatorConfig, retry_failed: bool = False) -> DatasetPlan:
    """Decide the next status and actions for the Dataset ``obj``. ``retry_failed`` (set by the slow retry
    timer) allows a Job that failed for a reason that may heal to be deleted, so the next reconcile validates
    again."""
    r = Reconciliation(obj, derive_phase, _transition_event, DatasetStatus)
    plan = DatasetPlan(status={})
    generation = obj["metadata"].get("generation")
    same_generation = r.old.get("observedGeneration") == generation
    if same_generation and r.old_phase in ("Ready", "Invalid") and r.conditions.get(C.VALIDATED):
        # Ready and Invalid are final for a generation: nothing to read, nothing to decide.
        plan.status, plan.new_phase, plan.old_phase = {**r.old, "observedGeneration": generation}, r.old_phase, r.old_phase
        return plan
    step = _Step(r, plan, observed, config, retry_failed, announce=not same_generation)
    spec, problem = r.parse(DatasetSpec)
    if spec is not None and (spec.source.uri is None) == (spec.source.config_map_ref is None):
        problem = "spec.source: set exactly one of uri and configMapRef"
    elif spec is not None:
        problem = "; ".join(tenancy.dataset_problems(spec, r.namespace, config)) or None
    if problem:
        r.conditions.set(C.VALIDATED, False, Reason.INVALID_SPEC, problem)
        r.conditions.set(C.READY, False, Reason.INVALID, problem)
        r.out["message"] = f"Invalid spec: {problem}"
        return step.finish()
    r.out["validationJobName"] = step.child
    if observed.job is None:
        secret = tenancy.secret_problem(spec, observed.secrets, r.namespace, config)
        if secret:
            r.conditions.set(C.VALIDATED, "Unknown", *secret)
            r.conditions.set(C.READY, False, *secret)
            r.out["message"] = secret[1]
            plan.retry_after = RETRY_SECONDS
            return step.finish()
        return step.create_job(spec)
    return step.follow_job(spec)


@dataclass
class _Step:
    """The steps of one Dataset reconcile, sharing what they read."""

    r: Reconciliation
    plan: DatasetPlan
    observed: Observed
    config: OperatorConfig
    retry_failed: bool
    announce: bool

    @property
    def child(self) -> str:
        return naming.validation_job_name(self.r.name, self.r.obj["metadata"].get("generation"))

    def finish(self, event: Event | None = None) -> DatasetPlan:
        phase = derive_phase(self.r.conditions)
        if phase != "Ready":
            for key in READY_ONLY_FIELDS:
                self.r.out.setdefault(key, None)
        if phase in ("Pending", "Validating"):
            for key in RESULT_FIELDS:
                self.r.out.setdefault(key, None)
        return self.r.finish(self.plan, event, announce=self.announce)  # type: ignore[return-value]

    def create_job(self, spec: DatasetSpec) -> DatasetPlan:
        r = self.r
        self.plan.create = build_validation_children(r.obj, spec, self.config)
        previous = r.old.get("validationJobName")
        if previous and previous != self.child and r.old_phase in ("Pending", "Validating"):
            self.plan.delete_jobs.append(previous)  # e.g. stuck waiting for a Secret the new spec no longer names
        restarted = previous == self.child and not self.announce
        r.conditions.set(C.VALIDATED, "Unknown", Reason.VALIDATING, f"validation Job {self.child} created")
        r.conditions.set(C.READY, False, Reason.VALIDATING, "the file is being validated")
        r.out["message"] = "Validating the file" + (" again" if restarted else "")
        return self.finish()

    def follow_job(self, spec: DatasetSpec) -> DatasetPlan:
        job = self.observed.job or {}
        pods = [p for p in self.observed.pods if owned_by(p, job)]
        failed = job_condition(job, "Failed", "FailureTarget")
        complete = job_condition(job, "Complete", "SuccessCriteriaMet")
        report = self.observed.report
        if complete is not None and report is not None and report.is_check_passed:
            folder = naming.dataset_output_uri(self.config, self.r.namespace, self.r.name)
            if not all(tenancy.under_own_prefix(u, folder) for u in (report.train_uri, report.validation_uri) if u):
                return self.retry(Reason.VALIDATOR_FAILED, f"the check report names files outside the Dataset's folder {folder}; it is not trusted")
            if self.observed.manifest_exists and report.sha256:
                return self.ready(report)
            folder = naming.dataset_folder_uri(self.config, self.r.namespace, self.r.name, report.sha256 or "<sha256>")
            return self.retry(Reason.VALIDATOR_FAILED, f"the validator reported success but {folder}/{contract.MANIFEST_FILE} is missing")
        if (failed is not None or complete is not None) and report is not None and not report.is_check_passed:
            if report.retryable:
                return self.retry(Reason.SOURCE_UNAVAILABLE, report.message)
            return self.invalid(report)
        if failed is not None or complete is not None:
            return self.ended_without_report(failed, pods)
        return self.running(spec, job, pods, report)

    def ended_without_report(self, failed: dict | None, pods: list[dict]) -> DatasetPlan:
        """The Job ended without a usable report: the validator crashed, or its config was refused."""
        words = termination_message(pods) or (failed or {}).get("message") or "the validator left no check report"
        if self.observed.report_malformed:
            words = f"the check report does not follow the contract ({words})"
        if failed is not None and last_exit_code(pods) == int(contract.ExitCode.BAD_INPUT):
            self.r.conditions.set(C.VALIDATED, False, Reason.VALIDATOR_FAILED, words)
            self.r.conditions.set(C.READY, False, Reason.INVALID, words)
            self.r.out["message"] = words
            return self.finish()
        return self.retry(Reason.VALIDATOR_FAILED, words)

    def running(self, spec: DatasetSpec, job: dict, pods: list[dict], report: contract.DatasetCheckReport | None) -> DatasetPlan:
        r = self.r
        problem = pod_waiting_problem(pods, spec, self.config)
        if problem:
            reason, message = problem
            r.conditions.set(C.VALIDATED, "Unknown", reason, message)
            r.conditions.set(C.READY, False, reason, message)
            r.out["message"] = message
            self.plan.retry_after = RETRY_SECONDS
            return self.finish()
        if report is not None and report.retryable and int(job.get("status", {}).get("failed", 0) or 0) > 0:
            message = f"{report.message}; retrying"
            r.conditions.set(C.VALIDATED, "Unknown", Reason.SOURCE_UNAVAILABLE, message)
            r.conditions.set(C.READY, False, Reason.SOURCE_UNAVAILABLE, message)
            r.out["message"] = message
            return self.finish()
        hint = slow_start_hint(pods, spec, self.config)
        r.conditions.set(C.VALIDATED, "Unknown", Reason.VALIDATING, hint or f"validation Job {self.child} is running")
        r.conditions.set(C.READY, False, Reason.VALIDATING, "the file is being validated")
        r.out["message"] = f"Validating the file; {hint}" if hint else "Validating the file"
        return self.finish()

    def ready(self, report: contract.DatasetCheckReport) -> DatasetPlan:
        message = ready_message(report)
        self.r.out.update(report_fields(report), message=message, trainUri=report.train_uri, validationUri=report.validation_uri,
                          trainSamples=report.train_samples if report.train_samples is not None else report.num_samples,
                          validationSamples=report.validation_samples or 0)  # fmt: skip
        self.r.conditions.set(C.VALIDATED, True, Reason.CHECK_PASSED, report.message)
        self.r.conditions.set(C.READY, True, Reason.READY, message)
        return self.finish(Event("Normal", "Ready", message))

    def invalid(self, report: contract.DatasetCheckReport) -> DatasetPlan:
        summary = first_errors(report)
        rule = report.errors[0].rule if report.errors else ""
        reason = {"not_found": Reason.SOURCE_NOT_FOUND, "access_denied": Reason.ACCESS_DENIED}.get(rule, Reason.CHECK_FAILED)
        if not report.found and reason == Reason.CHECK_FAILED:
            reason = Reason.SOURCE_NOT_FOUND
        self.r.out.update(report_fields(report), message=clip(summary, 4096))
        self.r.conditions.set(C.VALIDATED, False, reason, summary)
        self.r.conditions.set(C.READY, False, Reason.INVALID, summary)
        return self.finish(Event("Warning", "Invalid", clip(f"Dataset invalid: {summary}", 1024)))

    def retry(self, reason: str, message: str) -> DatasetPlan:
        """Pending with the reason; once its time has come the slow retry timer deletes the finished Job, and the
        reconcile that follows creates it again under the same name. The waits double from 30 s up to an hour,
        with jitter, so a source that stays away costs little and many Datasets do not retry in step."""
        retries = int(self.r.old.get("retries") or 0) if not self.announce else 0
        due = self.r.old.get("nextRetryAt")
        if self.retry_failed and (not due or due <= rfc3339(now())):
            self.plan.delete_jobs.append(self.child)
            self.r.out["retries"] = retries + 1
            self.r.out["nextRetryAt"] = rfc3339(now() + dt.timedelta(seconds=backoff_seconds(self.r.uid, retries + 1, RETRY_SECONDS, MAX_RETRY_SECONDS)))
            message = f"{message}; validating again (retry {retries + 1})"
        else:
            self.r.keep("retries", "nextRetryAt")
            message = f"{message}; will retry" + (f" at {due}" if due else "")
        self.r.conditions.set(C.VALIDATED, "Unknown", reason, message)
        self.r.conditions.set(C.READY, False, reason, message)
        self.r.out["message"] = clip(message, 4096)
        self.plan.retry_after = RETRY_SECONDS
        return self.finish()


def _transition_event(phase: str, message: str, out: dict, old: dict) -> Event:
    """An Event in the words of the hosted services' logs (at most 1024 characters, like kubectl shows)."""
    if phase == "Validating":
        return Event("Normal", "Validating", "Dataset validation started")
    if phase == "Ready":
        return Event("Normal", "Ready", clip(message or "Dataset ready", 1024))
    if phase == "Invalid":
        return Event("Warning", "Invalid", clip(f"Dataset invalid: {message}" if message else "Dataset invalid", 1024))
    return Event("Warning", "Pending", clip(message or "Dataset pending", 1024))
