"""Benchmark: this trainer against TRL's SFTTrainer, the same LoRA fine-tune on the same chat data, on CPU.

Both sides train a small Llama (hidden 256, 4 layers, byte-level tokenizer) for one epoch on generated
conversations whose lengths follow a log-normal distribution, as real chat data does, with the same LoRA
settings, learning rate, schedule and loss (every token: TRL's default for conversations, so this
trainer runs with ``trainOnInputs: true``). Each side runs in its own process so its peak RSS is its own.

Settings that differ from TRL's defaults, and why: ``use_cpu``/``bf16=False`` (CPU), the learning rate,
epochs and ``max_length`` (shared by both sides), and ``gradient_checkpointing=False`` (TRL turns it on
by default; this trainer does not, and leaving it on would slow TRL for a reason unrelated to batching).
TRL keeps its default batching: 8 examples per step, padded to the longest (no packing, not padding-free).
This trainer packs examples into rows of up to ``maxSeqLength`` tokens; its batch size (rows per step)
is chosen so a step holds about as many real tokens as TRL's.

Measured per side: trained (non-padding) tokens per second over the training loop, the padding fraction,
peak RSS, and the final train and eval loss, both as the trainer reports it and recomputed by one
common evaluator (mean next-token loss over every token) on the saved adapters.

The sides run alternately for ``--rounds`` rounds and each keeps its fastest round, so a burst of
other work on a shared machine does not decide the result. Losses are the same in every round (both
sides are seeded and deterministic on CPU).

Usage: ``python bench/bench_trainer.py [--examples 240] [--rounds 3] [--work .bench/trainer]``. The last
line printed is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORDS = (
    "the a model data train loss token batch layer learn answer question cluster node pod job queue "
    "gpu memory value result check test run fast slow small large first last next time step epoch"
).split()
LR = 1e-3
MAX_LEN = 512
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
TRL_BATCH = 8
SEED = 42


# ----------------------------------------------------------------------------------------------
# Data and model


def lognormal_words(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, int(rng.lognormvariate(math.log(median), sigma))))


def conversation(rng: random.Random) -> dict:
    """A question and an answer that is learnable from it (the question's words, reversed and doubled)."""
    question = [rng.choice(WORDS) for _ in range(lognormal_words(rng, 8, 0.7, 40))]
    answer = []
    for word in reversed(question):
        answer += [word, word]
    answer = answer[: lognormal_words(rng, 14, 0.8, 70)]
    return {
        "messages": [
            {"role": "system", "content": "Answer in reverse."},
            {"role": "user", "content": " ".join(question)},
            {"role": "assistant", "content": " ".join(answer)},
        ]
    }


def prepare(work: Path, n_examples: int) -> dict:
    from finetune_local.tiny_model import make_tiny_model

    model = work / "model"
    if not (model / "model.safetensors").exists():
        make_tiny_model(model, seed=0, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=688)
    rng = random.Random(SEED)
    rows = [conversation(rng) for _ in range(n_examples)]
    n_val = n_examples // 10
    train, val = rows[n_val:], rows[:n_val]
    for name, part in (("train", train), ("validation", val)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return {"model": str(model), "train": str(work / "train.jsonl"), "validation": str(work / "validation.jsonl")}


def token_lengths(model: str, path: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [min(MAX_LEN, len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])) for r in rows]


# ----------------------------------------------------------------------------------------------
# The two sides (each runs in its own process)


def run_trainer(work: Path, config: dict) -> tuple[float, Any, dict, list[dict]]:
    """This project's trainer on ``config`` in a process of its own (its log in ``work/ours.log``): the wall
    seconds, the process's resource usage (peak RSS), its progress.json and its events.jsonl."""
    import shutil

    out = Path(config["outputUri"])
    shutil.rmtree(out, ignore_errors=True)
    (work / "ours-config.json").write_text(json.dumps(config))
    env = {**os.environ, "FINETUNE_WORK_DIR": str(work / "ours-scratch"), "FINETUNE_TERMINATION_LOG": str(work / "ours-termination")}
    command = [sys.executable, "-m", "finetune_trainer", "train", "--config", str(work / "ours-config.json")]
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "ours.log", "w"))
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"this trainer failed; see {work / 'ours.log'}")
    progress = json.loads((out / "progress.json").read_text())
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return wall, usage, progress, events


