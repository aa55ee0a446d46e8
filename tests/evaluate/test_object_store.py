"""An Evaluation's Job in a cluster: model, adapter and dataset in S3 (SeaweedFS), results written back manifest-last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer.contract import EvaluationSummary, Progress, StorageConfig
from finetune_trainer.evaluate.run import main
from finetune_trainer.storage import ObjectStore

from .conftest import CONVERSATIONS, write_config, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(object_store, tmp_path: Path) -> tuple[ObjectStore, dict]:
    """A client of the store, and a config's ``storage`` block with the keys in a mounted-Secret folder."""
    from finetune_local.objectstore import REGION

    secret = tmp_path / "storage-secret"
    secret.mkdir()
    (secret / "accessKey").write_text(object_store.access_key)
    (secret / "secretKey").write_text(object_store.secret_key)
    storage = StorageConfig(endpoint=object_store.endpoint, secure=False, region=REGION, credentials_dir=str(secret))
    return ObjectStore(storage), storage.model_dump(by_alias=True, exclude_none=True)


def test_an_evaluation_reads_its_inputs_from_s3_and_writes_results_manifest_last(tiny_model, learned_adapter, tmp_path, s3, object_store, capfd):
    store, storage = s3
    bucket = f"s3://{object_store.bucket}"
    store.upload_artifact(tiny_model, f"{bucket}/models/tiny", kind="model")
    store.upload_artifact(learned_adapter, f"{bucket}/adapters/qa", kind="adapter")
    store.upload_file(write_jsonl(tmp_path / "qa.jsonl", [{"messages": m} for m in CONVERSATIONS]), f"{bucket}/datasets/ns/qa/abc/validation.jsonl")
    output = f"{bucket}/evaluations/ns/qa-eval-1234"
    config = write_config(
        tmp_path / "eval.json",
        {
            "models": [{"name": "tuned", "modelUri": f"{bucket}/models/tiny", "adapterUri": f"{bucket}/adapters/qa"}],
            "dataset": f"{bucket}/datasets/ns/qa/abc/validation.jsonl",
            "graders": [{"name": "exact_match", "type": "exact_match"}],
            "generation": {"maxTokens": 12},
            "outputUri": output,
            "storage": storage,
        },
    )

    assert main(["--config", str(config)]) == 0

    manifest = store.read_manifest(output)
    assert manifest is not None and manifest.kind == "evaluation"
    assert {f.path: f.size for f in manifest.files} == {
        "results.jsonl": store.size(f"{output}/results.jsonl"),
        "summary.json": store.size(f"{output}/summary.json"),
    }
    summary = EvaluationSummary.model_validate(store.read_json(f"{output}/summary.json"))
    [record] = summary.scores
    assert (record.model, record.mean, record.n) == ("tuned", 1.0, 5)
    assert summary.results_uri == f"{output}/results.jsonl"
    results = [json.loads(line) for line in store.read_bytes(summary.results_uri).decode().splitlines()]
    assert [r["response"] for r in results] == ["Paris", "Rome", "blue", "Shakespeare", "England"]
    progress = Progress.model_validate(store.read_json(f"{output}/progress.json"))
    assert (progress.phase, progress.step, progress.total_steps) == ("done", 5, 5)
    logs = capfd.readouterr()
    assert object_store.secret_key not in logs.out + logs.err


def test_an_adapter_copied_by_hand_is_refused_as_training_and_serving_refuse_it(learned_adapter, tmp_path, s3, object_store):
    from finetune_trainer.evaluate.errors import BadInput
    from finetune_trainer.evaluate.model_source import resolve_model_folder

    store, _ = s3
    uri = f"s3://{object_store.bucket}/adapters/by-hand"
    for path in learned_adapter.iterdir():  # `aws s3 sync`: the files, no manifest
        store.upload_file(path, f"{uri}/{path.name}")
    with pytest.raises(BadInput) as info:
        resolve_model_folder(uri, store, tmp_path, what="adapter")
    assert info.value.reason == "ModelNotFound"
    assert f"{uri} has no manifest.json" in info.value.message and "finetune-trainer upload" in info.value.message
