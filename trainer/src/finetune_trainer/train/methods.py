"""Base models and fine-tuning methods: where the weights come from, LoRA / QLoRA / full, precision, batch size.

Base model URIs:

* ``hf://org/name[@revision]``: downloaded with ``huggingface_hub.snapshot_download`` (token read from
  ``baseModelTokenFile``; weights, config and tokenizer files only);
* ``s3://bucket/prefix``: an artifact with a ``manifest.json``, downloaded and verified. A folder without
  one (copied by hand) is refused, as serving refuses it: ``finetune-trainer upload`` makes it an artifact;
* ``pvc://claim/path``: the operator mounts the claim at ``/models/<claim>``, so this is the local folder
  ``/models/<claim>/<path>`` (the root can be moved with ``FINETUNE_PVC_ROOT``);
* anything else: a local folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finetune_trainer.contract import MANIFEST_FILE, TrainerConfig
from finetune_trainer.storage import IncompleteArtifactError, ObjectStore, StorageError, is_s3, missing_manifest_message
from finetune_trainer.train.errors import TrainerFailure, bad_input

PVC_ROOT_ENV = "FINETUNE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/models"
HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]


# ----------------------------------------------------------------------------------------------
# Checks that need no download


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    precision: str  # "bf16" | "fp16" | "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)


def plan_device(config: TrainerConfig, local_rank: int) -> DevicePlan:
    """Device and precision for this process, or a bad-input failure for what this machine cannot do."""
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if config.num_gpus > visible:
        raise bad_input(
            "ImpossibleConfig",
            f"numGpus is {config.num_gpus} but this node has {visible} visible GPU(s)",
        )
    if config.method == "qlora":
        if config.num_gpus == 0 or visible == 0:
            raise bad_input("ImpossibleConfig", "method qlora (4-bit) needs a GPU: set numGpus >= 1 or use method lora")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise bad_input("ImpossibleConfig", "method qlora needs the bitsandbytes package, which this trainer image lacks") from None
    use_cuda = config.num_gpus > 0
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    precision = config.precision
    if precision == "auto":
        precision = ("bf16" if native_bf16() else "fp16") if use_cuda else "fp32"
    if precision == "fp16" and not use_cuda:
        raise bad_input("ImpossibleConfig", "precision fp16 needs a GPU; use fp32 or bf16 on CPU")
    if precision == "bf16" and use_cuda and not native_bf16():
        raise bad_input("ImpossibleConfig", "precision bf16 is not supported by this GPU (compute capability below 8.0); use fp16 or auto")
    return DevicePlan(device, precision)


def native_bf16() -> bool:
    """bf16 in the GPU's hardware (compute capability 8.0 and up: A100, L4, H100...).

    ``torch.cuda.is_bf16_supported()`` alone also counts bf16 emulated in software, as on a V100 or a T4,
    where it is many times slower than fp16: ``precision: auto`` picks fp16 (with loss scaling) there.
    """
    return torch.cuda.is_bf16_supported(including_emulation=False)


def grad_scaler(precision: str, sharded: bool, device: torch.device) -> Any:
    """The loss scaler fp16 training needs (None otherwise).

    Sharded parameters (FSDP) need ``ShardedGradScaler``: each process sees only its shard's gradients, so
    whether any gradient overflowed must be agreed on by all processes, or some would step and others skip.
    """
    if precision != "fp16":
        return None
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type)


# ----------------------------------------------------------------------------------------------
# Fetching a model folder


def pvc_path(uri: str) -> Path:
    """``pvc://claim/path`` → ``/models/claim/path`` (where the operator mounts the claim)."""
    rest = uri[len("pvc://") :].strip("/")
    claim, _, sub = rest.partition("/")
    if not claim:
        raise bad_input("BaseModelNotFound", f"{uri}: a pvc:// URI needs a claim name")
    return Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)) / claim / sub


def fetch_model_folder(uri: str, store: ObjectStore, dest: Path, token_file: str | None = None) -> Path:
    """A local folder with the model (or adapter) at ``uri``."""
    if uri.startswith("hf://"):
        return _fetch_hf(uri, dest, token_file)
    if is_s3(uri):
        try:
            if not store.exists(f"{uri.rstrip('/')}/{MANIFEST_FILE}"):
                raise bad_input("BaseModelNotFound", missing_manifest_message(uri, bool([n for n in store.list(uri) if n])))
            store.download_artifact(uri, dest)
            return dest
        except IncompleteArtifactError as e:
            raise bad_input("BaseModelNotFound", str(e)) from None
        except StorageError as e:
            raise TrainerFailure("StorageError", f"cannot download {uri}: {e}") from None
    path = pvc_path(uri) if uri.startswith("pvc://") else Path(uri[len("file://") :] if uri.startswith("file://") else uri)
    if not path.is_dir():
        raise bad_input("BaseModelNotFound", f"{uri}: no such model folder")
    return path


