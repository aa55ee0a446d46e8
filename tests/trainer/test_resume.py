"""Interruptions: a killed or preempted job run again with the same command resumes from its last checkpoint."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from finetune_trainer.contract import ExitCode

from .conftest import TrainerRun, read_events, read_progress, trainer_config, write_jsonl

pytestmark = pytest.mark.slow


def word_texts(n: int, words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(["red", "green", "blue", "cyan"]) for _ in range(words))} for _ in range(n)]


def resumable_config(tiny_model: Path, data: Path, output: Path) -> dict:
    # 100 packed rows of two examples, 2 rows a step: 50 steps, checkpoints at 25 and 50.
    return trainer_config(
        tiny_model,
        [str(data)],
        output,
        lora={"r": 8, "alpha": 16, "dropout": 0.1},
        hyperparameters={"epochs": 1, "batchSize": 2, "maxSeqLength": 256, "nCheckpoints": 2, "lrScheduler": "cosine", "warmupRatio": 0.1},
    )


def wait_for(path: Path, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the trainer ended before {path} appeared:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def test_killed_job_resumes_from_its_last_checkpoint_and_ends_like_an_uninterrupted_one(tiny_model: Path, tmp_path: Path):
    data = write_jsonl(tmp_path / "train.jsonl", word_texts(200, 24))
    output = tmp_path / "job"
    run = TrainerRun(tmp_path / "run", resumable_config(tiny_model, data, output))

    first = run.start()
    try:
        wait_for(output / "checkpoints" / "step-25" / "manifest.json", first)
        first.send_signal(signal.SIGKILL)  # a node lost: no chance to save anything
    finally:
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    interrupted = read_progress(output)
    assert interrupted["phase"] == "training"
    assert interrupted["step"] < interrupted["totalSteps"] == 50, "the first run was not interrupted mid-training"

    second = run.run()  # the Job's retry: the very same command
    assert second.returncode == ExitCode.OK, second.stderr
    messages = [e["message"] for e in read_events(output)]
    assert "Resuming from checkpoint at step 25" in messages
    resumed_start = messages.index("Resuming from checkpoint at step 25")
    assert messages[resumed_start:].count("Training started") == 1
    assert "training from step 25 of 50" in second.stderr
    done = read_progress(output)
    assert done["phase"] == "done" and done["step"] == done["totalSteps"] == 50
    assert [c["step"] for c in done["checkpoints"]] == [25, 50]

    # Same data order, optimizer, scheduler and RNG: the result is the uninterrupted run's.
    reference = tmp_path / "reference"
    ref = TrainerRun(tmp_path / "run-ref", resumable_config(tiny_model, data, reference)).run()
    assert ref.returncode == ExitCode.OK, ref.stderr
    resumed_weights = load_file(output / "model" / "adapter_model.safetensors")
    reference_weights = load_file(reference / "model" / "adapter_model.safetensors")
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert (resumed_weights[name] - tensor).abs().max() < 1e-6, name


def test_sigterm_saves_a_checkpoint_and_exits_preempted(tiny_model: Path, tmp_path: Path):
    data = write_jsonl(tmp_path / "train.jsonl", word_texts(200, 24, seed=1))
    output = tmp_path / "job"
    config = resumable_config(tiny_model, data, output)
    config["hyperparameters"]["nCheckpoints"] = 1
    # The trainer holds after step 5 until told to stop: the signal lands mid-run however fast the machine is.
    run = TrainerRun(tmp_path / "run", config, env={"FINETUNE_HOLD_AT_STEP": "5"})
    process = run.start()
    try:
        wait_for(output / "progress.json", process)
        while read_progress(output)["step"] < 5:
            assert process.poll() is None
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)  # the Job is suspended or the node drains
    finally:
        process.wait(timeout=60)
    assert process.returncode == ExitCode.PREEMPTED
    progress = read_progress(output)
    (checkpoint,) = progress["checkpoints"]
    assert checkpoint["step"] == 5
    assert (Path(checkpoint["uri"]) / "manifest.json").exists()
    assert progress["exitCode"] == ExitCode.PREEMPTED
    assert run.termination_log.read_text().startswith(f"Preempted: preempted at step {checkpoint['step']}")

    del run.env["FINETUNE_HOLD_AT_STEP"]
    again = run.run()
    assert again.returncode == ExitCode.OK, again.stderr
    assert f"training from step {checkpoint['step']} of 50" in again.stderr
