"""FineTuneJob: fine-tune a base model on a Dataset (LoRA by default), like the hosted services' jobs.

The spec is what the user asks for and stays small; how it runs (images, node selectors, the object
store) is operator configuration. Everything but ``suspend``, ``cancel``, ``queueName`` and
``priorityClassName`` is immutable after creation: a new training run is a new FineTuneJob.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from finetune_trainer import contract

from finetune_operator.config import OperatorConfig

from finetune_operator.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ApiModel,
    BaseModelRef,
    Condition,
    GpuResources,
    cel,
    conditions_field,
    immutable,
)

KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj", "ftjob"]

Phase = Literal["Pending", "Queued", "Running", "Uploading", "Completed", "Failed", "Cancelled", "Suspended"]
PHASES: tuple[str, ...] = Phase.__args__  # type: ignore[attr-defined]
TERMINAL_PHASES = frozenset({"Completed", "Failed", "Cancelled"})


class ConditionType:
    """Condition types of a FineTuneJob and the reasons each may carry."""

    VALIDATED = "Validated"
    """The spec is valid and its inputs are ready. Reasons: InputsReady, InvalidSpec, DatasetNotFound,
    DatasetNotReady, DatasetInvalid, DatasetWrongFormat (objective dpo needs a preference Dataset, sft any
    other), DatasetChanged (the Job is gone and its Dataset holds other data now), CheckpointNotFound,
    CheckpointNotReady, CheckpointIncompatible, SecretNotFound, PodPending."""
    ADMITTED = "Admitted"
    """The Job may start: not suspended and, with a queue, admitted by Kueue. Reasons: Admitted,
    WaitingForQueue, Suspended."""
    RUNNING = "Running"
    """The trainer is running. Reasons: PodPending, PodsNotScheduled, Downloading, Training, Uploading,
    Retrying, Stopped."""
    SUCCEEDED = "Succeeded"
    """The model is uploaded with its manifest. Reasons: ModelUploaded."""
    FAILED = "Failed"
    """The job ended without a model. Reasons: the trainer's own (InvalidDataset, ImpossibleConfig,
    BaseModelNotFound, OutOfMemory, ...), InvalidSpec, BackoffLimitExceeded, DeadlineExceeded,
    JobDeleted, Cancelled, OutputOutsideItsFolder (progress.json named a model elsewhere: not trusted)."""
    SUSPENDED = "Suspended"
    """spec.suspend is true: no pods run; resuming continues from the last checkpoint. Reasons:
    UserSuspended, Resumed."""


class Reason:
    INPUTS_READY = "InputsReady"
    INVALID_SPEC = "InvalidSpec"
    DATASET_NOT_FOUND = "DatasetNotFound"
    DATASET_NOT_READY = "DatasetNotReady"
    DATASET_INVALID = "DatasetInvalid"
    DATASET_WRONG_FORMAT = "DatasetWrongFormat"
    """The Dataset's format does not fit the objective: dpo needs format preference, sft any other."""
    CHECKPOINT_NOT_FOUND = "CheckpointNotFound"
    CHECKPOINT_NOT_READY = "CheckpointNotReady"
    CHECKPOINT_INCOMPATIBLE = "CheckpointIncompatible"
    """fromCheckpoint names a job whose model this one cannot continue (LoRA and full, another base model)."""
    ADMITTED = "Admitted"
    WAITING_FOR_QUEUE = "WaitingForQueue"
    SUSPENDED = "Suspended"
    USER_SUSPENDED = "UserSuspended"
    RESUMED = "Resumed"
    POD_PENDING = "PodPending"
    SECRET_NOT_FOUND = "SecretNotFound"
    DOWNLOADING = "Downloading"
    TRAINING = "Training"
    UPLOADING = "Uploading"
    RETRYING = "Retrying"
    STOPPED = "Stopped"
    MODEL_UPLOADED = "ModelUploaded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    JOB_DELETED = "JobDeleted"
    CANCELLED = "Cancelled"
    TRAINER_FAILED = "TrainerFailed"
    DATASET_CHANGED = "DatasetChanged"
    OUTPUT_OUTSIDE_ITS_FOLDER = "OutputOutsideItsFolder"


class LoraSpec(ApiModel, contract.LoraOptions):
    """LoRA options (methods lora and qlora). r, alpha and dropout are defined once, in the operator-trainer
    contract (``finetune_trainer.contract.LoraOptions``)."""

    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=64,
        description="targetModules are the module names LoRA adapts (e.g. q_proj, v_proj), or the single "
        "value `all-linear` for every linear layer but the output head. Default [all-linear].",
        json_schema_extra={"items": {"type": "string", "maxLength": 128}},
    )


