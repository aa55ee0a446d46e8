"""Fixtures for the evaluation tests: a tiny model, a LoRA adapter that learned the answers, run helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# The questions a fine-tuned adapter learns (and the evaluation asks): single turns and one
# conversation whose second turn is answered in the context of the first.
CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris"}],
    [{"role": "user", "content": "What is the capital of Italy?"}, {"role": "assistant", "content": "Rome"}],
    [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "blue"}],
    [
        {"role": "user", "content": "Who wrote Hamlet?"},
        {"role": "assistant", "content": "Shakespeare"},
        {"role": "user", "content": "In which country did he live?"},
        {"role": "assistant", "content": "England"},
    ],
]


def train_memorizing_adapter(model_dir: Path, conversations: list[list[dict[str, str]]], output: Path, steps: int = 60) -> Path:
    """A LoRA adapter trained (a few seconds on CPU) until the model answers every assistant turn of ``conversations``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains faster on one thread than on cores shared with other work
    try:
        return _train(model_dir, conversations, output, steps)
    finally:
        torch.set_num_threads(threads)


def _train(model_dir: Path, conversations: list[list[dict[str, str]]], output: Path, steps: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0),
    )
    rows: list[tuple[list[int], list[int]]] = []
    for messages in conversations:
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(message["content"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            rows.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    length = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (length - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (length - len(lab)) for _, lab in rows])
    attention = (torch.arange(length)[None, :] < torch.tensor([len(ids) for ids, _ in rows])[:, None]).long()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(input_ids=input_ids, attention_mask=attention, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(output)
    return output


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from finetune_local.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def learned_adapter(tiny_model, tmp_path_factory) -> Path:
    return train_memorizing_adapter(tiny_model, CONVERSATIONS, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(autouse=True)
def offline_and_termination_log(monkeypatch, tmp_path) -> Path:
    """No model hub, and the termination message in a file the test can read."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "termination-log"
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(path))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def read_results(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]


def read_summary(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())


def score_of(summary: dict, model: str, grader: str) -> dict:
    [record] = [s for s in summary["scores"] if s["model"] == model and s["grader"] == grader]
    return record
