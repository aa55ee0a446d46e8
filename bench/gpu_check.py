"""GPU check: the trainer's GPU paths on one GPU, on a randomly initialised model of Llama-3.2-1B's shape.

Runs ``finetune-trainer train``'s own recipe (``FineTuneRecipe``) for a few dozen steps of each method,
LoRA, QLoRA (4-bit base, needs bitsandbytes) and full fine-tuning, in bf16 with SDPA and packed rows
of ``--seq-len`` tokens, then DPO with LoRA on preference pairs (rows of ``2 x --seq-len`` tokens, the
reference log-probabilities computed before the first step), then merges the LoRA adapter into the base
model file by file (``output.merge``).
Each method runs in its own process, so peak GPU memory is its own. Nothing is downloaded: the model
(1.24 B parameters, bf16, tied embeddings, Llama 3 RoPE) and the chat data are generated.

Reported per method: trained tokens per second over the last 20 steps (as the trainer reports it), peak
GPU memory (``torch.cuda.max_memory_allocated``), and MFU: model FLOPs per token (6 x the matmul
parameters for full fine-tuning, 4 x for LoRA/QLoRA, whose frozen weights get no weight gradients;
attention scores excluded) x tokens/s / the GPU's dense bf16 peak; DPO also its reward accuracy and
margin. The merge reports seconds and peak RSS.

Usage: ``python bench/gpu_check.py [--steps 30] [--seq-len 2048] [--work .bench/gpu-check]``; ``--dry`` runs
the same plumbing on CPU with tiny shapes and a few steps (QLoRA is reported as skipped: it needs a GPU).
The last line printed is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LLAMA_3_2_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    },
}  # fmt: skip
DRY_SHAPE = {**LLAMA_3_2_1B, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512}  # fmt: skip

METHODS = ("lora", "qlora", "full")
STEPS = (*METHODS, "dpo", "merge")
BATCH = {"lora": 8, "qlora": 8, "full": 4, "dpo": 4}
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
"""Dense bf16 peak by GPU name (the first name found in torch's device name wins; H100 means SXM)."""
WORDS = (
    "the a model data train loss token batch layer learn answer question cluster node pod job queue gpu memory "
    "value result check test run fast slow small large first last next time step epoch weight shard merge"
).split()


def matmul_parameters(shape: dict) -> int:
    """Weights that multiply every token: each layer's projections and the output head."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    return layers * per_layer + h * shape["vocab_size"]


def peak_tflops(device_name: str) -> float | None:
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name in device_name:
            return tflops
    return None


# ----------------------------------------------------------------------------------------------
# The model and the data


def make_model(folder: Path, shape: dict, dry: bool) -> int:
    """A randomly initialised Llama of this shape with the byte-level tokenizer; returns its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from finetune_local.tiny_model import CHAT_TEMPLATE, build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    device = "cpu" if dry or not torch.cuda.is_available() else "cuda"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if dry else torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size="2GB")
    tokenizer.save_pretrained(folder)
    del model
    return parameters


