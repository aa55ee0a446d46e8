"""What the objects a spec names resolve to, read the same way by every kind that names them: a Dataset's
normalised files, a FineTuneJob's model or checkpoint, an InferenceEndpoint's served model. Each resolver
returns what it found, or the (reason, message) that keeps the caller waiting."""

from __future__ import annotations

from dataclasses import dataclass

from finetune_operator import naming, tenancy
from finetune_operator.api.common import SecretKeyRef
from finetune_operator.api.evaluation import EvaluationSpec
from finetune_operator.api.evaluation import Reason as EvaluationReason
from finetune_operator.api.finetunejob import FineTuneJobSpec, Reason
from finetune_operator.api.inferenceendpoint import AdapterSpec
from finetune_operator.api.inferenceendpoint import Reason as EndpointReason
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests.evaluation_job import ResolvedModel
from finetune_operator.manifests.trainer_job import TrainerInputs
from finetune_trainer import serving_checks
from finetune_trainer.contract import VLLM_LORA_RANKS, LoraOptions

DEFAULT_API_KEY = "apiKey"
DEFAULT_HF_TOKEN_KEY = "token"


def phase_of(obj: dict) -> str:
    return (obj.get("status") or {}).get("phase") or "Pending"


# -- for a FineTuneJob --------------------------------------------------------------------------------------


def dataset_problem(kind_label: str, name: str, ds: dict | None) -> tuple[str, str] | None:
    """(reason, message) when a Dataset cannot be used yet, else None."""
    if ds is None:
        return Reason.DATASET_NOT_FOUND, f"{kind_label} {name} does not exist"
    phase = ds.get("status", {}).get("phase", "Pending")
    if phase == "Invalid":
        detail = ds.get("status", {}).get("message", "")
        return Reason.DATASET_INVALID, f"{kind_label} {name} is Invalid" + (f": {detail}" if detail else "")
    if phase != "Ready" or not ds.get("status", {}).get("trainUri"):
        return Reason.DATASET_NOT_READY, f"waiting for {kind_label} {name} to be Ready (it is {phase})"
    observed = ds.get("status", {}).get("observedGeneration")
    if observed is not None and observed != ds.get("metadata", {}).get("generation", observed):
        # Its source just changed: the Ready status still describes the old file.
        return Reason.DATASET_NOT_READY, f"waiting for {kind_label} {name} to validate its new source"
    return None


def format_problem(objective: str, field: str, name: str, ds: dict) -> tuple[str, str] | None:
    """(reason, message) when a Ready Dataset's format does not fit the objective: dpo trains on preference
    pairs only, sft on anything else."""
    fmt = (ds.get("status") or {}).get("format")
    if objective == "dpo" and fmt and fmt != "preference":
        return Reason.DATASET_WRONG_FORMAT, (
            f"{field}: Dataset {name} is in {fmt} format; objective dpo (spec.objective) trains on preference pairs: "
            "name a Dataset of format preference"
        )
    if objective != "dpo" and fmt == "preference":
        return Reason.DATASET_WRONG_FORMAT, (
            f"{field}: Dataset {name} holds preference pairs, which train with objective dpo (spec.objective: dpo); "
            "objective sft needs a chat, instruction, text or parquet Dataset"
        )
    return None


