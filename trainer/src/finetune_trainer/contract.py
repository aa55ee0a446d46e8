"""The operator–trainer contract: what the operator hands the trainer and what the trainer leaves behind.

This module is the one part of the trainer the operator imports, so it must stay torch-free: pydantic
and the standard library only. Everything that crosses the boundary between the two sides is here:

* the configs the operator writes into a ConfigMap (``TrainerConfig``, ``ValidateConfig``,
  ``EvaluateConfig``, ``ServeConfig``) and the trainer reads with ``--config``;
* what the trainer writes to the object store: ``progress.json`` (``Progress``), ``events.jsonl``
  (``TrainerEvent``, one per line), ``metrics.jsonl`` (``StepMetrics``, one per optimizer step: the
  learning curve), ``manifest.json`` (``Manifest``, written last: an artifact without
  one is incomplete), a dataset check report (``DatasetCheckReport``) and an evaluation summary
  (``EvaluationSummary``);
* the process exit codes (``ExitCode``) and the object layout under a job's prefix.

JSON uses camelCase (like the Kubernetes objects it comes from); Python uses snake_case. Both
spellings are accepted when reading.
"""

from __future__ import annotations

import datetime as _dt
import enum
import posixpath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

CONTRACT_VERSION = "v1alpha1"

# ----------------------------------------------------------------------------------------------
# Exit codes and files


class ExitCode(enum.IntEnum):
    """How a trainer process ends. The operator's Job ``podFailurePolicy`` keys on these."""

    OK = 0
    """Done: the artifact and its manifest are uploaded."""
    RETRYABLE = 1
    """Anything unexpected (a crash, a lost connection): the Job may retry and resume."""
    BAD_INPUT = 42
    """Bad input or config (invalid dataset, impossible request): retrying cannot help."""
    PREEMPTED = 143
    """Stopped by SIGTERM after saving what it could (128 + 15): retry resumes from a checkpoint."""


PROGRESS_FILE = "progress.json"
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.jsonl"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
"""Kubernetes keeps at most 4096 bytes of a container's termination message."""
TERMINATION_LOG_ENV = "FINETUNE_TERMINATION_LOG"
"""Where the termination message goes when not ``/dev/termination-log`` (the local runner sets it)."""


def write_termination_message(message: str, reason: str | None = None) -> None:
    """The container's last word, which Kubernetes shows in the pod's status and the operator reads:
    ``Reason: message`` (``reason`` given) or the message as it is, cut to 4096 bytes on a character
    boundary. Skipped where the file cannot be written (not in a container): the log has it too."""
    import os

    text = f"{reason}: {message}" if reason else message
    data = text.encode("utf-8")[:TERMINATION_MESSAGE_LIMIT].decode("utf-8", errors="ignore").encode("utf-8")
    try:
        with open(os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG), "wb") as f:
            f.write(data)
    except OSError:
        pass


def checkpoint_dir(step: int) -> str:
    """The folder (relative to the job prefix) of the checkpoint taken after ``step`` optimizer steps."""
    return f"{CHECKPOINTS_DIR}/step-{step}"


def job_prefix(namespace: str, name: str, uid: str) -> str:
    """Object-store prefix of a FineTuneJob's artifacts: ``jobs/<ns>/<name>-<uid>``."""
    return f"jobs/{namespace}/{name}-{uid}"


def dataset_prefix(namespace: str, name: str) -> str:
    """Object-store prefix of a Dataset's normalised files: ``datasets/<ns>/<name>``."""
    return f"datasets/{namespace}/{name}"


def evaluation_prefix(namespace: str, name: str, uid: str) -> str:
    """Object-store prefix of an Evaluation's results: ``evaluations/<ns>/<name>-<uid>``."""
    return f"evaluations/{namespace}/{name}-{uid}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key/prefix`` into ``("bucket", "key/prefix")``.

    >>> parse_s3_uri("s3://models/jobs/ns/a-1/model/")
    ('models', 'jobs/ns/a-1/model')
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key.strip("/")


def join_uri(base: str, *parts: str) -> str:
    """Join an ``s3://`` (or local) URI with relative parts, with exactly one ``/`` between them."""
    tail = posixpath.join(*[p.strip("/") for p in parts if p])
    return base.rstrip("/") + ("/" + tail if tail else "")


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


