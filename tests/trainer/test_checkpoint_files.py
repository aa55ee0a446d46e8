"""A checkpoint comes back from the job's prefix of the store, which the tenant's pods can write: its ``.pt``
files are loaded as tensors and plain values only, so a planted pickle can never run code in the trainer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from finetune_trainer.contract import ExitCode

from .conftest import TrainerRun, arithmetic_conversations, read_events, read_progress, trainer_config, write_jsonl

pytestmark = pytest.mark.slow


class CreatesAFileWhenUnpickled:
    """What an attacker's pickle does: call any function while being loaded (here, harmlessly, ``open``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_in_a_checkpoint_is_refused_unloaded(tiny_model: Path, tmp_path: Path):
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_conversations(8))
    output = tmp_path / "job"
    run = TrainerRun(tmp_path / "run", trainer_config(tiny_model, [str(data)], output, hyperparameters={"epochs": 1}))
    first = run.run()
    assert first.returncode == 0, first.stderr
    [checkpoint] = (output / "checkpoints").iterdir()

    # The job died after its checkpoint, before its model was uploaded: the retry resumes from the
    # checkpoint, whose real files (optimizer, scheduler, RNG states) load as tensors and plain values.
    shutil.rmtree(output / "model")
    resumed = run.run()
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in [e.get("reason") for e in read_events(output)]

    # Someone with the tenant's store credentials replaces the optimizer state with a pickle that runs code.
    shutil.rmtree(output / "model")
    marker = tmp_path / "code-ran"
    torch.save({"state": CreatesAFileWhenUnpickled(marker)}, checkpoint / "optimizer.pt")
    refused = run.run()
    assert refused.returncode == ExitCode.BAD_INPUT, refused.stderr
    assert not marker.exists(), "the planted pickle ran code in the trainer"
    progress = read_progress(output)
    assert progress["phase"] == "failed" and progress["reason"] == "CheckpointRefused"
    assert f"{checkpoint.name}/optimizer.pt" in progress["message"] and "weights_only" in progress["message"]
    assert "Traceback" not in refused.stderr
