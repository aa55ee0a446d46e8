"""DPO through the CLI, as the operator's Job runs it (``objective: dpo``), checked by an evaluator of its own:
plain transformers computing each answer's log-probability from the chat template, nothing of the trainer's."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune_local.preference_data import conversations, preference_pairs
from finetune_trainer.contract import ExitCode

from .conftest import TrainerRun, read_events, read_progress, trainer_config, write_jsonl
from .test_resume import wait_for

pytestmark = pytest.mark.slow


def answer_log_prob(model, tokenizer, messages: list[dict], answer: str) -> float:
    """log p(answer and its end-of-turn | conversation) under ``model``."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    ids = tokenizer(full, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    token_log_probs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(token_log_probs[start - 1 :].sum())


def pair_log_probs(model, tokenizer, rows: list[dict]) -> list[tuple[float, float]]:
    out = []
    for row in rows:
        messages = row["input"]["messages"]
        out.append(tuple(answer_log_prob(model, tokenizer, messages, row[key][0]["content"]) for key in ("preferred_output", "non_preferred_output")))
    return out


def ranked_right(model, tokenizer, rows: list[dict]) -> float:
    """Fraction of pairs whose preferred answer the model finds more likely than the non-preferred one."""
    return sum(w > l for w, l in pair_log_probs(model, tokenizer, rows)) / len(rows)


