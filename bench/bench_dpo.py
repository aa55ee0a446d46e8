"""Benchmark: this trainer's DPO against TRL's DPOTrainer, the same LoRA run on the same preference pairs, on CPU.

Both sides train the same small Llama (hidden 256, 4 layers, byte-level tokenizer) with LoRA for the same
epochs on the same pairs of ``finetune_local.preference_data`` (answer in the case the user asks for: the
preferred answer shouts or whispers as asked), with the same learning rate, schedule, beta (TRL's default,
0.1) and sigmoid loss. The reference model is the base with the adapter switched off on both sides. Each
side runs in its own process so its peak RSS is its own.

Settings that differ from TRL's defaults, and why: ``use_cpu``/``bf16=False`` (CPU), the learning rate
and epochs (shared by both sides; TRL's 1e-6 would teach a tiny model nothing), ``max_length`` (128: no pair
is cut on either side), and ``gradient_checkpointing=False`` (TRL turns it on by default; this trainer does
not). TRL keeps its default batching (8 pairs a step, each pair's two answers padded to the batch's longest)
and computes the reference log-probabilities in every step (``precompute_ref_log_probs=False``). This
trainer packs whole pairs, each pair's conversation laid out once for both answers (as it does on CPU), into
one row a step of as many tokens as 8 pairs hold on average (its ``maxSeqLength`` is half that: a row holds
two), so both sides take about the same number of steps; it computes the reference log-probabilities once,
before the first step, and that pass counts in its time.

Measured per side: pairs trained per second (pairs x epochs over the training time), peak RSS, and, by one
common evaluator on the saved adapters (plain transformers, nothing of either trainer): the final DPO loss
on the training pairs and on held-out pairs, and the fraction of held-out pairs ranked right (the preferred
answer more likely than the other) before and after training.

The sides run alternately for ``--rounds`` rounds and each keeps its fastest round, so a burst of other work
on a shared machine does not decide the result.

Usage: ``python bench/bench_dpo.py [--pairs 240] [--epochs 3] [--rounds 3] [--work .bench/dpo]``. The last
line printed is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trainer import best_round, machine, run_trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LR = 2e-3  # at 5e-3 this trainer's final loss swung between 0.09 and 0.24 with the batch layout
BETA = 0.1
MAX_LEN = 128
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TRL_BATCH = 8
SEED = 42


def prepare(work: Path, n_pairs: int) -> dict:
    from finetune_local.preference_data import preference_pairs
    from finetune_local.tiny_model import make_tiny_model

    model = work / "model"
    if not (model / "model.safetensors").exists():
        make_tiny_model(model, seed=0, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=688)
    files = {"model": str(model)}
    for name, rows in (("train", preference_pairs(n_pairs, seed=1)), ("heldout", preference_pairs(max(40, n_pairs // 6), seed=2))):
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[name] = str(path)
    return files


def read_rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def pair_tokens(model: str, rows: list[dict]) -> tuple[list[int], list[int]]:
    """Tokens of each pair: the conversation with each answer (what TRL runs), and as this trainer lays the pair
    out on CPU, the conversation once (its ``PairTokenizer``)."""
    from transformers import AutoTokenizer

    from finetune_trainer.data.formats import parse_record
    from finetune_trainer.data.preference import PairTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenize = PairTokenizer(tokenizer, MAX_LEN, share_prompt=True)
    pairs = [tokenize(parse_record(row, "train.jsonl", i + 1)) for i, row in enumerate(rows)]
    return [len(p.preferred) + len(p.non_preferred) for p in pairs], [len(p) for p in pairs]


# ----------------------------------------------------------------------------------------------
# The two sides (each runs in its own process)


def run_ours(work: Path, files: dict, epochs: int, row_tokens: int) -> dict:
    out = work / "ours"
    config = {
        "baseModel": files["model"],
        "trainData": [files["train"]],
        "outputUri": str(out),
        "metricsPort": 0,
        "objective": "dpo",
        "dpo": {"beta": BETA, "lossType": "sigmoid"},
        "lora": LORA,
        "hyperparameters": {
            "epochs": epochs,
            "batchSize": 1,
            "learningRate": LR,
            "lrScheduler": "linear",
            "warmupRatio": 0.0,
            "maxSeqLength": row_tokens // 2,  # a row holds 2 x maxSeqLength tokens
            "nCheckpoints": 0,
            "nEvals": 0,
            "seed": SEED,
        },
    }
    wall, usage, progress, events = run_trainer(work, config)
    when = {e["reason"]: datetime.fromisoformat(e["time"]) for e in events}
    loop_seconds = (when["TrainingCompleted"] - when["TrainingStarted"]).total_seconds()
    # The reference pass is DPO work (TRL does it inside its steps): from the model's set-up line to its event.
    logged = {m.group(2): datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
              for m in re.finditer(r"^(\S+ \S+) INFO (model: |Reference log-probabilities)", (work / "ours.log").read_text(), re.M)}  # fmt: skip
    reference_seconds = (logged["Reference log-probabilities"] - logged["model: "]).total_seconds()
    return {
        "train_seconds": loop_seconds + reference_seconds,
        "reference_seconds": reference_seconds,
        "reported_train_loss": progress["trainLoss"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_seconds": wall,
        "adapter": str(out / "model"),
        "steps": progress["step"],
    }


def trl_side(work: Path, files: dict, epochs: int) -> None:
    """Runs inside its own process: TRL's DPOTrainer with its defaults (see the module docstring)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(files["model"])
    model = AutoModelForCausalLM.from_pretrained(files["model"], dtype=torch.float32)
    rows = [{"prompt": r["input"]["messages"], "chosen": r["preferred_output"], "rejected": r["non_preferred_output"]} for r in read_rows(files["train"])]
    args = DPOConfig(
        output_dir=str(work / "trl"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        learning_rate=LR,
        beta=BETA,
        num_train_epochs=epochs,
        max_length=MAX_LEN,
        per_device_train_batch_size=TRL_BATCH,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=5,
        seed=SEED,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora)
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainer.model.save_pretrained(work / "trl" / "adapter")
    out = {
        "train_seconds": result.metrics["train_runtime"],
        "reported_train_loss": losses[-1] if losses else None,
        "adapter": str(work / "trl" / "adapter"),
        "steps": trainer.state.global_step,
    }
    (work / "trl-result.json").write_text(json.dumps(out))


def run_trl(work: Path, epochs: int) -> dict:
    started = time.monotonic()
    command = [sys.executable, __file__, "--side", "trl", "--work", str(work), "--epochs", str(epochs)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(work / "trl.log", "w"))
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the TRL side failed; see {work / 'trl.log'}")
    result = json.loads((work / "trl-result.json").read_text())
    result.update(peak_rss_mb=usage.ru_maxrss / 1024, wall_seconds=wall)
    return result


# ----------------------------------------------------------------------------------------------
# One evaluator for both adapters


class Judge:
    """Each answer's log-probability (with its end of turn) given the conversation, under the base model and
    under an adapter on it: plain transformers and the chat template."""

    def __init__(self, model: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    def answer_log_prob(self, model, messages: list[dict], answer: list[dict]) -> float:
        import torch

        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template([*messages, *answer], tokenize=False)
        start = len(self.tokenizer(prompt, add_special_tokens=False).input_ids)
        ids = self.tokenizer(full, add_special_tokens=False, return_tensors="pt").input_ids[:, :MAX_LEN]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        token_log_probs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
        return float(token_log_probs[start - 1 :].sum())

    def log_probs(self, model, rows: list[dict]) -> list[tuple[float, float]]:
        return [tuple(self.answer_log_prob(model, r["input"]["messages"], r[k]) for k in ("preferred_output", "non_preferred_output")) for r in rows]

    def figures(self, adapter: str | None, rows: list[dict], reference: list[tuple[float, float]]) -> dict:
        """DPO loss against the base model as reference, and the fraction of pairs ranked right."""
        import torch
        import torch.nn.functional as F
        from peft import PeftModel

        model = PeftModel.from_pretrained(self.base, adapter).eval() if adapter else self.base
        policy = self.log_probs(model, rows)
        if adapter:
            model.unload()  # the base model's own weights again, for the next adapter
        margins = torch.tensor([(pw - rw) - (pl - rl) for (pw, pl), (rw, rl) in zip(policy, reference)])
        return {"dpo_loss": float(-F.logsigmoid(BETA * margins).mean()), "ranked_right": sum(w > l for w, l in policy) / len(rows)}


def common_figures(files: dict, adapters: dict[str, str], n_train: int = 120) -> dict:
    judge = Judge(files["model"])
    train, heldout = read_rows(files["train"])[:n_train], read_rows(files["heldout"])
    reference = {"train": judge.log_probs(judge.base, train), "heldout": judge.log_probs(judge.base, heldout)}
    out = {"before": judge.figures(None, heldout, reference["heldout"])}
    for side, adapter in adapters.items():
        out[side] = {"train": judge.figures(adapter, train, reference["train"]), "heldout": judge.figures(adapter, heldout, reference["heldout"])}
    return out


# ----------------------------------------------------------------------------------------------


def report(runs: dict[str, list[dict]], n_pairs: int, epochs: int, common: dict) -> dict:
    ours, trl = best_round(runs["ours"], "peak_rss_mb"), best_round(runs["trl"], "peak_rss_mb")
    for name, side in (("ours", ours), ("trl", trl)):
        rates = ", ".join(f"{n_pairs * epochs / r['train_seconds']:.1f}" for r in runs[name])
        print(f"{'this trainer' if name == 'ours' else 'TRL'}: pairs/s per round: {rates}")
        side["pairs_per_second"] = n_pairs * epochs / side["train_seconds"]
        side["final_dpo_loss"] = common[name]["train"]["dpo_loss"]
        side["heldout_dpo_loss"] = common[name]["heldout"]["dpo_loss"]
        side["heldout_pref_accuracy_after"] = common[name]["heldout"]["ranked_right"]
    rows = [
        ("pairs/s", "pairs_per_second", "{:.1f}"),
        ("optimizer steps", "steps", "{}"),
        ("training seconds", "train_seconds", "{:.1f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("final DPO loss (train)", "final_dpo_loss", "{:.4f}"),
        ("held-out DPO loss", "heldout_dpo_loss", "{:.4f}"),
        ("held-out ranked right", "heldout_pref_accuracy_after", "{:.3f}"),
        ("process wall seconds", "wall_seconds", "{:.1f}"),
    ]
    print(f"\n{'':<26}{'this trainer':>16}{'TRL DPOTrainer':>16}")
    for label, key, fmt in rows:
        print(f"{label:<26}{fmt.format(ours[key]):>16}{fmt.format(trl[key]):>16}")
    ratio = ours["pairs_per_second"] / trl["pairs_per_second"]
    loss_gap = ours["final_dpo_loss"] / trl["final_dpo_loss"] - 1
    met = ratio >= 1.5 and loss_gap <= 0.05 and ours["peak_rss_mb"] <= trl["peak_rss_mb"]
    print(f"\nratio: {ratio:.2f}x pairs/s (goal >= 1.5x); final DPO loss {loss_gap:+.2%} against TRL's (goal at most +5%); "
          f"peak RSS {ours['peak_rss_mb']:.0f} vs {trl['peak_rss_mb']:.0f} MB (goal no more); goal {'met' if met else 'NOT met'}")  # fmt: skip
    keys = ("pairs_per_second", "peak_rss_mb", "final_dpo_loss", "heldout_dpo_loss", "heldout_pref_accuracy_after", "steps")
    figures = {
        "machine": machine(),
        "ratio": ratio,
        "final_dpo_loss_gap": loss_gap,
        "goal_met": met,
        "heldout_pref_accuracy_before": common["before"]["ranked_right"],
        "heldout_pref_accuracy_after": {"ours": ours["heldout_pref_accuracy_after"], "trl": trl["heldout_pref_accuracy_after"]},
        "peak_rss_mb": {"ours": ours["peak_rss_mb"], "trl": trl["peak_rss_mb"]},
        "ours": {k: ours[k] for k in keys},
        "trl": {k: trl[k] for k in keys},
    }
    return json.loads(json.dumps(figures), parse_float=lambda s: round(float(s), 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the sides this many times; keep each one's fastest")
    parser.add_argument("--work", default=str(ROOT / ".bench" / "dpo"))
    parser.add_argument("--side", choices=["trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.side == "trl":
        trl_side(work, json.loads((work / "files.json").read_text()), args.epochs)
        return

    files = prepare(work, args.pairs)
    (work / "files.json").write_text(json.dumps(files))
    lengths, laid_out = pair_tokens(files["model"], read_rows(files["train"]))
    mean_len, mean_laid_out = sum(lengths) / len(lengths), sum(laid_out) / len(laid_out)
    # One packed row a step, of as many tokens as TRL's 8 pairs hold (at least one whole pair, so none is cut):
    # as many steps as TRL's, none padded.
    row_tokens = 2 * max(-(-max(laid_out) // 2), int(TRL_BATCH * mean_laid_out) // 2)
    print(f"machine: {machine()}")
    print(f"data: {len(lengths)} training pairs, tokens per pair (both answers) min {min(lengths)} / mean {mean_len:.0f} / max {max(lengths)}, "
          f"{mean_laid_out:.0f} with the conversation once")  # fmt: skip
    print(f"model: Llama, hidden 256, 4 layers; LoRA r={LORA['r']} on all linear layers; {args.epochs} epochs, lr {LR}, beta {BETA}")
    print(f"batching: TRL {TRL_BATCH} pairs per step, padded; this trainer 1 packed row of <= {row_tokens} tokens per step")
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}/{args.rounds}: this trainer...", flush=True)
        runs["ours"].append(run_ours(work, files, args.epochs, row_tokens))
        print(f"round {round_}/{args.rounds}: TRL DPOTrainer...", flush=True)
        runs["trl"].append(run_trl(work, args.epochs))
    common = common_figures(files, {"ours": runs["ours"][-1]["adapter"], "trl": runs["trl"][-1]["adapter"]})
    print(json.dumps(report(runs, len(lengths), args.epochs, common)))


if __name__ == "__main__":
    main()