def resolve_checkpoint(ref: str, source: dict | None, spec: FineTuneJobSpec | None = None) -> tuple[str | None, tuple[str, str] | None]:
    """fromCheckpoint `<job>` or `<job>:<step>` → (uri, problem). With this job's ``spec``, the source must fit it:
    a LoRA job continues a LoRA adapter of the same base model, a full job a full model (its own, or the adapter
    merged into the base model: the source's output.merge)."""
    job, _, step = ref.partition(":")
    if source is None:
        return None, (Reason.CHECKPOINT_NOT_FOUND, f"fromCheckpoint: FineTuneJob {job} does not exist")
    incompatible = _continuation_problem(job, step, source, spec) if spec is not None else None
    if incompatible:
        return None, (Reason.CHECKPOINT_INCOMPATIBLE, incompatible)
    status = source.get("status", {})
    if step:
        for cp in status.get("checkpoints", []) or []:
            if str(cp.get("step")) == step:
                return cp["uri"], None
        steps = ", ".join(str(cp.get("step")) for cp in status.get("checkpoints", []) or []) or "none yet"
        if status.get("phase") in ("Failed", "Cancelled", "Completed"):
            return None, (Reason.CHECKPOINT_NOT_FOUND, f"fromCheckpoint: {job} has no checkpoint at step {step} (it has: {steps})")
        return None, (Reason.CHECKPOINT_NOT_READY, f"fromCheckpoint: waiting for {job} to reach step {step} (checkpoints: {steps})")
    model = status.get("outputModel") or {}
    if status.get("phase") == "Completed" and model.get("uri"):
        if spec is not None and spec.method == "full" and model.get("adapter", True):
            if not model.get("mergedUri"):
                return None, (Reason.CHECKPOINT_INCOMPATIBLE, f"fromCheckpoint: {job} made a LoRA adapter without a merged model; "
                              "method full continues a full model: fine-tune it with output.merge: true, or continue it with method lora")  # fmt: skip
            return model["mergedUri"], None
        return model["uri"], None
    if status.get("phase") in ("Failed", "Cancelled"):
        return None, (Reason.CHECKPOINT_NOT_FOUND, f"fromCheckpoint: {job} ended {status.get('phase')} without a model")
    return None, (Reason.CHECKPOINT_NOT_READY, f"fromCheckpoint: waiting for {job} to complete")


def _continuation_problem(job: str, step: str, source: dict, spec: FineTuneJobSpec) -> str | None:
    """Why this job cannot continue the FineTuneJob ``source`` (its spec, which does not change), or None."""
    source_spec = source.get("spec") or {}
    source_lora = source_spec.get("method", "lora") != "full"
    if spec.method != "full" and not source_lora:
        return (f"fromCheckpoint: {job} fine-tuned every weight (method full); method {spec.method} continues a LoRA adapter: "
                f"continue it with method full, or name its model ({job}'s status.outputModel.uri) as baseModel")  # fmt: skip
    source_base = (source_spec.get("baseModel") or {}).get("uri")
    if spec.method != "full" and source_base and source_base != spec.base_model.uri:
        return f"fromCheckpoint: {job}'s adapter belongs to baseModel {source_base}, not {spec.base_model.uri}"
    if spec.method == "full" and source_lora and step:
        return f"fromCheckpoint: {job}:{step} is a LoRA checkpoint; method full continues a full model (a LoRA job's merged final model)"
    return None


def parent_model_name(source: dict | None) -> str | None:
    """The output model name of the FineTuneJob a job continues: its status's, or the one it will have."""
    if source is None:
        return None
    named = ((source.get("status") or {}).get("outputModel") or {}).get("name")
    if named:
        return named
    meta, spec = source.get("metadata") or {}, source.get("spec") or {}
    return naming.output_model_name(meta.get("namespace", ""), meta.get("name", ""), (spec.get("baseModel") or {}).get("uri", ""), spec.get("suffix"))


