"""``output.merge``: the adapter merged into the base model without a copy of the whole model in memory, and
not redone by a retry once it is uploaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune_trainer.contract import ExitCode
from finetune_trainer.train.merge import merge_adapter

from .conftest import TrainerRun, arithmetic_conversations, read_events, read_progress, trainer_config, write_jsonl


def lora_adapter(base: Path, folder: Path, r: int = 8, **config) -> Path:
    """A LoRA adapter with non-zero updates (B is random, not PEFT's zeros) on every linear layer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False, **config))
    peft_model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("rslora", [False, True])
def test_the_file_by_file_merge_gives_the_model_peft_merges(tiny_model, tmp_path, rslora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = lora_adapter(tiny_model, tmp_path / "adapter", use_rslora=rslora)
    merge_adapter(tiny_model, adapter, tmp_path / "merged")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter).merge_and_unload().eval()
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, peft(ids).logits, rtol=1e-4, atol=1e-4)
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
    assert not torch.allclose(ours(ids).logits, base_logits, atol=1e-3), "the adapter changed the model"


MEASURE = r"""
import json, resource, sys
from pathlib import Path
import torch, safetensors.torch, peft, transformers  # what the merge imports, loaded before the baseline
from finetune_trainer.train.merge import merge_adapter

def peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak_mb()
merge_adapter(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
print(json.dumps({"baseline_mb": before, "peak_mb": peak_mb()}))
"""


def test_merging_does_not_hold_a_copy_of_the_model_in_memory(tmp_path):
    """A bf16 model of ~150M parameters (600 MB in fp32) in 50 MB files: the merge's peak memory stays a few
    files' worth, far below the fp32 copy the merge used to load (and below even a bf16 copy)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=8000, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    base = tmp_path / "base"
    model.save_pretrained(base, max_shard_size="50MB")
    del model
    adapter = lora_adapter(base, tmp_path / "adapter")
    result = subprocess.run([sys.executable, "-c", MEASURE, str(base), str(adapter), str(tmp_path / "merged")],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    fp32_mb = parameters * 4 / 2**20
    grew = measured["peak_mb"] - measured["baseline_mb"]
    assert grew < 0.4 * fp32_mb, f"the merge took {grew:.0f} MB more at its peak; the model is {fp32_mb:.0f} MB in fp32"
    merged_files = sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors"))
    assert merged_files == sorted(p.name for p in base.glob("*.safetensors")) and len(merged_files) > 5


@pytest.mark.slow
def test_a_retry_after_the_upload_neither_trains_nor_merges_again(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_conversations(16, seed=5))
    output = tmp_path / "job"
    config = trainer_config(tiny_model, [str(data)], output, merge=True, hyperparameters={"epochs": 1})
    assert TrainerRun(tmp_path / "first", config).run().returncode == ExitCode.OK
    merged = output / "merged" / "model.safetensors"
    first_merge = merged.read_bytes()

    # The pod died after everything was uploaded (say, before it could exit): the retry only reports done.
    result = TrainerRun(tmp_path / "second", config).run()
    assert result.returncode == ExitCode.OK, result.stderr
    messages = [e["message"] for e in read_events(output)]
    assert messages.count("Training started") == 1 and messages[-2:] == [
        "The model was uploaded by an earlier attempt: nothing to redo",
        "Fine-tuning job completed",
    ]

    # The pod died while merging (the adapter is uploaded, the merged model is not): the retry merges only.
    (output / "merged" / "manifest.json").unlink()
    merged.unlink()
    result = TrainerRun(tmp_path / "third", config).run()
    assert result.returncode == ExitCode.OK, result.stderr
    messages = [e["message"] for e in read_events(output)]
    assert messages.count("Training started") == 1
    assert "The adapter was uploaded by an earlier attempt: merging it, without training again" in messages
    assert (output / "merged" / "manifest.json").exists() and merged.read_bytes() == first_merge
    progress = read_progress(output)
    assert progress["phase"] == "done" and progress["mergedModelUri"] == str(output / "merged")


def test_a_base_model_without_safetensors_files_is_merged_in_its_own_dtype(tiny_model, tmp_path):
    import shutil

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from finetune_trainer.train.recipe import FineTuneRecipe

    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_model, legacy)
    state = {k: v.to(torch.bfloat16) for k, v in load_file(legacy / "model.safetensors").items()}
    (legacy / "model.safetensors").unlink()
    torch.save(state, legacy / "pytorch_model.bin")
    config = json.loads((legacy / "config.json").read_text())
    (legacy / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    adapter = lora_adapter(tiny_model, tmp_path / "adapter")
    FineTuneRecipe._merge_in_memory(legacy, adapter, tmp_path / "merged")
    assert {t.dtype for t in load_file(tmp_path / "merged" / "model.safetensors").values()} == {torch.bfloat16}, "not fp32"
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.bfloat16)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(legacy, dtype=torch.bfloat16), adapter).merge_and_unload()
    for (name, ours_p), (_, ref_p) in zip(ours.state_dict().items(), reference.state_dict().items(), strict=True):
        torch.testing.assert_close(ours_p, ref_p, msg=name)