def run_ours(work: Path, files: dict, rows_per_step: int) -> dict:
    out = work / "ours"
    config = {
        "baseModel": files["model"],
        "trainData": [files["train"]],
        "validationData": [files["validation"]],
        "outputUri": str(out),
        "metricsPort": 0,
        "lora": LORA,
        "hyperparameters": {
            "epochs": 1,
            "batchSize": rows_per_step,
            "learningRate": LR,
            "lrScheduler": "linear",
            "warmupRatio": 0.0,
            "maxSeqLength": MAX_LEN,
            "trainOnInputs": "true",
            "nCheckpoints": 0,
            "nEvals": 1,
            "seed": SEED,
        },
    }
    wall, usage, progress, events = run_trainer(work, config)
    def when(prefix: str) -> datetime:
        return next(datetime.fromisoformat(e["time"]) for e in events if e["message"].startswith(prefix))

    train_seconds = (when("Training completed") - when("Training started")).total_seconds()
    # The one validation pass (after the last step) is not training: TRL's train_runtime leaves it out too.
    eval_seconds = (when("Validation loss") - when("Epoch 1 completed")).total_seconds()
    return {
        "train_seconds": train_seconds - eval_seconds,
        "trained_tokens": progress["trainedTokens"],
        "padding_fraction": progress["paddingFraction"],
        "reported_train_loss": progress["trainLoss"],
        "reported_eval_loss": progress["evalLoss"],
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "wall_seconds": wall,
        "adapter": str(out / "model"),
        "steps": progress["step"],
    }


def trl_side(work: Path, files: dict) -> None:
    """Runs inside its own process: TRL's SFTTrainer with its defaults (see the module docstring)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(files["model"])
    model = AutoModelForCausalLM.from_pretrained(files["model"], dtype=torch.float32)
    load = lambda p: Dataset.from_list([json.loads(line) for line in Path(p).read_text().splitlines()])  # noqa: E731
    train, val = load(files["train"]), load(files["validation"])
    args = SFTConfig(
        output_dir=str(work / "trl"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        learning_rate=LR,
        num_train_epochs=1,
        max_length=MAX_LEN,
        per_device_train_batch_size=TRL_BATCH,
        per_device_eval_batch_size=TRL_BATCH,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=5,
        seed=SEED,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer, peft_config=lora)
    result = trainer.train()
    train_seconds = result.metrics["train_runtime"]
    eval_loss = trainer.evaluate()["eval_loss"]
    real = pad = 0
    for batch in trainer.get_train_dataloader():  # the same batches (same seed), counted after the timing
        mask = batch["attention_mask"]
        real += int(mask.sum())
        pad += int(mask.numel() - mask.sum())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainer.model.save_pretrained(work / "trl" / "adapter")
    out = {
        "train_seconds": train_seconds,
        "trained_tokens": real,
        "padding_fraction": pad / max(1, real + pad),
        "reported_train_loss": losses[-1] if losses else None,
        "reported_eval_loss": eval_loss,
        "adapter": str(work / "trl" / "adapter"),
        "steps": trainer.state.global_step,
    }
    (work / "trl-result.json").write_text(json.dumps(out))


def run_trl(work: Path, files: dict) -> dict:
    started = time.monotonic()
    command = [sys.executable, __file__, "--side", "trl", "--work", str(work)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(work / "trl.log", "w"))
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the TRL side failed; see {work / 'trl.log'}")
    result = json.loads((work / "trl-result.json").read_text())
    result.update(peak_rss_mib=usage.ru_maxrss / 1024, wall_seconds=wall)
    return result


# ----------------------------------------------------------------------------------------------
# One evaluator for both adapters


def common_losses(files: dict, adapter: str, n_train: int = 200) -> tuple[float, float]:
    """Mean next-token loss over every token: on the first ``n_train`` training examples, and on validation."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(files["model"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(files["model"], dtype=torch.float32), adapter).eval()

    def mean_loss(path: str, limit: int | None) -> float:
        total = count = 0.0
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()][:limit]
        with torch.no_grad():
            for row in rows:
                ids = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True, return_tensors="pt")["input_ids"][:, :MAX_LEN]
                n = ids.shape[1] - 1
                total += float(model(input_ids=ids, labels=ids).loss) * n
                count += n
        return total / count

    return mean_loss(files["train"], n_train), mean_loss(files["validation"], None)


# ----------------------------------------------------------------------------------------------


