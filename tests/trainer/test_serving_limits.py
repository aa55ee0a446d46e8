"""What vLLM refuses at start, refused by the fetch first: a context longer than the model's, GPUs that do
not divide its attention heads, an adapter of a rank above maxLoraRank. The endpoint's status then names the
field to change instead of a crash-looping server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finetune_trainer import serving_checks
from finetune_trainer.contract import VLLM_LORA_RANKS, ExitCode, StorageConfig
from finetune_trainer.storage import ObjectStore

from .test_fetch import run_fetch


@pytest.fixture
def store(tmp_path, object_store) -> ObjectStore:
    credentials = tmp_path / "upload-credentials"
    credentials.mkdir()
    (credentials / "accessKey").write_text(object_store.access_key)
    (credentials / "secretKey").write_text(object_store.secret_key)
    return ObjectStore(StorageConfig(endpoint=object_store.endpoint, secure=False, credentials_dir=str(credentials)))


def adapter_folder(tmp_path: Path, r: int) -> Path:
    folder = tmp_path / f"adapter-r{r}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return folder


def fetch_with_limits(tmp_path, object_store, items, **limits) -> tuple[int, str]:
    return run_fetch(tmp_path, object_store, items, limits=limits)


def test_the_fetch_refuses_what_vllm_would_refuse_and_names_the_field(tiny_model, tmp_path, object_store, store):
    store.upload_artifact(tiny_model, "s3://finetune/limits/model", kind="model")  # 2048 positions, 4 heads
    store.upload_artifact(adapter_folder(tmp_path, 16), "s3://finetune/limits/r16", kind="adapter")
    model = {"uri": "s3://finetune/limits/model", "dest": str(tmp_path / "out" / "base"), "kind": "model"}
    adapter = {"uri": "s3://finetune/limits/r16", "dest": str(tmp_path / "out" / "r16"), "kind": "adapter"}

    code, _ = fetch_with_limits(tmp_path, object_store, [model, adapter], maxModelLen=2048, tensorParallelSize=4, maxLoraRank=16)
    assert code == ExitCode.OK

    code, message = fetch_with_limits(tmp_path, object_store, [model, adapter], maxModelLen=4096, tensorParallelSize=1, maxLoraRank=64)
    assert code == ExitCode.BAD_INPUT
    assert message.startswith("ModelLimitExceeded: spec.maxModelLen 4096 is above the model's context length 2048")
    assert "max_position_embeddings" in message

    code, message = fetch_with_limits(tmp_path, object_store, [model, adapter], maxModelLen=1024, tensorParallelSize=3, maxLoraRank=64)
    assert code == ExitCode.BAD_INPUT
    assert message.startswith("ModelLimitExceeded: spec.resources.gpus 3 does not divide the model's 4 attention heads")

    code, message = fetch_with_limits(tmp_path, object_store, [model, adapter], maxModelLen=1024, tensorParallelSize=1, maxLoraRank=8)
    assert code == ExitCode.BAD_INPUT
    # The URI comes first after the reason: the operator names the adapter from it (status.adapters[].message).
    assert message == (
        "AdapterRankTooHigh: s3://finetune/limits/r16 has LoRA rank 16, above the endpoint's spec.maxLoraRank 8; "
        "set spec.maxLoraRank to 16 or more"
    )


def test_a_mounted_base_model_has_its_config_read_in_place(tiny_model, tmp_path, object_store):
    mounted = tmp_path / "pvc" / "llama"
    shutil.copytree(tiny_model, mounted)
    code, message = run_fetch(tmp_path, object_store, [], base_model=str(mounted), limits={"maxModelLen": 8192})
    assert code == ExitCode.BAD_INPUT and "spec.maxModelLen 8192" in message
    code, _ = run_fetch(tmp_path, object_store, [], base_model=str(mounted), limits={"maxModelLen": 2048})
    assert code == ExitCode.OK


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 32.0}}, 131072),  # Llama 3.1/3.2
        ({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 4.0}}, 16384),
        ({"max_position_embeddings": 32768, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}, 131072),
        ({"max_position_embeddings": 8192, "n_positions": 2048}, 2048),  # the smallest key wins
        ({"text_config": {"max_position_embeddings": 8192}}, 8192),  # multimodal configs nest the language model's
    ],
)
def test_context_length_follows_vllms_derivation(config, expected):
    length, _ = serving_checks.context_length(config)
    assert length == expected
    assert serving_checks.model_problems(config, expected, 1) == []
    assert serving_checks.model_problems(config, expected + 1, 1) != []


def test_a_config_that_does_not_say_leaves_the_decision_to_vllm():
    assert serving_checks.model_problems({}, 1_000_000, 3) == []
    assert serving_checks.adapter_problem("s3://b/a", {}, 8, VLLM_LORA_RANKS) is None
    # model_max_length above the derived length lets vLLM take the larger value, as vLLM does
    assert serving_checks.model_problems({"max_position_embeddings": 2048, "model_max_length": 8192}, 4096, 1) == []


def test_an_adapter_rank_above_what_vllm_serves_at_all_says_to_retrain():
    problem = serving_checks.adapter_problem("s3://b/a", {"r": 16, "rank_pattern": {"q_proj": 1024}}, 512, VLLM_LORA_RANKS)
    assert problem is not None and "rank 1024" in problem and "retrain with a lower lora.r" in problem