def load(folder: Path, adapter: Path | None = None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return (PeftModel.from_pretrained(model, adapter) if adapter else model).eval()


def dpo_config(model: Path | str, train: Path, output: Path, **overrides):
    hyper = {"epochs": 3, "batchSize": 4, "maxSeqLength": 128, "learningRate": 0.01, "nEvals": 1}
    hyper.update(overrides.pop("hyperparameters", {}))
    return trainer_config(model, [str(train)], output, objective="dpo", hyperparameters=hyper, **overrides)


@pytest.mark.parametrize(("method", "learning_rate"), [("lora", 0.01), ("full", 0.001)])
def test_dpo_learns_a_preference_and_ranks_held_out_pairs_right(tiny_model: Path, tmp_path: Path, method: str, learning_rate: float):
    from transformers import AutoTokenizer

    train = write_jsonl(tmp_path / "train.jsonl", preference_pairs(96, seed=1))
    held_out = preference_pairs(40, seed=2)
    validation = write_jsonl(tmp_path / "validation.jsonl", held_out)
    output = tmp_path / "job"
    config = dpo_config(tiny_model, train, output, method=method, validationData=[str(validation)], hyperparameters={"learningRate": learning_rate})
    result = TrainerRun(tmp_path / "run", config).run()
    assert result.returncode == ExitCode.OK, result.stderr

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    before = ranked_right(load(tiny_model), tokenizer, held_out)
    after = ranked_right(load(tiny_model, output / "model") if method == "lora" else load(output / "model"), tokenizer, held_out)
    assert 0.3 <= before <= 0.7, f"the untrained model should rank about half the pairs right, not {before}"
    assert after >= 0.9, f"after DPO only {after:.0%} of the held-out pairs are ranked right (before: {before:.0%})"

    # What the job reported: the DPO loss, reward accuracy and margin, of the steps and of the held-out pairs.
    progress = read_progress(output)
    assert progress["phase"] == "done" and progress["rewardAccuracy"] >= 0.75 and progress["rewardMargin"] > 0
    assert progress["evalRewardAccuracy"] >= 0.9 and progress["evalRewardMargin"] > 0 and 0 < progress["evalLoss"] < 0.6931
    messages = [e["message"] for e in read_events(output)]
    assert "Loaded 96 training and 40 validation preference pairs" in " ".join(messages)
    assert "Reference log-probabilities of 136 preference pairs computed (the model as the job starts)" in messages
    assert any(m.startswith("Validation DPO loss ") and "reward accuracy" in m for m in messages)


def test_dpo_after_sft_takes_the_sft_model_as_its_reference(tiny_model: Path, tmp_path: Path):
    """Chained: the DPO job continues the SFT adapter, and its reference log-probabilities are the SFT model's,
    not the base model's (as the DPO paper prescribes)."""
    from transformers import AutoTokenizer

    sft_data = write_jsonl(tmp_path / "sft.jsonl", conversations(64, seed=1))
    sft = tmp_path / "sft"
    done = TrainerRun(tmp_path / "run-sft", trainer_config(tiny_model, [str(sft_data)], sft, hyperparameters={"epochs": 2})).run()
    assert done.returncode == ExitCode.OK, done.stderr

    rows = preference_pairs(24, seed=3)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    output = tmp_path / "dpo"
    config = dpo_config(tiny_model, pairs, output, fromCheckpoint=str(sft / "model"), hyperparameters={"epochs": 1, "nEvals": 0})
    result = TrainerRun(tmp_path / "run-dpo", config).run()
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Continuing from" in " ".join(e["message"] for e in read_events(output))

    reference = torch.load(output / "checkpoints" / f"step-{read_progress(output)['step']}" / "reference.pt")["train"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    of_sft = torch.tensor(pair_log_probs(load(tiny_model, sft / "model"), tokenizer, rows))
    of_base = torch.tensor(pair_log_probs(load(tiny_model), tokenizer, rows))
    assert torch.allclose(reference, of_sft, atol=1e-3), (reference[:3], of_sft[:3])
    assert not torch.allclose(reference, of_base, atol=1e-1)


def test_full_dpo_resumed_uses_the_reference_it_started_with(tiny_model: Path, tmp_path: Path):
    """Full fine-tuning changes the weights the reference came from: a resumed run reads the reference from
    its checkpoint and ends exactly as an uninterrupted run."""
    train = write_jsonl(tmp_path / "train.jsonl", preference_pairs(48, seed=5))

    def config(output: Path) -> dict:
        # One pair a row, 4 a step: 12 steps an epoch, 24 in all, checkpoints at 12 and 24.
        hyper = {"epochs": 2, "nEvals": 0, "nCheckpoints": 2, "learningRate": 0.001, "packing": False}
        return dpo_config(tiny_model, train, output, method="full", hyperparameters=hyper)

    output = tmp_path / "job"
    run = TrainerRun(tmp_path / "run", config(output), env={"FINETUNE_HOLD_AT_STEP": "20"})
    first = run.start()
    try:
        wait_for(output / "checkpoints" / "step-12" / "manifest.json", first)
        while read_progress(output)["step"] < 20:  # the trainer holds at step 20 until told to stop
            assert first.poll() is None
            time.sleep(0.01)
        first.send_signal(signal.SIGTERM)
    finally:
        first.wait(timeout=60)
    assert first.returncode == ExitCode.PREEMPTED

    second = TrainerRun(tmp_path / "run", config(output)).run()
    assert second.returncode == ExitCode.OK, second.stderr
    messages = [e["message"] for e in read_events(output)]
    assert "Resuming from checkpoint at step 12" in messages
    assert sum(m.startswith("Reference log-probabilities") for m in messages) == 1, "computed once, by the first attempt"

    uninterrupted = tmp_path / "uninterrupted"
    assert TrainerRun(tmp_path / "run-ref", config(uninterrupted)).run().returncode == ExitCode.OK
    resumed, expected = load_file(output / "model" / "model.safetensors"), load_file(uninterrupted / "model" / "model.safetensors")
    for name, tensor in expected.items():
        assert (resumed[name] - tensor).abs().max() < 1e-5, name


@pytest.mark.parametrize(
    ("objective", "rows", "words"),
    [
        ("dpo", conversations(12, seed=0), "objective dpo trains on preference pairs"),
        ("sft", preference_pairs(12, seed=0), "a preference pair trains with objective dpo"),
    ],
)
def test_data_of_the_other_objective_is_refused_with_its_line(tiny_model: Path, tmp_path: Path, objective: str, rows: list, words: str):
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    result = TrainerRun(tmp_path / "run", trainer_config(tiny_model, [str(data)], tmp_path / "job", objective=objective)).run()

    assert result.returncode == ExitCode.BAD_INPUT
    message = (tmp_path / "run" / "termination-log").read_text()
    assert message.startswith("InvalidDataset: ") and f"{data} line 1: {words}" in message
