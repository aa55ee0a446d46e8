"""Dataset: a training file, validated, hashed and split before a GPU is spent.

The operator runs a validation Job (``finetune-trainer validate``) that checks the file the way the
hosted services do (Together's check_file), writes normalised train and validation files under
``datasets/<ns>/<name>/<sha256>/`` and a report. FineTuneJobs read only those normalised files.
"""

from __future__ import annotations

import datetime as dt

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from finetune_trainer import contract

from finetune_operator.api.common import DNS_SUBDOMAIN, MODEL_URI, ApiModel, Condition, SecretKeyRef, cel, conditions_field

KIND = "Dataset"
PLURAL = "datasets"
SINGULAR = "dataset"
SHORT_NAMES = ["ftds"]

Phase = Literal["Pending", "Validating", "Ready", "Invalid"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]


class ConditionType:
    """Condition types of a Dataset and the reasons each may carry. The phase is derived from them:
    Ready True → Ready; Validated False → Invalid; Validated Unknown with reason Validating →
    Validating; anything else → Pending."""

    VALIDATED = "Validated"
    """The verdict on the file of the current generation. True: CheckPassed. False (final for this
    generation): CheckFailed, SourceNotFound, AccessDenied, InvalidSpec, ValidatorFailed. Unknown (not
    decided yet): Validating, SourceUnavailable, SecretNotFound, ValidatorFailed (retried)."""
    READY = "Ready"
    """FineTuneJobs can use the normalised files. Reasons: Ready, Validating, Invalid, and while Pending
    the Validated condition's reason (SourceUnavailable, SecretNotFound, ValidatorFailed)."""


