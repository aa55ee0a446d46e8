"""The trainer against a real S3 store (SeaweedFS): inputs downloaded, every output uploaded manifest-last."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune_trainer.contract import ExitCode, StorageConfig
from finetune_trainer.storage import ObjectStore

from .conftest import TrainerRun, arithmetic_conversations, trainer_config, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(object_store, tmp_path: Path) -> tuple[ObjectStore, dict]:
    """A client of the store, and the ``storage`` block of a config with credentials in a mounted-Secret folder."""
    from finetune_local.objectstore import REGION

    secret = tmp_path / "storage-secret"
    secret.mkdir()
    (secret / "accessKey").write_text(object_store.access_key)
    (secret / "secretKey").write_text(object_store.secret_key)
    storage = StorageConfig(endpoint=object_store.endpoint, secure=False, region=REGION, credentials_dir=str(secret))
    return ObjectStore(storage), storage.model_dump(by_alias=True, exclude_none=True)


def test_lora_job_reads_and_writes_the_object_store(tiny_model: Path, tmp_path: Path, s3, object_store):
    store, storage = s3
    bucket = f"s3://{object_store.bucket}"
    store.upload_artifact(tiny_model, f"{bucket}/models/tiny", kind="model")
    rows = arithmetic_conversations(40, seed=5)
    for name, part in (("train", rows[:32]), ("validation", rows[32:])):
        local = write_jsonl(tmp_path / f"{name}.jsonl", part)
        store.upload_file(local, f"{bucket}/datasets/ns/arith/abc/{name}.jsonl")
    job = f"{bucket}/jobs/ns/arith-1234"
    config = trainer_config(
        f"{bucket}/models/tiny",
        [f"{bucket}/datasets/ns/arith/abc/train.jsonl"],
        job,
        validationData=[f"{bucket}/datasets/ns/arith/abc/validation.jsonl"],
        storage=storage,
        hyperparameters={"epochs": 2, "nEvals": 1, "nCheckpoints": 1},
    )
    result = TrainerRun(tmp_path / "run", config).run()
    assert result.returncode == ExitCode.OK, result.stderr
    assert object_store.secret_key not in result.stdout + result.stderr

    progress = store.read_json(f"{job}/progress.json")
    assert progress["phase"] == "done" and progress["modelUri"] == f"{job}/model"
    assert progress["evalLoss"] > 0
    events = store.read_bytes(f"{job}/events.jsonl").decode()
    assert "Fine-tuning job completed" in events and object_store.secret_key not in events
    (checkpoint,) = progress["checkpoints"]
    assert store.read_manifest(checkpoint["uri"]).kind == "checkpoint"
    adapter = tmp_path / "adapter"
    manifest = store.download_artifact(f"{job}/model", adapter)  # verifies every file against the manifest
    assert manifest.kind == "adapter" and {f.path for f in manifest.files} >= {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"}

    # A base model copied by hand (no manifest) is refused, as the serving fetch refuses it, with the fix named.
    for name in store.list(f"{bucket}/models/tiny"):
        if name != "manifest.json":
            store.write_bytes(f"{bucket}/models/by-hand/{name}", store.read_bytes(f"{bucket}/models/tiny/{name}"))
    follow_up = f"{bucket}/jobs/ns/arith-more-5678"
    config2 = trainer_config(
        f"{bucket}/models/by-hand",
        [f"{bucket}/datasets/ns/arith/abc/train.jsonl"],
        follow_up,
        fromCheckpoint=f"{job}/model",
        storage=storage,
        hyperparameters={"epochs": 1, "maxSteps": 1, "learningRate": 1e-9, "nCheckpoints": 0},
    )
    refused = TrainerRun(tmp_path / "run2", config2)
    result = refused.run()
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert refused.termination_log.read_text().startswith(
        f"BaseModelNotFound: {bucket}/models/by-hand has no manifest.json: a folder is read only as a complete artifact"
    )
    assert f"finetune-trainer upload FOLDER {bucket}/models/by-hand" in refused.termination_log.read_text()

    # `finetune-trainer upload` makes the folder an artifact; the second job then continues the first one's
    # adapter with a fresh optimizer.
    upload = subprocess.run(
        [sys.executable, "-m", "finetune_trainer.cli", "upload", str(tiny_model), f"{bucket}/models/by-hand",
         "--endpoint", storage["endpoint"], "--insecure", "--credentials-dir", storage["credentialsDir"]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert upload.returncode == 0, upload.stderr
    assert store.read_manifest(f"{bucket}/models/by-hand").kind == "model"
    store.delete(f"{follow_up}/progress.json")
    store.delete(f"{follow_up}/events.jsonl")
    result = TrainerRun(tmp_path / "run3", config2).run()
    assert result.returncode == ExitCode.OK, result.stderr
    events = store.read_bytes(f"{follow_up}/events.jsonl").decode()
    assert f"Continuing from {job}/model" in events
    continued = tmp_path / "continued"
    store.download_artifact(f"{follow_up}/model", continued)
    before, after = load_file(adapter / "adapter_model.safetensors"), load_file(continued / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-6)
