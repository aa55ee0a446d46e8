"""LoRA dropout on CPU (``train/dropout.py``): every LoRA layer's dropout swapped, the same law as torch's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from finetune_trainer.train.dropout import FastDropout, use_fast_lora_dropout


@pytest.fixture()
def lora_model(tiny_model: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    layers = model.config.num_hidden_layers
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora), layers


def test_every_lora_layer_gets_it_and_the_model_trains_through_it(lora_model):
    model, layers = lora_model
    assert use_fast_lora_dropout(model) == 7 * layers, "q, k, v, o, gate, up and down of every block"
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    for module in model.modules():
        if isinstance(module, FastDropout):
            assert module.p == 0.3
    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])
    model.train()
    torch.manual_seed(0)
    first = model(input_ids=ids).logits
    torch.manual_seed(0)
    again = model(input_ids=ids).logits
    assert torch.equal(first, again), "drawn from torch's seeded generator: a resumed run draws the same masks"
    first.sum().backward()
    trained = [p for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.grad is not None for p in trained)
    model.eval()
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits), "no dropout outside training"


def test_it_drops_p_of_the_elements_and_scales_the_rest_as_torch_does():
    torch.manual_seed(1)
    x = torch.randn(400, 512, requires_grad=True)
    ours, theirs = FastDropout(0.1).train(), nn.Dropout(0.1).train()
    out, reference = ours(x), theirs(x)
    dropped = out == 0
    assert abs(float(dropped.float().mean()) - 0.1) < 0.003
    assert torch.allclose(out[~dropped], x[~dropped] / 0.9)
    with torch.no_grad():
        assert abs(float(out.mean() - reference.mean())) < 0.01 and abs(float(out.std() / reference.std()) - 1) < 0.01
    out.sum().backward()
    assert torch.equal(x.grad == 0, dropped), "no gradient through a dropped element"
    neighbours = dropped[:, 1:] & dropped[:, :-1]
    assert abs(float(neighbours.float().mean()) - 0.01) < 0.002, "elements dropped independently"
