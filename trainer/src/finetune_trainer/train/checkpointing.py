"""Checkpoints: what is saved, where, and how a restarted run finds the newest complete one.

A checkpoint ``<outputUri>/checkpoints/step-N/`` holds:

* ``adapter/`` (PEFT layout) for LoRA/QLoRA, or ``model/`` (safetensors + config) for full fine-tuning;
* ``optimizer.pt`` and ``scheduler.pt`` (full, unsharded state dicts keyed by parameter name);
* ``rng.pt``: the RNG states of every process (python, torch, CUDA);
* ``reference.pt`` (objective dpo): the reference log-probabilities of every pair, which a resumed run
  cannot compute again from weights that have moved on;
* ``trainer_state.json``: step, epoch, micro-batch position in the epoch, the batch plan's shape;
* ``manifest.json``, written last by ``ObjectStore.upload_artifact``: without it the checkpoint does not count.

The ``.pt`` files hold tensors and plain values only (dicts, lists, tuples, numbers, strings; the python RNG
state is a tuple of ints) and are loaded with ``weights_only``: a checkpoint comes back from the job's prefix of
the store, which the tenant's pods can write, and a pickle that builds any other object could run code.
"""

from __future__ import annotations

import json
import pickle
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from finetune_trainer.contract import CHECKPOINTS_DIR, MANIFEST_FILE, join_uri
from finetune_trainer.storage import ObjectStore
from finetune_trainer.train.errors import bad_input

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
REFERENCE_FILE = "reference.pt"
"""DPO: the reference log-probabilities of the training and validation pairs, computed before the first step."""
ADAPTER_SUBDIR = "adapter"
MODEL_SUBDIR = "model"

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Where training stands; enough, with the seed, to replay the same batch order from here."""

    step: int
    epoch: int
    batch_in_epoch: int
    total_steps: int
    batches_per_epoch: int
    gradient_accumulation_steps: int
    world_size: int
    trained_tokens: int = 0
    method: str = "lora"

    def save(self, folder: Path) -> None:
        (folder / TRAINER_STATE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "TrainerState":
        data = json.loads((folder / TRAINER_STATE).read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def checkpoints_uri(output_uri: str) -> str:
    return join_uri(output_uri, CHECKPOINTS_DIR)


def complete_checkpoints(store: ObjectStore, output_uri: str) -> list[tuple[int, str]]:
    """``(step, uri)`` of every checkpoint of this job that has a manifest, oldest first."""
    root = checkpoints_uri(output_uri)
    steps: set[int] = set()
    for name in store.list(root):
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == MANIFEST_FILE:
            match = _STEP_DIR.match(parts[0])
            if match:
                steps.add(int(match.group(1)))
    return [(s, join_uri(root, f"step-{s}")) for s in sorted(steps)]


def load_state_file(path: Path) -> Any:
    """One of a checkpoint's ``.pt`` files, loaded with ``weights_only``. A file that would build any other object
    than tensors and plain values is refused unloaded (``CheckpointRefused``, exit 42: every retry would meet
    the same file), naming the file and the rule, not what it holds."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise bad_input(
            "CheckpointRefused",
            f"checkpoint {path.parent.name}/{path.name} holds objects other than tensors and plain values; "
            "refused without loading it (weights_only)",
        ) from None


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_checkpoint_folder(folder: Path) -> bool:
    return (folder / TRAINER_STATE).exists()


def check_continuation(folder: Path, method: str) -> None:
    """fromCheckpoint: a LoRA or QLoRA job continues an adapter, a full job a full model; say so before loading."""
    from finetune_trainer.train.errors import bad_input

    adapter = (folder / "adapter_config.json").is_file()
    if method == "full" and adapter:
        raise bad_input("ImpossibleConfig", "fromCheckpoint holds a LoRA adapter; method full continues a full model (merge the adapter first)")
    if method != "full" and not adapter:
        raise bad_input("ImpossibleConfig", f"fromCheckpoint holds no LoRA adapter (adapter_config.json); method {method} continues an adapter")


def weights_folder(folder: Path) -> Path:
    """The adapter or model folder inside a checkpoint, or the folder itself (a job's ``model/`` output)."""
    for sub in (ADAPTER_SUBDIR, MODEL_SUBDIR):
        if (folder / sub).is_dir():
            return folder / sub
    return folder