# ----------------------------------------------------------------------------------------------
# Base model


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)


class StorageConfig(_Model):
    """Where the object store is and where its credentials are mounted."""

    endpoint: str = Field(description="host:port of the S3 API, without scheme")
    secure: bool = Field(default=True, description="use HTTPS")
    region: str | None = Field(default=None, description="S3 region, if the store needs one")
    credentials_dir: str | None = Field(
        default=None,
        description="folder holding files `accessKey` and `secretKey` (a mounted Secret). "
        "When unset, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are read from the environment.",
    )


# ----------------------------------------------------------------------------------------------
# Training


class LoraOptions(_Model):
    """LoRA options (methods lora and qlora). One definition for the FineTuneJob API and the trainer."""

    r: int = Field(default=16, ge=1, le=512, description="r is the rank of the LoRA update matrices. Default 16.")
    alpha: int = Field(default=32, ge=1, le=4096, description="alpha scales the LoRA update (alpha / r). Default 32.")
    dropout: float = Field(default=0.05, ge=0, le=0.9, description="dropout on the LoRA input. Default 0.05.")


class LoraConfig(LoraOptions):
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainingOptions(_Model):
    """Training hyperparameters a user sets. One definition, its limits and its documentation for both the
    FineTuneJob API (``spec.hyperparameters``, whose CRD schema is generated from it) and the trainer's config,
    so a value the API accepts is a value the trainer accepts, and none is lost on the way. Defaults follow
    the hosted services."""

    epochs: int = Field(default=3, ge=1, le=100, description="epochs over the training data. Default 3.")
    batch_size: int | Literal["auto"] = Field(
        default="auto",
        description="batchSize is the number of (packed) sequences per step per GPU, or `auto` to size it to "
        "the GPU's memory (like Together's `max` and Azure's -1). Default auto.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="learningRate is the peak learning rate. Unset: 1e-4 for lora and qlora, 1e-5 for full.",
    )
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        default="linear", description="lrScheduler shapes the learning rate after warmup: linear, cosine or constant. Default linear."
    )
    warmup_ratio: float = Field(
        default=0.03, ge=0, le=0.5, description="warmupRatio is the fraction of steps spent warming up the learning rate. Default 0.03."
    )
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="weightDecay for AdamW. Default 0.")
    max_seq_length: int = Field(
        default=2048,
        ge=64,
        le=131072,
        description="maxSeqLength in tokens: longer examples are truncated (and counted in the job's events). Default 2048.",
    )
    train_on_inputs: Literal["auto", "true", "false"] = Field(
        default="auto",
        description="trainOnInputs: `auto` trains on assistant turns only (chat) or the completion only "
        "(instruction), `false` likewise, `true` on every token. Default auto.",
    )
    n_checkpoints: int = Field(
        default=1, ge=0, le=100, description="nCheckpoints evenly spaced checkpoints are saved and uploaded; the job resumes from the newest. Default 1."
    )
    n_evals: int = Field(
        default=0, ge=0, le=100, description="nEvals: how many times validation loss is computed during training (needs validation data). Default 0."
    )
    seed: int = Field(default=42, ge=0, le=4294967295, description="seed for data order and initialisation. Default 42.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=1024, description="gradientAccumulationSteps: micro-batches per optimizer step. Default 1."
    )
    packing: bool = Field(
        default=True,
        description="packing concatenates examples into full sequences without cross-attention between them. Default true.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="gradientCheckpointing trades compute for memory. Default false."
    )

    @field_validator("train_on_inputs", mode="before")
    @classmethod
    def _bool_to_str(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return "true" if v else "false"
        return v

    def effective_learning_rate(self, method: str) -> float:
        """The learning rate to train with: the one set, else 1e-4 for lora and qlora, 1e-5 for full."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-5 if method == "full" else 1e-4


class DpoOptions(_Model):
    """Direct Preference Optimization options (``objective: dpo``). One definition for the FineTuneJob API
    (``spec.dpo``) and the trainer. DPO trains on pairs of answers to the same conversation: it raises the
    policy's log-probability ratio against the reference model (the model the job starts from) for the
    preferred answer over the non-preferred one."""

    beta: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="beta scales the policy-to-reference log-ratio in the loss (the KL penalty's inverse "
        "temperature): larger stays closer to the reference model. For lossType ipo it is IPO's tau. "
        "Greater than 0, at most 10. Default 0.1.",
    )
    loss_type: Literal["sigmoid", "ipo"] = Field(
        default="sigmoid",
        description="lossType: sigmoid (the DPO paper's -log sigmoid(beta x margin)) or ipo (squared distance of "
        "the length-averaged margin to 1/(2 beta), which does not push a margin without end). Default sigmoid.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        le=0.5,
        description="labelSmoothing is the assumed fraction of pairs whose preference is wrong (conservative DPO): "
        "the sigmoid loss also rewards the reverse order this much. Only for lossType sigmoid. At least 0, "
        "at most 0.5 (as in TRL). Default 0.",
    )
    sft_weight: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="sftWeight adds this much of the preferred answer's next-token loss (per token) to each pair's "
        "loss (RPO, Pang et al. 2024; TRL's rpo_alpha): DPO alone can lower both answers' likelihood while it "
        "widens their margin, and a model that does answers worse than either; this keeps the preferred answer "
        "likely. At least 0, at most 10. Default 0 (plain DPO).",
    )


Objective = Literal["sft", "dpo"]
"""What a training run optimises: ``sft`` (next-token loss on the answers) or ``dpo`` (preference pairs)."""


class Hyperparameters(TrainingOptions):
    """What the trainer trains with: the user's options and the trainer's own knobs."""

    max_grad_norm: float = Field(default=1.0, ge=0, description="clip gradients to this norm (0: no clipping)")
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps (for smoke tests); None trains all epochs."""


class TrainerConfig(_Model):
    """Everything ``finetune-trainer train`` needs. Written by the operator into a ConfigMap."""

    contract_version: str = CONTRACT_VERSION
    job_name: str = "local"
    namespace: str = "default"
    base_model: str = Field(description="hf://org/name[@revision], s3://bucket/prefix, pvc://claim/path or a local path")
    base_model_token_file: str | None = Field(default=None, description="file holding a Hugging Face token")
    train_data: list[str] = Field(min_length=1, description="URIs of normalised training JSONL or Parquet files")
    validation_data: list[str] = Field(default_factory=list)
    validation_split: float = Field(default=0.0, ge=0, lt=1)
    """Used when validation_data is empty: this fraction of train_data, split deterministically by seed."""
    method: Literal["lora", "qlora", "full"] = "lora"
    objective: Objective = "sft"
    """sft trains on conversations, instructions or text; dpo on preference pairs (format preference)."""
    dpo: DpoOptions = Field(default_factory=DpoOptions)
    """DPO options, used when objective is dpo."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    chat_template: str | None = None
    """Jinja chat template to use when the base model's tokenizer has none."""
    merge: bool = False
    """Also upload the adapter merged into the base model (LoRA only)."""
    from_checkpoint: str | None = None
    """URI of another job's checkpoint or model folder to continue from."""
    output_uri: str = Field(description="job prefix: s3://bucket/jobs/<ns>/<name>-<uid> or a local folder")
    output_model_name: str | None = None
    storage: StorageConfig | None = None
    num_gpus: int = Field(default=0, ge=0, le=64)
    """GPUs per node the operator asked for; 0 means CPU. More than visible is a bad-input error."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    metrics_port: int | None = Field(default=9090, ge=0, le=65535)
    progress_interval_seconds: float = Field(default=10.0, gt=0, le=600)


# ----------------------------------------------------------------------------------------------
# What the trainer writes


Phase = Literal["pending", "downloading", "validating", "training", "evaluating", "uploading", "done", "failed"]


class CheckpointRecord(_Model):
    step: int
    uri: str
    created_at: _dt.datetime | None = None


class Progress(_Model):
    """``progress.json``: the trainer's latest word, rewritten at least every ``progressIntervalSeconds``."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: Phase = "pending"
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    total_epochs: int | None = None
    train_loss: float | None = None
    """SFT: mean next-token loss of the last step; DPO: mean DPO loss of the last step's pairs."""
    eval_loss: float | None = None
    reward_accuracy: float | None = None
    """DPO: fraction of the last step's pairs whose preferred answer got the larger reward."""
    reward_margin: float | None = None
    """DPO: mean of (preferred reward - non-preferred reward) over the last step's pairs; a reward is
    beta x (policy log-probability - reference log-probability) of an answer."""
    eval_reward_accuracy: float | None = None
    """DPO: reward accuracy over the validation pairs at the latest validation."""
    eval_reward_margin: float | None = None
    """DPO: mean reward margin over the validation pairs at the latest validation."""
    tokens_per_second: float | None = None
    trained_tokens: int = 0
    padding_fraction: float | None = None
    """Padding tokens / all tokens processed (0 with packing, except the tail of each batch)."""
    eta_seconds: float | None = None
    checkpoints: list[CheckpointRecord] = Field(default_factory=list)
    model_uri: str | None = None
    adapter_uri: str | None = None
    merged_model_uri: str | None = None
    reason: str | None = None
    """Typed reason when phase is failed (e.g. InvalidDataset, ImpossibleConfig, OutOfMemory)."""
    message: str | None = None
    exit_code: int | None = None
    updated_at: _dt.datetime = Field(default_factory=utcnow)


class TrainerEvent(_Model):
    """One line of ``events.jsonl``, in the words of the hosted services' event logs."""

    time: _dt.datetime = Field(default_factory=utcnow)
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str
    message: str


class StepMetrics(_Model):
    """One line of ``metrics.jsonl``: what one optimizer step logged (the job's learning curve). The trainer
    rewrites the file with the progress snapshot; a step that is trained again after a resume replaces its
    line. ``evalLoss`` is set on the step after which validation ran."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    step: int = Field(ge=0)
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    time: _dt.datetime = Field(default_factory=utcnow)


def artifact_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file inside an artifact's folder (absolute, climbing out with ``..``, empty
    or ``.`` segments, backslashes or control characters); None when it can."""
    if not path:
        return "is empty"
    if "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "holds a backslash or a control character"
    if path.startswith("/"):
        return "is absolute"
    parts = path.split("/")
    if ".." in parts:
        return "climbs out of the folder with '..'"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' segment"
    return None


class ManifestFile(_Model):
    path: str = Field(max_length=1024)
    """The file's path relative to the artifact's folder, ``/``-separated: never absolute, never with ``..``
    (a manifest is read back from a tenant-writable place; a download writes each file where it says)."""
    size: int = Field(ge=0)
    sha256: str

    @field_validator("path")
    @classmethod
    def _inside_the_artifact(cls, path: str) -> str:
        problem = artifact_path_problem(path)
        if problem is not None:
            raise ValueError(f"{path!r} {problem}: a manifest names only files inside its artifact's folder")
        return path


class Manifest(_Model):
    """``manifest.json``: the proof an artifact is complete. Written after every file it lists."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    kind: Literal["model", "adapter", "merged-model", "checkpoint", "dataset", "evaluation"]
    files: list[ManifestFile]
    created_at: _dt.datetime = Field(default_factory=utcnow)
    base_model: str | None = None
    step: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


# ----------------------------------------------------------------------------------------------
# Datasets


DatasetFormat = Literal["auto", "chat", "instruction", "text", "preference", "parquet"]


class ValidateConfig(_Model):
    """Everything ``finetune-trainer validate`` needs."""

    contract_version: str = CONTRACT_VERSION
    source: str = Field(description="s3://bucket/key, https://..., or a local path")
    source_credentials_dir: str | None = None
    format: DatasetFormat = "auto"
    validation_split: float = Field(default=0.0, ge=0, lt=1)
    split_seed: int = 42
    min_samples: int = Field(default=10, ge=1)
    max_bytes: int = Field(default=1 << 30, ge=1)
    max_errors: int = Field(default=20, ge=1, le=1000)
    tokenizer: str | None = None
    """A model URI whose tokenizer counts tokens for the statistics; none: no token statistics."""
    max_seq_length: int | None = Field(default=None, ge=1)
    """With a tokenizer (or Parquet): reject the dataset when every example is longer than this."""
    output_uri: str = Field(description="s3://bucket/datasets/<ns>/<name>: files go to <output_uri>/<sha256>/")
    report_uri: str = Field(description="where to write the DatasetCheckReport JSON (also on failure)")
    storage: StorageConfig | None = None
    allow_private_urls: bool = False
    """The admin allows fetches from loopback and private addresses (``FINETUNE_ALLOW_PRIVATE_URLS``; link-local ones stay refused);
    otherwise an http(s) source or tokenizer that resolves to one is refused (``finetune_trainer.outbound``)."""


class CheckError(_Model):
    line: int | None = Field(default=None, description="1-based line (JSONL) or row (Parquet); None for the whole file")
    rule: str = Field(description="stable rule id, e.g. not_utf8, not_json, unknown_role")
    message: str


class TokenStats(_Model):
    min: int
    mean: float
    max: int
    total: int


class DatasetCheckReport(_Model):
    """The validator's verdict, in the shape of Together's ``check_file`` plus what the operator needs."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    is_check_passed: bool
    message: str
    found: bool = True
    file_size: int | None = None
    filetype: Literal["jsonl", "parquet"] | None = None
    utf8: bool | None = None
    line_type: bool | None = None
    key_value: bool | None = None
    has_min_samples: bool | None = None
    num_samples: int | None = None
    format: Literal["chat", "instruction", "text", "preference", "parquet"] | None = None
    errors: list[CheckError] = Field(default_factory=list)
    error_count: int = 0
    sha256: str | None = None
    train_samples: int | None = None
    validation_samples: int | None = None
    train_uri: str | None = None
    validation_uri: str | None = None
    manifest_uri: str | None = None
    token_stats: TokenStats | None = None
    message_stats: TokenStats | None = None
    """Messages per example (chat format; preference: of the conversation before the two answers)."""
    retryable: bool = False
    """True when the failure may heal by itself (source not reachable yet): the operator keeps Pending."""


# ----------------------------------------------------------------------------------------------
# Evaluation


class EvalModel(_Model):
    """One model to evaluate: through an OpenAI-compatible endpoint, or loaded directly."""

    name: str = Field(description="row name in the results table")
    endpoint: str | None = Field(default=None, description="base URL of an OpenAI-compatible API (…/v1)")
    model: str | None = Field(default=None, description="model name to send to the endpoint")
    api_key_file: str | None = None
    model_uri: str | None = Field(default=None, description="base model URI to load directly")
    adapter_uri: str | None = Field(default=None, description="LoRA adapter URI to apply to model_uri")
    trusted_endpoint: bool = False
    """The operator resolved ``endpoint`` from an InferenceEndpoint (a Service it made): exempt from the rules for
    URLs a tenant chose (an API key only over https, no loopback, link-local or private addresses)."""


class GraderSpec(_Model):
    name: str
    type: Literal["exact_match", "f1", "contains", "regex", "semantic_similarity", "llm_judge", "pairwise"]
    pattern: str | None = None
    """regex: the pattern the answer must match (search)."""
    case_sensitive: bool = False
    threshold: float | None = None
    judge: EvalModel | None = None
    rubric: str | None = None
    score_min: float = 1
    """llm_judge: the lowest score the rubric allows; the judge's `SCORE: <n>` maps to (n - min) / (max - min)."""
    score_max: float = 5
    """llm_judge: the highest score the rubric allows (must be greater than score_min)."""
    embedding_model: str | None = None
    """semantic_similarity: URI of a sentence-embedding model (mean pooling); None: the bundled all-MiniLM-L6-v2."""
    max_tokens: int = Field(default=512, ge=1, le=32768)
    """llm_judge and pairwise: the most tokens the judge may write (its reasoning and the final line)."""


class GenerationSettings(_Model):
    max_tokens: int = Field(default=64, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)
    batch_size: int = Field(default=8, ge=1, le=1024)
    """Prompts per forward pass when the model is loaded directly."""
    concurrency: int = Field(default=4, ge=1, le=256)
    """Requests in flight at once to an OpenAI-compatible endpoint (also used for llm_judge)."""


class EvaluateConfig(_Model):
    contract_version: str = CONTRACT_VERSION
    models: list[EvalModel] = Field(min_length=1)
    baseline: str | None = Field(default=None, description="name of the model the others are compared with")
    dataset: str = Field(description="URI of a normalised JSONL file")
    graders: list[GraderSpec] = Field(min_length=1)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    max_samples: int | None = Field(default=None, ge=1)
    regrade: bool = False
    """The dataset already holds responses (`response` per example): grade them, skip inference."""
    output_uri: str
    storage: StorageConfig | None = None
    allow_private_urls: bool = False
    """The admin allows a tenant's endpoint URLs (an llm_judge's ``url``) to reach loopback and private addresses
    (``FINETUNE_ALLOW_PRIVATE_URLS``); endpoints marked ``trustedEndpoint`` are not held to it."""


class ScoreRecord(_Model):
    model: str
    grader: str
    mean: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    errors: int = 0
    delta: float | None = None
    """mean minus the baseline's mean for the same grader; None for the baseline itself."""


class EvaluationSummary(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    scores: list[ScoreRecord]
    baseline: str | None = None
    samples: int
    results_uri: str | None = None
    message: str | None = None


# ----------------------------------------------------------------------------------------------
# Serving


class AdapterRef(_Model):
    name: str = Field(description="model name clients send")
    uri: str = Field(description="folder with adapter_config.json and adapter_model.safetensors")


class ServeConfig(_Model):
    """``finetune-trainer serve --config``. The adapters list may change while the server runs: it rereads the file."""

    contract_version: str = CONTRACT_VERSION
    base_model: str
    served_model_name: str | None = None
    """Name of the base model in /v1/models; defaults to the base model URI."""
    adapters: list[AdapterRef] = Field(default_factory=list)
    api_key_file: str | None = None
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_queue: int = Field(default=64, ge=1)
    max_model_len: int = Field(default=2048, ge=16)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    storage: StorageConfig | None = None


VLLM_LORA_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``--max-lora-rank`` (it refuses to start with any other)."""


class FetchItem(_Model):
    uri: str = Field(description="s3:// folder with a manifest.json (a model or an adapter)")
    dest: str = Field(description="local folder to download it into")
    kind: Literal["model", "adapter"] = "model"
    """What the folder holds: the base model (its config.json is checked against ``ServingLimits``) or a
    LoRA adapter (its rank is checked against ``maxLoraRank``)."""


class ServingLimits(_Model):
    """What vLLM refuses at start, checked by the fetch before it starts: the same rules, said sooner."""

    max_model_len: int = Field(ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_lora_rank: int | None = Field(default=None, ge=1)


class FetchConfig(_Model):
    """``finetune-trainer fetch --config``: download complete artifacts (manifest checked) into local folders.

    The vllm runtime's init container uses it to put the base model and the adapters on an emptyDir and
    to check them against the endpoint's ``limits`` before vLLM starts. ``base_model`` names a base model
    that is not fetched (``hf://...`` or a mounted ``pvc://`` folder): only its config.json is read.
    """

    contract_version: str = CONTRACT_VERSION
    items: list[FetchItem] = Field(default_factory=list)
    base_model: str | None = None
    base_model_token_file: str | None = None
    limits: ServingLimits | None = None
    storage: StorageConfig | None = None


class VllmAdapter(_Model):
    name: str = Field(description="the name clients send as `model`")
    uri: str = Field(description="s3:// adapter folder with a manifest.json")
    dest: str = Field(description="local folder vLLM loads it from")


class VllmAdaptersConfig(_Model):
    """``finetune-trainer vllm-adapters --config``: the adapters a vLLM server should serve, loaded and unloaded
    at run time (vLLM's ``/v1/load_lora_adapter``) by a sidecar beside it. The list may change while it runs:
    the sidecar rereads the file. Its state goes to ``state_file`` in the builtin server's ``/health`` shape."""

    contract_version: str = CONTRACT_VERSION
    adapters: list[VllmAdapter] = Field(default_factory=list)
    server: str = "http://127.0.0.1:8000"
    api_key_file: str | None = None
    max_lora_rank: int | None = None
    state_file: str
    storage: StorageConfig | None = None


Name = Annotated[str, Field(min_length=1, max_length=253)]