class Reason:
    CHECK_PASSED = "CheckPassed"
    CHECK_FAILED = "CheckFailed"
    VALIDATING = "Validating"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    """The source could not be reached (connection refused, timeout, 5xx) or its ConfigMap is missing: retried."""
    SOURCE_NOT_FOUND = "SourceNotFound"
    """The source does not exist (HTTP 404, NoSuchKey): final for this generation."""
    ACCESS_DENIED = "AccessDenied"
    """The source refused the credentials: final for this generation."""
    SECRET_NOT_FOUND = "SecretNotFound"
    """A Secret the validation pod mounts does not exist (yet): retried."""
    INVALID_SPEC = "InvalidSpec"
    """The spec breaks a rule the API server did not check."""
    READY = "Ready"
    INVALID = "Invalid"
    VALIDATOR_FAILED = "ValidatorFailed"
    """The validator crashed or left no usable report."""


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the same namespace (for small files)."""

    name: str = Field(description="name of the ConfigMap.", max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(description="key holding the file's content.", max_length=253)


class DatasetSource(ApiModel):
    """Where the file is. Exactly one of uri and configMapRef."""

    uri: str | None = Field(
        default=None,
        description="uri of the file: s3://bucket/key or https://host/path.",
        max_length=2048,
        pattern=r"^(s3|https)://[^\s]+$",
    )
    config_map_ref: ConfigMapKeyRef | None = Field(default=None, description="configMapRef holds a small file in a ConfigMap key.")
    secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="secretRef names a Secret with credentials for the source: keys accessKey and secretKey for "
        "s3://, key `token` (sent as a bearer token) for https://. Unset: the operator's object store credentials.",
    )

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [
            cel("has(self.uri) != has(self.configMapRef)", "set exactly one of uri and configMapRef"),
        ]
    }


class ValidationSplit(ApiModel):
    """Hold out part of the file for validation (like Llama API's "Split data")."""

    fraction: float = Field(gt=0, le=0.5, description="fraction of the examples held out for validation (0 < f <= 0.5).")
    seed: int = Field(default=42, ge=0, le=4294967295, description="seed of the deterministic split. Default 42.")


class DatasetSpec(ApiModel):
    """A training file and how to check it."""

    source: DatasetSource = Field(description="source of the file; changing it validates again.")
    format: Literal["auto", "chat", "instruction", "text", "preference", "parquet"] = Field(
        default="auto",
        description="format: chat (`messages`), instruction (`prompt`/`completion`), text (`text`), preference "
        "(`input.messages` with `preferred_output` and `non_preferred_output`, for objective dpo), parquet "
        "(pre-tokenized `input_ids`), or auto to detect it. Default auto.",
    )
    validation: ValidationSplit | None = Field(default=None, description="validation split, if any.")
    min_samples: int = Field(default=10, ge=1, le=1000000, description="minSamples the file must hold. Default 10.")
    max_size_bytes: int = Field(
        default=1073741824, ge=1, le=109951162777600, description="maxSizeBytes the file may have. Default 1 GiB."
    )
    tokenizer: str | None = Field(
        default=None,
        description="tokenizer names a model (hf://, s3:// or pvc://) whose tokenizer counts tokens for the "
        "statistics in status. Unset: no token statistics.",
        max_length=1024,
        pattern=MODEL_URI,
    )


class CheckErrorStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    line: int | None = Field(default=None, description="line (1-based) of the file, or row for Parquet; unset for the whole file.")
    rule: str = Field(description="rule the line breaks, e.g. not_json, unknown_role, repeated_role.", max_length=64)
    message: str = Field(description="message explains the problem.", max_length=1024)


class TokenStatsStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    min: int = Field(description="min per example.")
    mean: float = Field(description="mean per example.")
    max: int = Field(description="max per example.")
    total: int = Field(description="total over the file.")


class CheckReport(ApiModel):
    """The check report, in the shape of Together's check_file."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    is_check_passed: bool = Field(description="isCheckPassed is true when every check passed.")
    message: str = Field(default="", description="message sums up the verdict.", max_length=4096)
    found: bool | None = Field(default=None, description="found is false when the source could not be read.")
    file_size: int | None = Field(default=None, description="fileSize in bytes.")
    filetype: str | None = Field(default=None, description="filetype: jsonl or parquet.", max_length=16)
    utf8: bool | None = Field(default=None, description="utf8 is true when the file is valid UTF-8.")
    line_type: bool | None = Field(default=None, description="lineType is true when every line is a JSON object.")
    key_value: bool | None = Field(default=None, description="keyValue is true when every example has the format's keys and only those.")
    has_min_samples: bool | None = Field(default=None, description="hasMinSamples is true when the file holds at least minSamples examples.")
    num_samples: int | None = Field(default=None, description="numSamples in the file.")
    errors: list[CheckErrorStatus] = Field(default_factory=list, max_length=50, description="errors: the first problems found, with line and rule.")
    error_count: int = Field(default=0, description="errorCount of all problems found.")


class DatasetStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: Phase = Field(default="Pending", description="phase: Pending, Validating, Ready or Invalid.")
    message: str = Field(default="", description="message is the latest human-readable word on the dataset.", max_length=4096)
    conditions: list[Condition] = conditions_field()
    observed_generation: int | None = Field(default=None, description="observedGeneration is the metadata.generation this status describes.")
    format: str | None = Field(default=None, description="format detected or declared.", max_length=16)
    sha256: str | None = Field(default=None, description="sha256 of the source file.", max_length=64)
    num_samples: int | None = Field(default=None, description="numSamples in the source file.")
    train_samples: int | None = Field(default=None, description="trainSamples after the split.")
    validation_samples: int | None = Field(default=None, description="validationSamples after the split.")
    train_uri: str | None = Field(default=None, description="trainUri of the normalised training file.", max_length=2048)
    validation_uri: str | None = Field(default=None, description="validationUri of the normalised validation file.", max_length=2048)
    report: CheckReport | None = Field(default=None, description="report of the last check.")
    token_stats: TokenStatsStatus | None = Field(default=None, description="tokenStats: tokens per example (when a tokenizer is named).")
    message_stats: TokenStatsStatus | None = Field(default=None, description="messageStats: messages per example (chat; preference: before the two answers).")
    validation_job_name: str | None = Field(default=None, description="validationJobName of the Job that checked this generation.", max_length=63)
    retries: int | None = Field(default=None, ge=0, description="retries of this generation's validation after a failure that may heal (an unreachable source).")
    next_retry_at: dt.datetime | None = Field(default=None, description="nextRetryAt: the earliest time of the next retry (30 s, doubling up to an hour, with jitter).")


# ----------------------------------------------------------------------------------------------
# The validator's check report (finetune_trainer.contract.DatasetCheckReport) as status shows it

MAX_ERRORS_IN_STATUS = 50


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_report_status(report: contract.DatasetCheckReport) -> dict[str, Any]:
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


def stats_status(stats: contract.TokenStats | None) -> dict | None:
    return stats.model_dump(mode="json") if stats is not None else None


def ready_message(report: contract.DatasetCheckReport) -> str:
    total = report.num_samples or 0
    train = report.train_samples if report.train_samples is not None else total
    validation = report.validation_samples or 0
    return f"Dataset ready: {total:,} examples ({train:,} train / {validation:,} validation)"


def report_fields(report: contract.DatasetCheckReport) -> dict[str, Any]:
    """The status fields a check report fills whether the file passed or not."""
    return {
        "format": report.format,
        "sha256": report.sha256,
        "numSamples": report.num_samples,
        "report": check_report_status(report),
        "tokenStats": stats_status(report.token_stats),
        "messageStats": stats_status(report.message_stats),
    }
