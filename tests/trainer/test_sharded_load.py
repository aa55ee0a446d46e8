"""Full fine-tuning on several processes: every process holds only its shards of the model, never a whole
copy, and the shards together are exactly the checkpoint (tied weights included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune_trainer.train.distributed import free_port

pytestmark = pytest.mark.slow

WORKER = r"""
import json, resource, sys
from pathlib import Path
import torch, safetensors.torch, transformers, accelerate  # loaded before the baseline
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from finetune_trainer.contract import TrainerConfig
from finetune_trainer.train import distributed
from finetune_trainer.train.methods import DevicePlan
from finetune_trainer.train.sharded import build_sharded_model

def peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
env = distributed.env_from_os()
distributed.init_process_group(env, torch.device("cpu"))
folder = Path(sys.argv[1])
config = TrainerConfig.model_validate({"baseModel": str(folder), "trainData": ["d.jsonl"], "outputUri": "/tmp/o", "method": "full"})
before = peak_mb()
lm, module = build_sharded_model(folder, config, DevicePlan(torch.device("cpu"), "fp32"), env.rank)
result = {"rank": env.rank, "grew_mb": peak_mb() - before,
          "tied": lm.get_output_embeddings().weight is lm.get_input_embeddings().weight}
if sys.argv[2] == "compare":
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if env.rank == 0:
        reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
        result["keys_match"] = sorted(k.removeprefix("lm.") for k in state) == sorted(reference)
        result["max_difference"] = max(float((state["lm." + k].float() - v).abs().max()) for k, v in reference.items())
        result["rope_ok"] = all(torch.isfinite(b).all().item() for b in module.buffers())
print(json.dumps(result))
distributed.destroy_process_group(together=True)
"""


def run_two_workers(folder: Path, mode: str) -> list[dict]:
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(folder), mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return sorted(results, key=lambda r: r["rank"])


def llama(folder: Path, dtype: torch.dtype, shard: str, **shape) -> int:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=dtype)
    model.save_pretrained(folder, max_shard_size=shard)
    return sum(p.numel() for p in model.parameters())


def test_the_shards_together_are_the_checkpoint_with_tied_embeddings_kept_tied(tmp_path):
    folder = tmp_path / "tied"
    llama(folder, torch.float32, "200KB", hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
          num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True)  # fmt: skip
    rank0, rank1 = run_two_workers(folder, "compare")
    assert rank0["keys_match"] and rank0["max_difference"] == 0.0
    assert rank0["tied"] and rank1["tied"], "the output head is still the input embedding"
    assert rank0["rope_ok"]


def test_no_process_but_rank_zero_reads_the_model_and_none_holds_a_whole_fp32_copy(tmp_path):
    """A bf16 checkpoint of ~150M parameters (600 MB in fp32) on two processes: each keeps its fp32 half."""
    folder = tmp_path / "big"
    parameters = llama(folder, torch.bfloat16, "50MB", hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=8, vocab_size=8000, tie_word_embeddings=False)  # fmt: skip
    fp32_mb = parameters * 4 / 2**20
    rank0, rank1 = run_two_workers(folder, "measure")
    assert rank1["grew_mb"] < 0.75 * fp32_mb, f"rank 1 grew by {rank1['grew_mb']:.0f} MB; its fp32 shard is {fp32_mb / 2:.0f} MB"
    assert rank0["grew_mb"] < 0.9 * fp32_mb, f"rank 0 grew by {rank0['grew_mb']:.0f} MB; the model is {fp32_mb:.0f} MB in fp32"