class Hyperparameters(ApiModel, contract.TrainingOptions):
    """Training hyperparameters. Defaults follow the hosted services. Each field, its limits and its words
    are defined once, in the operator-trainer contract (``finetune_trainer.contract.TrainingOptions``)."""

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [
            cel(
                "type(self.batchSize) == int ? self.batchSize >= 1 && self.batchSize <= 4096 : self.batchSize == 'auto'",
                "batchSize must be `auto` or an integer from 1 to 4096",
                field_path=".batchSize",
            )
        ]
    }


class DpoSpec(ApiModel, contract.DpoOptions):
    """DPO options (objective dpo). beta, lossType, labelSmoothing and sftWeight are defined once, in the
    operator-trainer contract (``finetune_trainer.contract.DpoOptions``). The reference model is the model the job starts from:
    the base model (LoRA: the base with a fresh adapter, whose update is zero), the fromCheckpoint model, or
    the full model it fine-tunes; its log-probabilities are computed once, before the first step."""

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [
            cel(
                "!has(self.lossType) || self.lossType != 'ipo' || !has(self.labelSmoothing) || self.labelSmoothing == 0.0",
                "labelSmoothing applies to lossType sigmoid only",
                field_path=".labelSmoothing",
            )
        ]
    }


class OutputSpec(ApiModel):
    """Where the fine-tuned model goes."""

    uri: str | None = Field(
        default=None,
        description="uri of an s3:// prefix to write the job's artifacts under. Unset: the operator's bucket, "
        "under jobs/<namespace>/<name>-<uid>/.",
        max_length=1024,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
    )
    merge: bool = Field(
        default=False, description="merge also uploads the base model with the LoRA adapter merged into it. Default false."
    )


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what, and how."""

    base_model: BaseModelRef = Field(description="baseModel is the model to fine-tune. Immutable.")
    dataset: str = Field(
        description="dataset names the Dataset (same namespace) to train on; it must be Ready. Immutable.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    validation_dataset: str | None = Field(
        default=None,
        description="validationDataset names a Dataset for validation loss. Unset: the dataset's own "
        "validation split, or validationSplit. Immutable.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    validation_split: float | None = Field(
        default=None,
        gt=0,
        le=0.5,
        description="validationSplit holds out this fraction of the training data for validation loss when "
        "neither validationDataset nor the Dataset's split gives validation data. Immutable.",
    )
    method: Literal["lora", "qlora", "full"] = Field(
        default="lora",
        description="method: lora (default), qlora (4-bit base model, GPU only) or full (every weight).",
    )
    objective: contract.Objective = Field(
        default="sft",
        description="objective: sft (supervised: the next-token loss on the answers of a chat, instruction, text or "
        "parquet Dataset) or dpo (Direct Preference Optimization on a preference Dataset: the policy learns to rank "
        "each preferred answer above its non-preferred one, relative to the reference model). Any method. "
        "Default sft. Immutable.",
    )
    dpo: DpoSpec | None = Field(
        default=None, description="dpo options for objective dpo. Unset: beta 0.1, lossType sigmoid, labelSmoothing 0, sftWeight 0. Immutable."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="lora options for methods lora and qlora.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="hyperparameters of the training run.")
    resources: GpuResources = Field(default_factory=GpuResources, description="resources of each node.")
    num_nodes: int = Field(default=1, ge=1, le=64, description="numNodes to train on (distributed data parallel across nodes). Default 1.")
    suffix: str | None = Field(
        default=None,
        description="suffix names the output model: <namespace>/<base-model-short>:<suffix>:<job-name>.",
        max_length=40,
        pattern=DNS_LABEL,
    )
    from_checkpoint: str | None = Field(
        default=None,
        description="fromCheckpoint continues another FineTuneJob of this namespace: `<job>` for its final "
        "model or `<job>:<step>` for one of its checkpoints (e.g. objective dpo after an sft job). Methods lora and "
        "qlora continue a LoRA adapter of the same baseModel; method full a full model: a full job's, or a LoRA "
        "job's merged model (its output.merge). The output model's name then records the chain: "
        "<the continued model's name>:<suffix>:<job-name>. Immutable.",
        max_length=270,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]+)?$",
    )
    queue_name: str | None = Field(
        default=None,
        description="queueName is the Kueue LocalQueue to submit to; the job shows Queued until Kueue admits it. "
        "Unset: the operator's default queue, if any.",
        max_length=63,
        pattern=DNS_LABEL,
    )
    priority_class_name: str | None = Field(
        default=None, description="priorityClassName for the training pods.", max_length=253, pattern=DNS_SUBDOMAIN
    )
    suspend: bool = Field(
        default=False,
        description="suspend stops the training pods (after a checkpoint where the trainer can) and keeps the job; "
        "setting it back to false resumes from the last checkpoint.",
    )
    cancel: bool = Field(
        default=False,
        description="cancel stops the job for good (phase Cancelled); it keeps its checkpoints. Cannot be undone.",
    )
    max_duration_seconds: int | None = Field(
        default=None,
        ge=60,
        le=2592000,
        description="maxDurationSeconds bounds the training Job's run time (activeDeadlineSeconds).",
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="output of the job.")

    crd_extra: ClassVar[dict[str, Any]] = {
        "x-kubernetes-validations": [
            cel(
                "!(has(self.validationDataset) && has(self.validationSplit))",
                "set validationDataset or validationSplit, not both",
            ),
            cel(
                "self.method != 'qlora' || !has(self.resources) || self.resources.gpus > 0",
                "method qlora needs GPUs (resources.gpus > 0)",
                field_path=".method",
            ),
            cel("!has(self.dpo) || self.objective == 'dpo'", "dpo options need objective dpo", field_path=".dpo"),
            cel(
                "self.numNodes == 1 || !has(self.resources) || self.resources.gpus > 0",
                "numNodes > 1 needs GPUs on each node (resources.gpus > 0)",
                field_path=".numNodes",
            ),
            cel("!has(oldSelf.cancel) || !oldSelf.cancel || self.cancel", "cancel cannot be undone", field_path=".cancel"),
            immutable("baseModel"),
            cel("self.dataset == oldSelf.dataset", "dataset is immutable", field_path=".dataset"),
            immutable("validationDataset"),
            immutable("validationSplit"),
            immutable("method"),
            immutable("objective"),
            immutable("dpo"),
            immutable("lora"),
            immutable("hyperparameters"),
            immutable("resources"),
            immutable("numNodes"),
            immutable("suffix"),
            immutable("fromCheckpoint"),
            immutable("output"),
        ]
    }


class Progress(ApiModel):
    """Training progress, as the trainer last reported it (about every 10 seconds)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    step: int = Field(default=0, ge=0, description="step is the number of optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="totalSteps of the whole run.")
    percent: int = Field(default=0, ge=0, le=100, description="percent of the steps done.")
    summary: str = Field(default="", description="summary for `kubectl get`: e.g. `42% (21/50)`.", max_length=64)
    epoch: float = Field(default=0.0, ge=0, description="epoch is the fractional epoch reached.")
    train_loss: float | None = Field(default=None, description="trainLoss of the latest step (objective dpo: the DPO loss).")
    eval_loss: float | None = Field(default=None, description="evalLoss from the latest validation (objective dpo: the DPO loss).")
    reward_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="rewardAccuracy (objective dpo): fraction of the latest step's pairs whose preferred answer got the larger reward."
    )
    reward_margin: float | None = Field(
        default=None,
        description="rewardMargin (objective dpo): mean preferred minus non-preferred reward of the latest step's pairs; "
        "a reward is beta x (policy - reference) log-probability of an answer.",
    )
    eval_reward_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="evalRewardAccuracy (objective dpo): reward accuracy over the validation pairs at the latest validation."
    )
    eval_reward_margin: float | None = Field(
        default=None, description="evalRewardMargin (objective dpo): mean reward margin over the validation pairs at the latest validation."
    )
    tokens_per_second: float | None = Field(default=None, ge=0, description="tokensPerSecond of trained (non-padding) tokens.")
    eta_seconds: int | None = Field(default=None, ge=0, description="etaSeconds until training ends, estimated.")
    updated_at: dt.datetime | None = Field(default=None, description="updatedAt is when the trainer wrote this progress.")