def trainer_inputs(
    spec: FineTuneJobSpec, dataset: dict | None, validation_dataset: dict | None, checkpoint_source: dict | None,
    artifacts_uri: str, name: str, queue: str | None, namespace: str, config: OperatorConfig,
) -> tuple[TrainerInputs, tuple[str, str] | None]:
    """A FineTuneJob's inputs from its Datasets (and the job it continues), or the first reason it must wait.
    The output model's name is decided here: a continued model's name is part of it."""
    empty = TrainerInputs(train_data=[], artifacts_uri=artifacts_uri, output_model_name="")
    problem = dataset_problem("Dataset", spec.dataset, dataset)
    if problem:
        return empty, problem
    problem = format_problem(spec.objective, "spec.dataset", spec.dataset, dataset)  # type: ignore[arg-type]
    if problem:
        return empty, problem
    ds_status = dataset["status"]  # type: ignore[index]
    validation: list[str] = []
    if spec.validation_dataset:
        problem = dataset_problem("validation Dataset", spec.validation_dataset, validation_dataset)
        problem = problem or format_problem(spec.objective, "spec.validationDataset", spec.validation_dataset, validation_dataset)  # type: ignore[arg-type]
        if problem:
            return empty, problem
        vstatus = validation_dataset["status"]  # type: ignore[index]
        validation = [vstatus.get("validationUri") or vstatus["trainUri"]]
    elif not spec.validation_split and ds_status.get("validationUri"):
        validation = [ds_status["validationUri"]]
    checkpoint = None
    if spec.from_checkpoint:
        checkpoint, problem = resolve_checkpoint(spec.from_checkpoint, checkpoint_source, spec)
        if problem:
            return empty, problem
        outside = tenancy.check_read(checkpoint or "", "spec.fromCheckpoint", namespace, config)
        if outside:
            return empty, (Reason.CHECKPOINT_NOT_FOUND, outside)
    return TrainerInputs(
        train_data=[ds_status["trainUri"]],
        validation_data=validation,
        dataset_sha256=ds_status.get("sha256"),
        from_checkpoint=checkpoint,
        artifacts_uri=artifacts_uri,
        output_model_name=naming.output_model_name(namespace, name, spec.base_model.uri, spec.suffix, parent_model_name(checkpoint_source) if checkpoint else None),
        queue=queue,
    ), None


# -- for an Evaluation --------------------------------------------------------------------------------------


def dataset_uri(spec: EvaluationSpec, dataset: dict | None) -> tuple[str | None, tuple[str, str] | None]:
    """The normalised file to evaluate on: the validation split by default, else the training file."""
    if dataset is None:
        return None, (EvaluationReason.DATASET_NOT_FOUND, f"Dataset {spec.dataset} does not exist")
    status = dataset.get("status") or {}
    phase = phase_of(dataset)
    if phase != "Ready" or not status.get("trainUri"):
        detail = f": {status['message']}" if phase == "Invalid" and status.get("message") else ""
        return None, (EvaluationReason.DATASET_NOT_READY, f"waiting for Dataset {spec.dataset} to be Ready (it is {phase}{detail})")
    if spec.split == "validation" and status.get("validationUri"):
        return status["validationUri"], None
    return status["trainUri"], None


def endpoint_model(row: str, endpoint_name: str, requested: str | None, endpoint: dict | None, what: str) -> tuple[ResolvedModel | None, tuple[str, str] | None]:
    if endpoint is None:
        return None, (EvaluationReason.MODEL_NOT_FOUND, f"{what}: InferenceEndpoint {endpoint_name} does not exist")
    status = endpoint.get("status") or {}
    if phase_of(endpoint) != "Ready" or not status.get("url"):
        return None, (EvaluationReason.MODEL_NOT_READY, f"{what}: waiting for InferenceEndpoint {endpoint_name} to be Ready (it is {phase_of(endpoint)})")
    spec = endpoint.get("spec") or {}
    model = requested or spec.get("servedModelName") or endpoint["metadata"]["name"]
    served = status.get("models") or []
    if served and model not in served:
        return None, (EvaluationReason.MODEL_NOT_READY, f"{what}: InferenceEndpoint {endpoint_name} does not serve {model!r} (yet); it serves {', '.join(served)}")
    ref = spec.get("apiKeySecretRef")
    api_key = SecretKeyRef(name=ref["name"], key=ref.get("key") or DEFAULT_API_KEY) if ref else None
    return ResolvedModel(name=row, endpoint=status["url"], model=model, api_key=api_key), None


