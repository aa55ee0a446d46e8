"""Decisions the trainer takes for GPUs, checked on CPU: precision, attention, loss scaling across processes.

Where a decision depends on the GPU, the test states the GPU's answer to torch's query (a V100 emulates
bf16, an A100 has it in hardware) and runs the trainer's own code with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
import torch

from finetune_trainer.contract import TrainerConfig
from finetune_trainer.train.distributed import free_port
from finetune_trainer.train.errors import TrainerFailure
from finetune_trainer.train.methods import DevicePlan, attention_implementation, plan_device


def gpu_node(monkeypatch, *, capability: tuple[int, int]) -> None:
    """Answer torch's CUDA queries as a node with one GPU of this compute capability would."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # torch's own rule: emulated bf16 counts unless including_emulation=False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or capability >= (8, 0))


def config(**overrides) -> TrainerConfig:
    return TrainerConfig.model_validate({"baseModel": "m", "trainData": ["d.jsonl"], "outputUri": "/tmp/out", "numGpus": 1, **overrides})


@pytest.mark.parametrize(("capability", "expected"), [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")], ids=["V100", "T4", "A100", "H100"])
def test_precision_auto_picks_bf16_only_where_the_gpu_has_it_in_hardware(monkeypatch, capability, expected):
    gpu_node(monkeypatch, capability=capability)
    assert plan_device(config(), 0).precision == expected


def test_bf16_asked_for_on_a_gpu_that_only_emulates_it_is_refused_naming_the_alternative(monkeypatch):
    gpu_node(monkeypatch, capability=(7, 0))
    with pytest.raises(TrainerFailure) as info:
        plan_device(config(precision="bf16"), 0)
    assert info.value.reason == "ImpossibleConfig" and "use fp16 or auto" in info.value.message


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpus_get_an_attention_that_keeps_packed_examples_apart_even_with_flash_attn_installed(monkeypatch, precision):
    """flash_attention_2 reads example boundaries from position ids only for a single row, and refuses fp32."""
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert attention_implementation(DevicePlan(torch.device("cuda", 0), precision)) == "sdpa"


SCALER_WORKER = r"""
import json, os, sys, torch
from finetune_trainer.train import distributed
from finetune_trainer.train.methods import grad_scaler

env = distributed.env_from_os()
distributed.init_process_group(env, torch.device("cpu"))
weight = torch.nn.Parameter(torch.ones(4))
optimizer = torch.optim.SGD([weight], lr=0.1)
scaler = grad_scaler("fp16", sharded=sys.argv[1] == "sharded", device=torch.device("cpu"))
# Each process holds a different shard's gradient; only rank 0's overflows.
loss = (weight * torch.full((4,), float("inf") if env.rank == 0 else 1.0)).sum()
scaler.scale(loss).backward()
scaler.unscale_(optimizer)
scaler.step(optimizer)
scaler.update()
print(json.dumps({"rank": env.rank, "stepped": bool((weight != 1).any())}))
distributed.destroy_process_group()
"""


def run_two_processes(script: str, *args: str) -> list[dict]:
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_fp16_with_sharded_parameters_skips_the_step_on_every_process_when_any_shard_overflowed():
    """FSDP (full fine-tuning on several GPUs) gives each process its own shard's gradients."""
    results = run_two_processes(SCALER_WORKER, "sharded")
    assert [r["stepped"] for r in sorted(results, key=lambda r: r["rank"])] == [False, False]
