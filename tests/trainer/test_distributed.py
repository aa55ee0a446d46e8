"""Two processes on one machine (gloo on CPU), as on a node with two GPUs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from finetune_trainer.contract import ExitCode, Manifest

from .conftest import TrainerRun, arithmetic_conversations, read_events, read_progress, trainer_config, write_jsonl

pytestmark = pytest.mark.slow


def test_two_processes_train_in_step_and_only_rank_zero_writes(tiny_model: Path, tmp_path: Path):
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_conversations(40, seed=3))
    output = tmp_path / "job"
    config = trainer_config(
        tiny_model, [str(data)], output, validationSplit=0.1, lora={"r": 8, "alpha": 16, "dropout": 0.1},
        hyperparameters={"epochs": 2, "nEvals": 1, "nCheckpoints": 1},
    )
    run = TrainerRun(tmp_path / "run", config, env={"NPROC_PER_NODE": "2"})
    result = run.run()
    assert result.returncode == ExitCode.OK, result.stderr
    assert "[rank 1]" not in result.stderr or "Traceback" not in result.stderr

    messages = [e["message"] for e in read_events(output)]
    # Each process checks the others' trainable weights at the end: DDP kept them identical.
    assert any(m.startswith("Trainable weights agree across 2 processes") for m in messages), messages
    # One writer: every event once.
    assert messages.count("Fine-tuning job started") == 1 and messages.count("Fine-tuning job completed") == 1
    progress = read_progress(output)
    assert progress["phase"] == "done" and progress["evalLoss"] is not None
    manifest = Manifest.model_validate_json((output / "model" / "manifest.json").read_text())
    assert manifest.metadata["world_size"] == 2


def test_torchrun_launch_is_understood(tiny_model: Path, tmp_path: Path):
    """The operator may start the workers with torchrun; the trainer then joins its process group."""
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_conversations(16, seed=4))
    output = tmp_path / "job"
    config = trainer_config(tiny_model, [str(data)], output, hyperparameters={"epochs": 1, "gradientCheckpointing": True})
    run = TrainerRun(tmp_path / "run", config)
    run.command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "finetune_trainer", "train", "--config", str(run.config_path),
    ]
    result = run.run()
    assert result.returncode == ExitCode.OK, result.stderr
    assert any(m.startswith("Trainable weights agree across 2 processes") for m in (e["message"] for e in read_events(output)))
    assert json.loads((output / "model" / "manifest.json").read_text())["metadata"]["world_size"] == 2


def test_full_fine_tuning_on_two_processes_shards_and_saves_a_whole_model(tiny_model: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_conversations(16, seed=6))
    output = tmp_path / "job"
    config = trainer_config(tiny_model, [str(data)], output, method="full", hyperparameters={"epochs": 1, "learningRate": 0.001})
    result = TrainerRun(tmp_path / "run", config, env={"NPROC_PER_NODE": "2"}).run()
    assert result.returncode == ExitCode.OK, result.stderr
    assert "model: 126,016 parameters" in result.stderr  # the whole tiny model, trained in two shards
    model, info = AutoModelForCausalLM.from_pretrained(output / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    changed = [n for n, p in model.named_parameters() if not (p - dict(base.named_parameters())[n]).abs().max() < 1e-9]
    assert len(changed) == len(list(base.parameters())), "every parameter is trained, from its shard"


def test_one_gpu_on_each_of_two_nodes_trains_one_model_together(tiny_model: Path, tmp_path: Path):
    """numNodes 2 with one process per node (gpus: 1): each pod runs a single process, which must still
    join the job's process group instead of training alone."""
    from finetune_trainer.train.distributed import free_port

    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_conversations(24, seed=7))
    output = tmp_path / "job"
    config = trainer_config(tiny_model, [str(data)], output, hyperparameters={"epochs": 1})
    port = str(free_port())
    nodes = [
        TrainerRun(tmp_path / f"node-{index}", config, env={
            "NNODES": "2", "NPROC_PER_NODE": "1", "JOB_COMPLETION_INDEX": str(index), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
        })  # fmt: skip
        for index in range(2)
    ]
    procs = [node.start() for node in nodes]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [ExitCode.OK, ExitCode.OK], outputs
    messages = [e["message"] for e in read_events(output)]
    assert any(m.startswith("Trainable weights agree across 2 processes") for m in messages), messages
    assert messages.count("Fine-tuning job started") == 1, "one writer: rank 0 of the two nodes"
    assert Manifest.model_validate_json((output / "model" / "manifest.json").read_text()).metadata["world_size"] == 2