def _fetch_hf(uri: str, dest: Path, token_file: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    repo, _, revision = uri[len("hf://") :].partition("@")
    if repo.count("/") != 1:
        raise bad_input("BaseModelNotFound", f"{uri}: expected hf://org/name[@revision]")
    token = None
    if token_file:
        try:
            token = Path(token_file).read_text().strip() or None
        except OSError as e:
            raise bad_input("BaseModelNotFound", f"cannot read baseModelTokenFile: {e.strerror}") from None
    try:
        return Path(
            snapshot_download(
                repo_id=repo,
                revision=revision or None,
                token=token,
                local_dir=dest,
                allow_patterns=HF_ALLOW_PATTERNS,
            )
        )
    except GatedRepoError:
        raise bad_input("BaseModelNotFound", f"{uri}: the repository is gated and the token does not grant access") from None
    except RepositoryNotFoundError:
        raise bad_input("BaseModelNotFound", f"{uri}: no such repository, or it is private and no valid token was given") from None
    except RevisionNotFoundError:
        raise bad_input("BaseModelNotFound", f"{uri}: no such revision") from None
    except Exception as e:  # network errors: retryable
        raise TrainerFailure("StorageError", f"cannot download {uri}: {type(e).__name__}") from None


# ----------------------------------------------------------------------------------------------
# Building the model


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise bad_input("BaseModelNotFound", f"cannot load a tokenizer from the base model: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(folder: Path, config: TrainerConfig, plan: DevicePlan) -> nn.Module:
    """The base model on the right device: 4-bit for QLoRA, bf16 weights for LoRA on bf16, fp32 otherwise."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": attention_implementation(plan)}
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=plan.autocast_dtype or torch.float32,
        )
        kwargs["device_map"] = {"": plan.device}
        kwargs["dtype"] = plan.autocast_dtype or torch.float32
    elif config.method == "lora" and plan.autocast_dtype is not None:
        kwargs["dtype"] = plan.autocast_dtype  # frozen base weights in half precision; the adapter stays fp32
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise bad_input("BaseModelNotFound", f"cannot load the base model: {e}") from None
    if config.method != "qlora":
        model.to(plan.device)
    model.config.use_cache = False
    return model


def attention_implementation(plan: DevicePlan) -> str:
    """Attention that keeps packed examples apart.

    GPU: ``sdpa``, with the block-diagonal causal mask transformers builds from the packed position ids
    (correct at any batch size and in any precision). Not ``flash_attention_2``: transformers derives its
    varlen boundaries from position ids only for a single row, so at batch size > 1 attention would cross
    packed examples, and flash-attn refuses fp32. CPU: ``packed_sdpa`` (see ``train/attention.py``).
    """
    if plan.device.type == "cuda":
        return "sdpa"
    from finetune_trainer.train.attention import PACKED_SDPA

    return PACKED_SDPA


def linear_module_names(model: nn.Module) -> list[str]:
    """Plain names (``q_proj``, ``down_proj``...) of every linear layer but the output head.

    LoRA adapters name their targets this way so any runtime (vLLM included) can load them.
    """
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: set[str] = set()
    for name, module in model.named_modules():
        if module is output:
            continue
        if isinstance(module, nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt"}:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def apply_lora(model: nn.Module, config: TrainerConfig, adapter_folder: Path | None = None) -> nn.Module:
    """Wrap the base model with a trainable LoRA adapter: a fresh one, or the one in ``adapter_folder``."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.hyperparameters.gradient_checkpointing)
    if adapter_folder is not None:
        return PeftModel.from_pretrained(model, adapter_folder, is_trainable=True)
    targets = config.lora.target_modules
    available = linear_module_names(model)
    if targets == "all-linear":
        targets = available
    else:
        missing = [t for t in targets if t not in available]
        if missing:
            raise bad_input(
                "ImpossibleConfig",
                f"lora.targetModules {missing} are not linear layers of this model (it has: {', '.join(available)})",
            )
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ----------------------------------------------------------------------------------------------
# Batch size


CPU_AUTO_BATCH_SIZE = 4


def auto_batch_size(model: nn.Module, config: TrainerConfig, plan: DevicePlan) -> int:
    """``batchSize: auto``: rows (packed sequences of up to maxSeqLength tokens) per micro-step.

    On CPU, a small fixed number (4). On a GPU, from free memory after the model is loaded:

    * training state per parameter: full fine-tuning keeps fp32 gradients and two AdamW moments
      (12 bytes per parameter on top of the weights); LoRA only for its adapter parameters;
    * activations per token: about ``34 * hidden * layers`` bytes in 16-bit precision (the transformer
      estimate of Korthikanti et al., attention scores excluded: sdpa/flash attention do not keep them),
      ``hidden * layers * 2`` plus one layer's worth with gradient checkpointing, and twice that in fp32;
    * 80% of what is free goes to activations, the rest is headroom for the allocator and logits.

    The result is clamped to 1..64 rows.
    """
    if plan.device.type != "cuda":
        return CPU_AUTO_BATCH_SIZE
    hp = config.hyperparameters
    free, _total = torch.cuda.mem_get_info(plan.device)
    trainable, _ = count_parameters(model)
    state_bytes = trainable * 12
    cfg = getattr(model, "config", None)
    hidden = int(getattr(cfg, "hidden_size", 4096))
    layers = int(getattr(cfg, "num_hidden_layers", 32))
    bytes_per_value = 2 if plan.autocast_dtype is not None else 4
    per_token = (hidden * layers * 2 + 34 * hidden) if hp.gradient_checkpointing else 34 * hidden * layers
    per_token = per_token * bytes_per_value // 2
    budget = 0.8 * free - state_bytes
    rows = int(budget // max(1, per_token * hp.max_seq_length))
    return max(1, min(64, rows))
