"""Full fine-tuning on several processes: the model built on the meta device, sharded, then filled from rank 0.

Loading the checkpoint in every process before sharding it would put one whole fp32 copy per GPU in the
node's memory (8 x 32 GB for an 8B model on an 8-GPU node) and on each GPU. Instead every process builds
the model without memory (parameters on the meta device), shards it (``fully_shard`` per decoder layer,
then the whole), allocates only its own shards, and rank 0 alone reads the safetensors files: one tensor
at a time, cast to the parameter's dtype and scattered so each process keeps its shard
(``distribute_tensor``). Buffers computed at construction (RoPE frequencies) are kept; buffers the
checkpoint holds are broadcast from rank 0. Tied weights stay one parameter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointReader:
    """Tensors of a safetensors checkpoint (one file or sharded), read one by one."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        index = folder / INDEX_FILE
        if index.exists():
            self.files = {key: folder / name for key, name in json.loads(index.read_text())["weight_map"].items()}
        elif (folder / SINGLE_FILE).exists():
            from safetensors import safe_open

            with safe_open(str(folder / SINGLE_FILE), framework="pt") as f:
                self.files = {key: folder / SINGLE_FILE for key in f.keys()}
        else:
            from finetune_trainer.train.errors import bad_input

            raise bad_input("BaseModelNotFound", f"the model folder has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE})")

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def tensor(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.files[key]), framework="pt") as f:
            return f.get_tensor(key)


def build_sharded_model(folder: Path, config: Any, plan: Any, rank: int) -> tuple[nn.Module, nn.Module]:
    """(the causal LM, the ``CausalLMLoss`` (dpo: ``SequenceLogProbs``) around it), sharded with FSDP and loaded from ``folder``."""
    from accelerate import init_empty_weights
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    from finetune_trainer.train.errors import bad_input
    from finetune_trainer.train.dpo import SequenceLogProbs
    from finetune_trainer.train.loss import CausalLMLoss
    from finetune_trainer.train.methods import attention_implementation

    try:
        model_config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise bad_input("BaseModelNotFound", f"cannot load the base model: {e}") from None
    with init_empty_weights(include_buffers=False):  # parameters on the meta device, buffers computed for real
        lm = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32, attn_implementation=attention_implementation(plan))
    lm.tie_weights()  # from_config leaves tied weights untied under init_empty_weights
    lm.config.use_cache = False
    if config.hyperparameters.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module = SequenceLogProbs(lm) if config.objective == "dpo" else CausalLMLoss(lm)
    layer_classes = set(getattr(lm, "_no_split_modules", None) or [])
    for sub in module.modules():
        if type(sub).__name__ in layer_classes:
            fully_shard(sub)
    fully_shard(module)
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    module.to_empty(device=plan.device)  # this process's shards only
    load_sharded_weights(module, folder, rank, buffers, tied=bool(getattr(model_config, "tie_word_embeddings", False)))
    return lm, module


def load_sharded_weights(module: nn.Module, folder: Path, rank: int, buffers: dict[str, torch.Tensor], tied: bool, prefix: str = "lm.") -> None:
    """Fill the sharded parameters from rank 0's reading of ``folder``; every process calls it, in the same order."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    from finetune_trainer.train.errors import bad_input

    reader = CheckpointReader(folder) if rank == 0 else None
    missing: list[str] = []

    def full_tensor(name: str, like: torch.Tensor) -> torch.Tensor:
        key = name.removeprefix(prefix)
        if reader is not None:
            if key not in reader and tied and key.endswith("lm_head.weight"):
                key = next((k for k in reader.files if k.endswith("embed_tokens.weight")), key)
            if key in reader:
                return reader.tensor(key).to(device=like.device, dtype=like.dtype)
            missing.append(key)
        return torch.zeros(like.shape, dtype=like.dtype, device=like.device)

    with torch.no_grad():
        for name, param in module.named_parameters():
            if isinstance(param, DTensor):
                local = param.to_local()
                shard = distribute_tensor(full_tensor(name, local.new_empty(param.shape)), param.device_mesh, param.placements, src_data_rank=0)
                local.copy_(shard.to_local())
            else:
                value = full_tensor(name, param)
                if dist.is_initialized():
                    dist.broadcast(value, src=0)
                param.copy_(value)
        persistent = set(module.state_dict().keys())
        for name, buffer in module.named_buffers():
            value = buffers[name].to(device=buffer.device, dtype=buffer.dtype)
            if name in persistent:  # the checkpoint's value where it has one, the same on every process
                key = name.removeprefix(prefix)
                if reader is not None and key in reader:
                    value = reader.tensor(key).to(device=buffer.device, dtype=buffer.dtype)
                if dist.is_initialized():
                    dist.broadcast(value, src=0)
            buffer.copy_(value)
    failed = [bool(missing)]
    if dist.is_initialized():
        dist.broadcast_object_list(failed, src=0)
    if failed[0]:
        raise bad_input("BaseModelNotFound", f"the checkpoint lacks weights of the model: {', '.join((missing or ['(see rank 0)'])[:5])}")
