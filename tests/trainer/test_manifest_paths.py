"""A ``manifest.json`` is read back from a tenant-writable prefix of the store, and a download writes each file
where the manifest says: one whose paths climb out of the artifact's folder is refused by every reader (the
trainer's downloads of models, adapters and checkpoints, and the ``finetune`` CLI's downloads), naming the
path and the rule, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_operator.cli.base import EXIT_CORRUPT, CliError
from finetune_operator.cli.store import Store, StoreSettings
from finetune_trainer.contract import Manifest, StorageConfig
from finetune_trainer.storage import IncompleteArtifactError, ObjectStore, sha256_file
from finetune_trainer.train.errors import TrainerFailure
from finetune_trainer.train.methods import fetch_model_folder

PAYLOAD = b"written where the manifest said\n"


@pytest.fixture
def store(object_store, tmp_path: Path) -> ObjectStore:
    from finetune_local.objectstore import REGION

    secret = tmp_path / "storage-secret"
    secret.mkdir()
    (secret / "accessKey").write_text(object_store.access_key)
    (secret / "secretKey").write_text(object_store.secret_key)
    return ObjectStore(StorageConfig(endpoint=object_store.endpoint, secure=False, region=REGION, credentials_dir=str(secret)))


@pytest.fixture
def cli_store(object_store) -> Store:
    from finetune_local.objectstore import REGION

    return Store(StoreSettings(object_store.endpoint, False, REGION, object_store.access_key, object_store.secret_key))


def planted_artifact(store: ObjectStore, uri: str, folder: Path, path: str) -> None:
    """A real artifact (one file, manifest last) whose manifest is then rewritten to list ``path`` too."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}\n")
    manifest = store.upload_artifact(folder, uri, kind="model").model_dump(mode="json", by_alias=True)
    payload = folder.parent / "payload"
    payload.write_bytes(PAYLOAD)
    manifest["files"].append({"path": path, "size": len(PAYLOAD), "sha256": sha256_file(payload)})
    store.write_bytes(f"{uri}/manifest.json", json.dumps(manifest).encode())


ESCAPES = [
    ("../escaped.txt", "climbs out of the folder"),
    ("weights/../../escaped.txt", "climbs out of the folder"),
    ("/tmp/escaped.txt", "is absolute"),
    ("weights//x.bin", "empty or '.' segment"),
    ("..\\escaped.txt", "backslash"),
]


@pytest.mark.parametrize(("path", "rule"), ESCAPES)
def test_the_contract_refuses_a_manifest_path_outside_the_artifact(path, rule):
    with pytest.raises(ValueError, match="manifest names only files inside its artifact's folder") as caught:
        Manifest.model_validate({"kind": "model", "files": [{"path": path, "size": 1, "sha256": "0" * 64}]})
    assert rule in str(caught.value) and "files.0.path" in str(caught.value)


@pytest.mark.parametrize(("path", "rule"), ESCAPES[:3])
def test_the_trainer_refuses_to_download_an_artifact_whose_manifest_climbs_out(store, object_store, tmp_path, path, rule):
    uri = f"s3://{object_store.bucket}/jobs/tenant/escape-{ESCAPES.index((path, rule))}/model"
    planted_artifact(store, uri, tmp_path / "source", path)
    dest = tmp_path / "downloads" / "model"
    with pytest.raises(IncompleteArtifactError) as caught:
        store.download_artifact(uri, dest)
    message = str(caught.value)
    assert f"{uri}/manifest.json does not follow the contract" in message and rule in message and repr(path) in message
    assert not (tmp_path / "downloads" / "escaped.txt").exists() and not dest.exists()
    # Where a job downloads a base model or checkpoint, that is bad input (exit 42), not a retry.
    with pytest.raises(TrainerFailure) as failure:
        fetch_model_folder(uri, store, tmp_path / "base-model")
    assert failure.value.reason == "BaseModelNotFound" and rule in failure.value.message


@pytest.mark.parametrize(("path", "rule"), ESCAPES[:3])
def test_the_cli_refuses_to_download_an_artifact_whose_manifest_climbs_out(store, cli_store, object_store, tmp_path, path, rule):
    uri = f"s3://{object_store.bucket}/jobs/tenant/cli-escape-{ESCAPES.index((path, rule))}/model"
    planted_artifact(store, uri, tmp_path / "source", path)
    dest = tmp_path / "downloads" / "model"
    with pytest.raises(CliError) as caught:
        cli_store.download_artifact(uri, dest, progress=False)
    assert caught.value.code == EXIT_CORRUPT
    assert rule in str(caught.value) and repr(path) in str(caught.value)
    assert not (tmp_path / "downloads" / "escaped.txt").exists()


def test_an_artifact_with_proper_paths_downloads(store, object_store, tmp_path):
    uri = f"s3://{object_store.bucket}/jobs/tenant/fine/model"
    source = tmp_path / "source"
    (source / "weights").mkdir(parents=True)
    (source / "weights" / "part-1.bin").write_bytes(PAYLOAD)
    store.upload_artifact(source, uri, kind="model")
    store.download_artifact(uri, tmp_path / "downloaded")
    assert (tmp_path / "downloaded" / "weights" / "part-1.bin").read_bytes() == PAYLOAD