def write_data(path: Path, tokens: int, seq_len: int, seed: int = 0) -> Path:
    """Chat examples of seq_len/8 to seq_len/2 tokens (bytes) each, so packing fills rows; ``tokens`` in all."""
    rng = random.Random(seed)
    rows, total = [], 0
    while total < tokens:
        length = rng.randint(seq_len // 8, seq_len // 2)
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < length - 30:
            words.append(rng.choice(WORDS))
        cut = max(1, len(words) // 4)
        rows.append({"messages": [{"role": "user", "content": " ".join(words[:cut])}, {"role": "assistant", "content": " ".join(words[cut:])}]})
        total += length
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_preference_data(path: Path, tokens: int, seq_len: int, seed: int = 1) -> Path:
    """Preference pairs (Together's shape) of a seq_len/8 to seq_len/2 token conversation and two answers of
    seq_len/16 to seq_len/4 tokens each; ``tokens`` in all."""
    rng = random.Random(seed)

    def words(length: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, length // 6)))

    rows, total = [], 0
    while total < tokens:
        prompt, first, second = rng.randint(seq_len // 8, seq_len // 2), rng.randint(seq_len // 16, seq_len // 4), rng.randint(seq_len // 16, seq_len // 4)
        rows.append({
            "input": {"messages": [{"role": "user", "content": words(prompt)}]},
            "preferred_output": [{"role": "assistant", "content": words(first)}],
            "non_preferred_output": [{"role": "assistant", "content": words(second).upper()}],
        })  # fmt: skip
        total += 2 * prompt + first + second
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------------------------
# One method, in its own process


def run_method(args: argparse.Namespace) -> dict:
    import torch

    from finetune_trainer.contract import TrainerConfig
    from finetune_trainer.train.recipe import FineTuneRecipe

    work, step = Path(args.work), args.child
    method = "lora" if step == "dpo" else step
    cuda = not args.dry
    if method == "qlora" and not cuda:
        return {"skipped": "method qlora needs a GPU (4-bit weights through bitsandbytes)"}
    output = work / step
    shutil.rmtree(output, ignore_errors=True)
    os.environ["FINETUNE_WORK_DIR"] = str(work / f"scratch-{step}")
    os.environ["FINETUNE_TERMINATION_LOG"] = str(work / f"{step}.termination-log")
    dpo = {"objective": "dpo", "dpo": {"beta": 0.1}} if step == "dpo" else {}
    config = TrainerConfig.model_validate({
        "baseModel": str(work / "model"), "trainData": [str(work / ("pairs.jsonl" if dpo else "train.jsonl"))], "outputUri": str(output),
        "method": method, "numGpus": 1 if cuda else 0, "precision": "bf16" if cuda else "fp32",
        "metricsPort": None, "progressIntervalSeconds": 5,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        **dpo,
        "hyperparameters": {
            "epochs": 1, "maxSteps": args.steps, "batchSize": args.batch or BATCH[step], "maxSeqLength": args.seq_len,
            "packing": True, "nCheckpoints": 0, "learningRate": 1e-5, "warmupRatio": 0.0,
            **({} if dpo else {"trainOnInputs": "true"}),
        },
    })  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    code = FineTuneRecipe(config).run()
    seconds = time.monotonic() - started
    if code != 0:
        log = work / f"{step}.termination-log"
        return {"error": log.read_text() if log.exists() else f"exit code {code}"}
    progress = json.loads((output / "progress.json").read_text())
    shape = json.loads((work / "shape.json").read_text())
    tokens_per_second = progress.get("tokensPerSecond") or 0.0
    flops_per_token = (6 if method == "full" else 4) * matmul_parameters(shape)
    peak = peak_tflops(torch.cuda.get_device_name()) if cuda else None
    figures = {
        "steps": progress["step"],
        "batch_rows": args.batch or BATCH[step],
        "seq_len": args.seq_len,
        "tokens_per_second": round(tokens_per_second, 1),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_memory_of": "gpu" if cuda else "process rss",
        "mfu": round(tokens_per_second * flops_per_token / (peak * 1e12), 4) if peak else None,
        "train_loss": progress.get("trainLoss"),
        "padding_fraction": progress.get("paddingFraction"),
        "seconds": round(seconds, 1),
    }
    if dpo:
        figures.update(reward_accuracy=progress.get("rewardAccuracy"), reward_margin=progress.get("rewardMargin"))
    return figures


def run_merge(args: argparse.Namespace) -> dict:
    from finetune_trainer.train.merge import merge_adapter

    work = Path(args.work)
    adapter = work / "lora" / "model"
    if not (adapter / "adapter_config.json").exists():
        return {"skipped": "no LoRA adapter to merge (the lora run failed)"}
    merged = work / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    done = merge_adapter(work / "model", adapter, merged)
    return {
        "seconds": round(time.monotonic() - started, 1),
        "peak_rss_growth_bytes": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024,
        "merged_weights": done["merged_weights"],
        "files": done["files"],
    }


def imported_distributions() -> list[str]:
    """The installed distributions whose modules this process imported (what a GPU machine must have)."""
    import importlib.metadata

    providers = importlib.metadata.packages_distributions()
    names = {name.split(".")[0] for name in list(sys.modules)}
    return sorted({dist for name in names for dist in providers.get(name, [])})


def child(args: argparse.Namespace) -> int:
    try:
        result = run_merge(args) if args.child == "merge" else run_method(args)
    except Exception as e:  # reported in the JSON line, not as a traceback the parent cannot parse
        result = {"error": f"{type(e).__name__}: {e}"[:2000]}
    result["imported"] = imported_distributions()
    sys.stdout.flush()
    print("GPU-CHECK-RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # skip the interpreter's slow teardown after torch


def run_child(args: argparse.Namespace, what: str) -> dict:
    command = [sys.executable, __file__, "--child", what, "--work", str(args.work), "--steps", str(args.steps), "--seq-len", str(args.seq_len)]
    command += (["--batch", str(args.batch)] if args.batch else []) + (["--dry"] if args.dry else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "trainer" / "src"), str(ROOT / "operator" / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("GPU-CHECK-RESULT "):
            return json.loads(line[len("GPU-CHECK-RESULT ") :])
    return {"error": f"exit code {result.returncode}: {result.stderr.strip()[-1500:]}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="tiny shapes on CPU, a few steps: checks the plumbing")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per method (default 30; 3 with --dry)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per packed row (default 2048; 128 with --dry)")
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default: lora/qlora 8, full 4)")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "gpu-check")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.dry else 30)
    args.seq_len = args.seq_len or (128 if args.dry else 2048)
    if args.child:
        return child(args)

    import torch

    from finetune_trainer.train.methods import DevicePlan, attention_implementation

    if not args.dry and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA GPU visible; use --dry (make gpu-check DRY=1) to check the plumbing on CPU"}))
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    shape = DRY_SHAPE if args.dry else LLAMA_3_2_1B
    (args.work / "shape.json").write_text(json.dumps(shape))
    started = time.monotonic()
    parameters = make_model(args.work / "model", shape, args.dry)
    rows = max(BATCH.values()) if args.batch is None else args.batch
    write_data(args.work / "train.jsonl", tokens=2 * args.steps * rows * args.seq_len, seq_len=args.seq_len)
    write_preference_data(args.work / "pairs.jsonl", tokens=2 * args.steps * BATCH["dpo"] * 2 * args.seq_len, seq_len=args.seq_len)
    line: dict = {
        "check": "gpu-check",
        "dry": args.dry,
        "device": "cpu" if args.dry else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "model": {"shape": "Llama-3.2-1B" if not args.dry else "tiny (dry)", "parameters": parameters, "matmul_parameters": matmul_parameters(shape)},
        "precision": "fp32" if args.dry else "bf16",
        "attention": attention_implementation(DevicePlan(torch.device("cpu") if args.dry else torch.device("cuda", 0), "fp32" if args.dry else "bf16")),
        "packing": True,
    }
    imported: set[str] = set()
    for what in STEPS:
        line[what] = run_child(args, what)
        imported.update(line[what].pop("imported", []))
    line["distributions"] = sorted(imported)
    line["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(line))
    failed = [k for k in STEPS if "error" in line[k]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
