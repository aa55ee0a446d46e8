"""`finetune-trainer fetch`: the vllm runtime's init container downloads complete artifacts only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from finetune_trainer.contract import ExitCode, StorageConfig
from finetune_trainer.storage import ObjectStore


def run_fetch(tmp_path: Path, object_store, items: list[dict], **extra) -> tuple[int, str]:
    """``finetune-trainer fetch`` as the init container runs it; ``extra`` are more FetchConfig fields."""
    credentials = tmp_path / "credentials"
    credentials.mkdir(exist_ok=True)
    (credentials / "accessKey").write_text(object_store.access_key)
    (credentials / "secretKey").write_text(object_store.secret_key)
    config = {"items": items, "storage": {"endpoint": object_store.endpoint, "secure": False, "credentialsDir": str(credentials)}}
    config.update({"baseModel" if k == "base_model" else k: v for k, v in extra.items()})
    (tmp_path / "fetch.json").write_text(json.dumps(config))
    termination = tmp_path / "termination-log"
    termination.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "finetune_trainer.cli", "fetch", "--config", str(tmp_path / "fetch.json")],
        env={**os.environ, "FINETUNE_TERMINATION_LOG": str(termination)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode, termination.read_text() if termination.exists() else ""


def test_fetch_downloads_each_artifact_and_refuses_one_without_a_manifest(tmp_path, object_store):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    credentials = tmp_path / "upload-credentials"
    credentials.mkdir()
    (credentials / "accessKey").write_text(object_store.access_key)
    (credentials / "secretKey").write_text(object_store.secret_key)
    store = ObjectStore(StorageConfig(endpoint=object_store.endpoint, secure=False, credentials_dir=str(credentials)))
    store.upload_artifact(folder, "s3://finetune/fetch-test/adapter", kind="adapter")

    code, _ = run_fetch(tmp_path, object_store, [{"uri": "s3://finetune/fetch-test/adapter", "dest": str(tmp_path / "out" / "a")}])
    assert code == ExitCode.OK
    assert (tmp_path / "out" / "a" / "adapter_config.json").read_text() == '{"peft_type": "LORA"}'

    # Half an upload (no manifest.json) is not an artifact: refused, with the URI in the termination message.
    store.write_bytes("s3://finetune/fetch-test/half/adapter_config.json", b"{}")
    code, message = run_fetch(tmp_path, object_store, [{"uri": "s3://finetune/fetch-test/half", "dest": str(tmp_path / "out" / "b")}])
    assert code == ExitCode.BAD_INPUT
    assert message.startswith("ArtifactNotFound: s3://finetune/fetch-test/half has no manifest.json")
    assert object_store.secret_key not in message


def test_fetch_names_the_field_of_a_bad_config(tmp_path, object_store):
    code, message = run_fetch(tmp_path, object_store, [{"uri": "s3://finetune/x"}])
    assert code == ExitCode.BAD_INPUT
    assert "items.0.dest" in message and message.startswith("InvalidConfig")
