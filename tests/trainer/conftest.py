"""Fixtures of the trainer tests: the tiny model, generated datasets, and running ``finetune-trainer train``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_local.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic tiny Llama (byte-level tokenizer, chat template), written once per test session."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


def arithmetic_conversations(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Short conversations with a learnable answer: the model should get better at them quickly."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Add."},
                    {"role": "user", "content": f"{a}+{b}"},
                    {"role": "assistant", "content": f"{a + b}"},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trainer_config(model: Path | str, train: list[str], output: Path | str, **overrides: Any) -> dict[str, Any]:
    """A small, fast TrainerConfig (camelCase, as the operator writes it); ``hyperparameters`` merge."""
    hyper = {"epochs": 2, "batchSize": 2, "maxSeqLength": 64, "learningRate": 0.02, "nCheckpoints": 1, "warmupRatio": 0.0}
    hyper.update(overrides.pop("hyperparameters", {}))
    config: dict[str, Any] = {
        "baseModel": str(model),
        "trainData": train,
        "outputUri": str(output),
        "metricsPort": 0,
        "progressIntervalSeconds": 1,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "hyperparameters": hyper,
    }
    config.update(overrides)
    return config


class TrainerRun:
    """``finetune-trainer train --config`` as a subprocess, with its own termination-log file."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.json"
        self.config_path.write_text(json.dumps(config))
        self.termination_log = workdir / "termination-log"
        self.env = {
            **os.environ,
            "FINETUNE_TERMINATION_LOG": str(self.termination_log),
            "FINETUNE_WORK_DIR": str(workdir / "scratch"),
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        self.env.pop("WORLD_SIZE", None)
        self.command = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(self.config_path)]

    def run(self, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(self.command, env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_events(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output / "events.jsonl").read_text().splitlines()]


def read_progress(output: Path) -> dict[str, Any]:
    return json.loads((output / "progress.json").read_text())