def best_round(results: list[dict], rss: str = "peak_rss_mib") -> dict:
    """The round with the shortest training time (the least disturbed by other work on the machine);
    peak RSS (the key ``rss``) is the largest of all rounds."""
    best = dict(min(results, key=lambda r: r["train_seconds"]))
    best[rss] = max(r[rss] for r in results)
    return best


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the sides this many times; keep each one's fastest")
    parser.add_argument("--work", default=str(ROOT / ".bench" / "trainer"))
    parser.add_argument("--side", choices=["trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.side == "trl":
        trl_side(work, json.loads((work / "files.json").read_text()))
        return

    files = prepare(work, args.examples)
    (work / "files.json").write_text(json.dumps(files))
    lengths = token_lengths(files["model"], files["train"])
    mean_len = sum(lengths) / len(lengths)
    rows_per_step = max(1, round(TRL_BATCH * mean_len / (MAX_LEN * 0.97)))
    print(f"machine: {machine()}")
    print(
        f"data: {len(lengths)} training conversations, tokens per example min {min(lengths)} / median "
        f"{sorted(lengths)[len(lengths) // 2]} / mean {mean_len:.0f} / max {max(lengths)} (log-normal lengths)"
    )
    print(f"model: Llama, hidden 256, 4 layers; LoRA r={LORA['r']} on all linear layers; 1 epoch, lr {LR}")
    print(f"batching: TRL {TRL_BATCH} examples per step, padded; this trainer {rows_per_step} packed rows of <= {MAX_LEN} tokens per step")
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}/{args.rounds}: this trainer...", flush=True)
        runs["ours"].append(run_ours(work, files, rows_per_step))
        print(f"round {round_}/{args.rounds}: TRL SFTTrainer...", flush=True)
        runs["trl"].append(run_trl(work, files))
    ours, trl = best_round(runs["ours"]), best_round(runs["trl"])
    for name, side in (("this trainer", ours), ("TRL", trl)):
        rates = ", ".join(f"{r['trained_tokens'] / r['train_seconds']:.0f}" for r in runs["ours" if side is ours else "trl"])
        print(f"{name}: trained tokens/s per round: {rates}")
    for side in (ours, trl):
        side["tokens_per_second"] = side["trained_tokens"] / side["train_seconds"]
        side["train_loss"], side["eval_loss"] = common_losses(files, side["adapter"])

    rows = [
        ("trained tokens/s", "tokens_per_second", "{:.0f}"),
        ("trained tokens", "trained_tokens", "{}"),
        ("optimizer steps", "steps", "{}"),
        ("training seconds", "train_seconds", "{:.1f}"),
        ("padding fraction", "padding_fraction", "{:.1%}"),
        ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
        ("final train loss", "train_loss", "{:.4f}"),
        ("final eval loss", "eval_loss", "{:.4f}"),
        ("eval loss (own report)", "reported_eval_loss", "{:.4f}"),
        ("process wall seconds", "wall_seconds", "{:.1f}"),
    ]
    print()
    print(f"{'':<24}{'this trainer':>16}{'TRL SFTTrainer':>16}")
    for label, key, fmt in rows:
        print(f"{label:<24}{fmt.format(ours[key]):>16}{fmt.format(trl[key]):>16}")
    speedup = ours["tokens_per_second"] / trl["tokens_per_second"]
    eval_gap = ours["eval_loss"] / trl["eval_loss"] - 1
    met = speedup >= 2 and ours["padding_fraction"] < 0.02 and abs(eval_gap) <= 0.05
    print(f"\nspeed-up: {speedup:.2f}x trained tokens/s (goal >= 2x); padding {ours['padding_fraction']:.1%} (goal under 2%); "
          f"eval loss {eval_gap:+.2%} against TRL's (goal within 5%); goal {'met' if met else 'NOT met'}")  # fmt: skip
    figures = {
        "machine": machine(),
        "goal_met": met,
        "ours": {k: ours[k] for k in ("tokens_per_second", "padding_fraction", "peak_rss_mib", "train_loss", "eval_loss", "steps")},
        "trl": {k: trl[k] for k in ("tokens_per_second", "padding_fraction", "peak_rss_mib", "train_loss", "eval_loss", "steps")},
        "speedup": round(speedup, 3),
        "eval_loss_gap": round(eval_gap, 4),
    }
    figures = json.loads(json.dumps(figures), parse_float=lambda s: round(float(s), 4))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
