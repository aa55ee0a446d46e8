"""``output.merge``: a LoRA adapter merged into its base model, one weight file at a time.

Loading the base model to merge into it would hold a whole copy in memory (an 8B model is 32 GB in fp32,
the trainer pod's whole memory, right after training). The merge instead reads the base model's
safetensors files one by one, adds ``scale * B @ A`` (computed in fp32) to each adapted weight, and writes
the file again in the weight's own dtype before reading the next one: memory stays about one file of the
checkpoint (a few GB), whatever the model's size. A bf16 base gives a bf16 merged model.

The adapter must be plain LoRA as this trainer writes it (PEFT layout, no DoRA, no bias, no
``modules_to_save``); other layouts and base models without safetensors files are refused.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


class MergeError(ValueError):
    """The adapter or the base model is not one this merge can combine."""


def lora_deltas(adapter_folder: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float, bool]:
    """``{base weight name: (A, B)}``, the scale, and whether the adapter stores weights transposed."""
    config = json.loads((adapter_folder / ADAPTER_CONFIG).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"not a LoRA adapter (peft_type {config.get('peft_type')})")
    if config.get("use_dora") or config.get("modules_to_save") or config.get("bias", "none") != "none":
        raise MergeError("only plain LoRA adapters (no DoRA, bias or modules_to_save) can be merged file by file")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise MergeError("adapters with per-module ranks or alphas cannot be merged file by file")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_file(adapter_folder / ADAPTER_WEIGHTS)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0].removeprefix(PEFT_PREFIX)
                pairs.setdefault(f"{module}.weight", {})[part] = value
                break
        else:
            raise MergeError(f"unexpected tensor {key} in the adapter")
    deltas = {}
    for name, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise MergeError(f"{name}: the adapter lacks lora_A or lora_B")
        deltas[name] = (pair["lora_A"], pair["lora_B"])
    return deltas, scale, bool(config.get("fan_in_fan_out"))


def weight_files(base_folder: Path) -> list[str]:
    index = base_folder / INDEX_FILE
    if index.exists():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (base_folder / SINGLE_FILE).exists():
        return [SINGLE_FILE]
    raise MergeError(f"the base model has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE})")


def merge_adapter(base_folder: Path, adapter_folder: Path, merged_folder: Path) -> dict[str, Any]:
    """Write the base model with the adapter merged into ``merged_folder``; returns what was merged."""
    base_folder, adapter_folder, merged_folder = Path(base_folder), Path(adapter_folder), Path(merged_folder)
    deltas, scale, transposed = lora_deltas(adapter_folder)
    files = weight_files(base_folder)
    merged_folder.mkdir(parents=True, exist_ok=True)
    weight_names = set(files) | {INDEX_FILE}
    for path in base_folder.iterdir():  # config, generation config, tokenizer...: as they are
        if path.is_file() and path.name not in weight_names and not path.name.endswith((".bin", ".pt", ".pth")):
            shutil.copy2(path, merged_folder / path.name)
    if (base_folder / INDEX_FILE).exists():
        shutil.copy2(base_folder / INDEX_FILE, merged_folder / INDEX_FILE)
    done: set[str] = set()
    for name in files:
        out: dict[str, torch.Tensor] = {}
        with safe_open(str(base_folder / name), framework="pt") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                tensor = f.get_tensor(key)
                if key in deltas:
                    a, b = deltas[key]
                    delta = b.float() @ a.float()
                    if transposed:
                        delta = delta.T
                    if delta.shape != tensor.shape:
                        raise MergeError(f"{key}: the adapter's update {tuple(delta.shape)} does not fit the weight {tuple(tensor.shape)}")
                    tensor = (tensor.float() + scale * delta).to(tensor.dtype)
                    done.add(key)
                out[key] = tensor
        save_file(out, str(merged_folder / name), metadata={**metadata, "format": "pt"})
        del out
    missing = sorted(set(deltas) - done)
    if missing:
        raise MergeError(f"the base model has no weight for the adapter's {', '.join(missing[:5])}")
    return {"files": len(files), "merged_weights": len(done), "scale": scale}
