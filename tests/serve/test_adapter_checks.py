"""Before an adapter touches the served model, its folder is checked; each problem gets a message that names it."""

from __future__ import annotations

import json
import shutil

import pytest

from finetune_trainer.serve.adapters import AdapterError, check_adapter_folder, linear_shapes


@pytest.fixture(scope="module")
def base_linears(tiny_model):
    from transformers import AutoModelForCausalLM

    return linear_shapes(AutoModelForCausalLM.from_pretrained(tiny_model))


@pytest.fixture
def adapter(adapter_dirs, tmp_path):
    """A copy of a good adapter, to break in one way per test."""
    return shutil.copytree(adapter_dirs["alpha"], tmp_path / "adapter")


def save_tensors(folder, change):
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_a_good_adapter_passes(adapter, base_linears):
    assert check_adapter_folder(adapter, base_linears)["peft_type"] == "LORA"


def test_an_adapter_of_another_kind_is_refused(adapter, base_linears):
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="only LoRA adapters"):
        check_adapter_folder(adapter, base_linears)


def test_a_config_that_is_not_json_is_refused(adapter, base_linears):
    (adapter / "adapter_config.json").write_text("{oops")
    with pytest.raises(AdapterError, match="adapter_config.json is not valid JSON"):
        check_adapter_folder(adapter, base_linears)


def test_missing_weights_are_refused(adapter, base_linears):
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        check_adapter_folder(adapter, base_linears)


def test_weights_with_nan_are_refused(adapter, base_linears):
    def poison(tensors):
        key = next(iter(tensors))
        tensors[key][0, 0] = float("nan")

    save_tensors(adapter, poison)
    with pytest.raises(AdapterError, match="NaN or infinite"):
        check_adapter_folder(adapter, base_linears)


def test_a_layer_the_base_model_lacks_is_refused(adapter, base_linears):
    def rename(tensors):
        key = next(k for k in tensors if "q_proj.lora_A" in k)
        tensors[key.replace("layers.0.", "layers.9.")] = tensors.pop(key)

    save_tensors(adapter, rename)
    with pytest.raises(AdapterError, match="which the base model does not have"):
        check_adapter_folder(adapter, base_linears)


def test_mismatched_ranks_are_refused(adapter, base_linears):
    def shrink(tensors):
        key = next(k for k in tensors if "q_proj.lora_A" in k)
        tensors[key] = tensors[key][:2].contiguous()

    save_tensors(adapter, shrink)
    with pytest.raises(AdapterError, match="rank 2 in lora_A but 4 in lora_B"):
        check_adapter_folder(adapter, base_linears)


def test_an_adapter_for_a_wider_model_is_refused(adapter_dirs, base_linears):
    with pytest.raises(AdapterError, match="another base model"):
        check_adapter_folder(adapter_dirs["other-base"], base_linears)