def finetunejob_model(row: str, job_name_: str, job: dict | None) -> tuple[ResolvedModel | None, tuple[str, str] | None]:
    what = f"model {row}"
    if job is None:
        return None, (EvaluationReason.MODEL_NOT_FOUND, f"{what}: FineTuneJob {job_name_} does not exist")
    phase = phase_of(job)
    output = (job.get("status") or {}).get("outputModel") or {}
    if phase in ("Failed", "Cancelled"):
        return None, (EvaluationReason.MODEL_NOT_READY, f"{what}: FineTuneJob {job_name_} ended {phase} without a model")
    if phase != "Completed" or not output.get("uri"):
        return None, (EvaluationReason.MODEL_NOT_READY, f"{what}: waiting for FineTuneJob {job_name_} to complete (it is {phase})")
    base = (job.get("spec") or {}).get("baseModel") or {}
    if output.get("adapter", True):
        if not base.get("uri"):
            return None, (EvaluationReason.MODEL_NOT_READY, f"{what}: FineTuneJob {job_name_} names no baseModel.uri")
        resolved = ResolvedModel(name=row, model_uri=base["uri"], adapter_uri=output["uri"])
        ref = base.get("secretRef")
        if ref and base["uri"].startswith("hf://"):
            resolved.hf_token = SecretKeyRef(name=ref["name"], key=ref.get("key") or DEFAULT_HF_TOKEN_KEY)
        return resolved, None
    return ResolvedModel(name=row, model_uri=output["uri"]), None


@dataclass
class AdapterResolution:
    spec: AdapterSpec
    uri: str | None
    reason: str | None = None
    message: str | None = None


def resolve_adapter(
    adapter: AdapterSpec, finetunejobs: dict[str, dict | None], namespace: str, config: OperatorConfig, max_lora_rank: int | None = None
) -> AdapterResolution:
    """An adapter's URI, or why it has none yet (a FineTuneJob's output is held to this namespace's storage too).

    ``max_lora_rank`` (vllm): a FineTuneJob's adapter of a higher ``spec.lora.r`` is refused here, before any
    pod fetches it; an adapter named by URI is checked by whatever fetches it."""
    if adapter.uri:
        return AdapterResolution(adapter, adapter.uri)
    job_name = adapter.fine_tune_job or ""
    job = finetunejobs.get(job_name)
    if job is None:
        return AdapterResolution(adapter, None, EndpointReason.FINETUNEJOB_NOT_FOUND, f"FineTuneJob {job_name} does not exist in this namespace")
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    model = status.get("outputModel") or {}
    if phase != "Completed" or not model.get("uri"):
        return AdapterResolution(adapter, None, EndpointReason.FINETUNEJOB_NOT_COMPLETED, f"FineTuneJob {job_name} is {phase}; its adapter is served once it is Completed")
    if model.get("adapter") is False:
        return AdapterResolution(adapter, None, EndpointReason.NOT_AN_ADAPTER, f"FineTuneJob {job_name} trained a full model, not a LoRA adapter; serve it as a baseModel instead")
    outside = tenancy.check_read(model["uri"], f"FineTuneJob {job_name} status.outputModel.uri", namespace, config)
    if outside:
        return AdapterResolution(adapter, None, EndpointReason.ADAPTER_LOAD_FAILED, outside)
    rank = ((job.get("spec") or {}).get("lora") or {}).get("r", LoraOptions.model_fields["r"].default)
    if max_lora_rank is not None and isinstance(rank, int):
        too_high = serving_checks.adapter_problem(f"FineTuneJob {job_name}'s adapter", {"r": rank}, max_lora_rank, VLLM_LORA_RANKS)
        if too_high:
            return AdapterResolution(adapter, None, EndpointReason.ADAPTER_LOAD_FAILED, f"AdapterRankTooHigh: {too_high}")
    return AdapterResolution(adapter, model["uri"])