class CheckpointStatus(ApiModel):
    """A complete (manifest-verified) checkpoint."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    step: int = Field(ge=0, description="step after which the checkpoint was taken; use `<job>:<step>` in fromCheckpoint.")
    uri: str = Field(description="uri of the checkpoint folder.", max_length=2048)


class OutputModelStatus(ApiModel):
    """The fine-tuned model, set when the job completes."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str = Field(
        description="name of the output model: <namespace>/<base-model-short>:<suffix>:<job-name>, or with fromCheckpoint "
        "<the continued model's name>:<suffix>:<job-name>.",
        max_length=512,
    )
    uri: str = Field(description="uri of the model folder (the LoRA adapter, or the full model for method full).", max_length=2048)
    merged_uri: str | None = Field(default=None, description="mergedUri of the merged model when output.merge is true.", max_length=2048)
    adapter: bool = Field(default=True, description="adapter is true when uri holds a LoRA adapter for the base model.")


class QueueStatus(ApiModel):
    """Where the job waits."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str | None = Field(default=None, description="name of the Kueue LocalQueue.", max_length=63)
    position: int | None = Field(
        default=None, ge=1, description="position among this operator's queued FineTuneJobs in the same queue (1 is next)."
    )
    queued_at: dt.datetime | None = Field(default=None, description="queuedAt is when the job started waiting.")


class FineTuneJobStatus(ApiModel):
    """What the operator observed. The phase is derived from the conditions."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: Phase = Field(default="Pending", description="phase: Pending, Queued, Running, Uploading, Completed, Failed, Cancelled or Suspended.")
    message: str = Field(default="", description="message is the latest human-readable word on the job.", max_length=4096)
    conditions: list[Condition] = conditions_field()
    observed_generation: int | None = Field(default=None, ge=0, description="observedGeneration is the metadata.generation this status describes.")
    start_time: dt.datetime | None = Field(default=None, description="startTime is when training first started.")
    completion_time: dt.datetime | None = Field(default=None, description="completionTime is when the job reached Completed, Failed or Cancelled.")
    progress: Progress | None = Field(default=None, description="progress of training.")
    checkpoints: list[CheckpointStatus] = Field(default_factory=list, max_length=100, description="checkpoints uploaded so far.")
    output_model: OutputModelStatus | None = Field(default=None, description="outputModel is the fine-tuned model, once Completed.")
    job_name: str | None = Field(default=None, description="jobName of the batch/v1 Job that runs the trainer.", max_length=63)
    artifacts_uri: str | None = Field(default=None, description="artifactsUri is the object store prefix of this job's files.", max_length=2048)
    dataset_sha256: str | None = Field(default=None, description="datasetSha256 of the training data this job uses.", max_length=64)
    queue: QueueStatus | None = Field(default=None, description="queue the job waits in, while Queued.")
    retries: int = Field(default=0, ge=0, description="retries of the trainer pod so far.")


