"""``python -m finetune_local.tiny_model``: deterministic weights, a vocabulary learned from a corpus, and
an init scale that decides how confident a frozen output head can be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune_local import tiny_model


def test_same_seed_same_bytes_and_a_byte_tokenizer_by_default(tmp_path: Path) -> None:
    a = tiny_model.make_tiny_model(tmp_path / "a", seed=3)
    b = tiny_model.make_tiny_model(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    tokenizer = tiny_model.build_tokenizer()
    assert len(tokenizer("refund")["input_ids"]) == len("refund"), "no merges: one token per byte"


def test_a_corpus_gives_word_tokens_that_still_round_trip_any_text(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"please refund my payment {i}"},
                          {"role": "assistant", "content": "billing"}]} for i in range(50)]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = tiny_model.corpus_texts(corpus)
    assert "billing" in texts and "please refund my payment 7" in texts
    tokenizer = tiny_model.build_tokenizer(texts, vocab_size=400)
    assert len(tokenizer("please refund")["input_ids"]) == 2, "frequent words are one token each"
    unseen = "Ünïcode & emoji 🚀 never seen"
    assert tokenizer.decode(tokenizer(unseen)["input_ids"]) == unseen, "bytes cover what the merges do not"
    model = tiny_model.make_tiny_model(tmp_path / "m", tokenizer_corpus=texts, vocab_size=400)
    config = json.loads((model / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer) > 262


@pytest.mark.parametrize("std", [0.02, 0.2])
def test_init_std_sets_the_weight_scale(tmp_path: Path, std: float) -> None:
    from safetensors.torch import load_file

    folder = tiny_model.make_tiny_model(tmp_path / "m", init_std=std)
    weights = load_file(folder / "model.safetensors")
    assert float(weights["lm_head.weight"].std()) == pytest.approx(std, rel=0.05)
    assert float(weights["model.layers.0.self_attn.q_proj.weight"].to(torch.float32).std()) == pytest.approx(std, rel=0.1)
