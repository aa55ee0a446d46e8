"""`make gpu-check DRY=1`: the GPU check's plumbing on CPU (the real run needs one GPU and its own torch)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "bench" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_trains_each_method_merges_and_prints_one_json_line(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--work", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["dry"] is True and line["packing"] is True
    for method in ("lora", "full"):
        figures = line[method]
        assert "error" not in figures, figures
        assert figures["steps"] == 3, "the trainer ran the steps asked for"
        assert figures["tokens_per_second"] > 0 and figures["peak_memory_bytes"] > 0
        assert figures["mfu"] is None, "no peak FLOPs for a CPU"
    assert "needs a GPU" in line["qlora"]["skipped"]
    dpo = line["dpo"]
    assert "error" not in dpo, dpo
    assert dpo["steps"] == 3 and dpo["tokens_per_second"] > 0
    assert 0 <= dpo["reward_accuracy"] <= 1 and dpo["reward_margin"] is not None, "DPO's own figures, from its progress"
    merge = line["merge"]
    assert merge["merged_weights"] == 2 * 7, "every projection of both layers"
    merged = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert merged["num_hidden_layers"] == 2
    assert {"transformers", "peft", "safetensors"} <= set(line["distributions"]), "what a GPU machine must be given"


def test_the_real_run_is_llama_3_2_1b_and_its_flops_count_every_matmul():
    """The full-size shape, built on the meta device (no memory): Llama-3.2-1B's 1.24 B parameters."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    check = load_script()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**check.LLAMA_3_2_1B))
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 1.24
    assert model.lm_head.weight is model.model.embed_tokens.weight, "tied embeddings, as Llama 3.2"
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert check.matmul_parameters(check.LLAMA_3_2_1B) == linear
    assert check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and check.peak_tflops("NVIDIA H100 PCIe") == 756.0