def progress_status(progress: contract.Progress) -> dict[str, Any]:
    """``status.progress`` from the trainer's progress.json: percent and a summary for ``kubectl get``."""
    total = progress.total_steps or 0
    percent = min(100, int(100 * progress.step / total)) if total else 0
    out: dict[str, Any] = {
        "step": progress.step,
        "percent": percent,
        "summary": f"{percent}% ({progress.step}/{total})" if total else progress.phase,
        "epoch": round(progress.epoch, 3),
        "updatedAt": progress.updated_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if total:
        out["totalSteps"] = total
    for key, value in (
        ("trainLoss", progress.train_loss),
        ("evalLoss", progress.eval_loss),
        ("tokensPerSecond", progress.tokens_per_second),
        ("rewardAccuracy", progress.reward_accuracy),
        ("rewardMargin", progress.reward_margin),
        ("evalRewardAccuracy", progress.eval_reward_accuracy),
        ("evalRewardMargin", progress.eval_reward_margin),
    ):
        if value is not None and math.isfinite(value) and (not key.endswith("Accuracy") or 0 <= value <= 1):
            out[key] = round(float(value), 6)
    if progress.eta_seconds is not None and math.isfinite(progress.eta_seconds):
        out["etaSeconds"] = max(0, int(progress.eta_seconds))
    return out


def preference_figures(progress: contract.Progress) -> str:
    """`` (validation: DPO loss 0.21, reward accuracy 0.95, reward margin 2.4)`` for a DPO job's completion,
    from its latest validation or else its last step; empty for a job that reported no reward figures."""
    loss, accuracy, margin, where = progress.eval_loss, progress.eval_reward_accuracy, progress.eval_reward_margin, "validation"
    if accuracy is None:
        loss, accuracy, margin, where = progress.train_loss, progress.reward_accuracy, progress.reward_margin, "last step"
    values = (loss, accuracy, margin)
    if any(v is None or not math.isfinite(v) for v in values):
        return ""
    return f" ({where}: DPO loss {loss:.3f}, reward accuracy {accuracy:.3f}, reward margin {margin:.3f})"


def spec_problems(spec: FineTuneJobSpec, config: OperatorConfig, name: str) -> list[str]:
    """What the CRD schema cannot check: references to operator configuration, self-references."""
    problems = []
    if spec.resources.gpu_type and spec.resources.gpu_type not in config.gpu_types:
        known = ", ".join(sorted(config.gpu_types)) or "none are configured"
        problems.append(f"spec.resources.gpuType: unknown GPU type {spec.resources.gpu_type!r} (known: {known})")
    if spec.from_checkpoint and spec.from_checkpoint.partition(":")[0] == name:
        problems.append("spec.fromCheckpoint: a job cannot continue from itself")
    if spec.dpo is not None and spec.objective != "dpo":
        problems.append("spec.dpo: dpo options need objective dpo")
    if spec.dpo is not None and spec.dpo.loss_type == "ipo" and spec.dpo.label_smoothing:
        problems.append("spec.dpo.labelSmoothing: applies to lossType sigmoid only")
    if spec.method == "qlora" and spec.resources.gpus == 0:
        problems.append("spec.method: qlora needs GPUs (resources.gpus > 0)")
    if spec.num_nodes > 1 and spec.resources.gpus == 0:
        problems.append("spec.numNodes: more than one node needs GPUs on each (resources.gpus > 0)")
    return problems
