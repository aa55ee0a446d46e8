"""The validation Job against an S3 object store (SeaweedFS on loopback), as it runs in a cluster."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import pytest

from finetune_trainer.contract import ExitCode

from .conftest import CORPUS, VALID, run_validate


@pytest.fixture
def s3(object_store, tmp_path: Path):
    """Helpers over the session's store: a unique prefix, the keys folder, put/get/list."""

    class S3:
        bucket = object_store.bucket
        prefix = f"t-{uuid.uuid4().hex[:8]}"
        client = object_store.client()
        keys = tmp_path / "storage-keys"

        def put(self, key: str, data: bytes) -> str:
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
            return f"s3://{self.bucket}/{key}"

        def get(self, key: str) -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        def list(self, prefix: str) -> list[str]:
            return sorted(o.object_name[len(prefix) :] for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True))

        def config(self, source: str, **more) -> dict:
            return {
                "source": source,
                "outputUri": f"s3://{self.bucket}/{self.prefix}/datasets/ns/d",
                "reportUri": f"s3://{self.bucket}/{self.prefix}/reports/d.json",
                "storage": {"endpoint": object_store.endpoint, "secure": False, "region": "us-east-1", "credentialsDir": str(self.keys)},
                **more,
            }

        def report(self) -> dict:
            return json.loads(self.get(f"{self.prefix}/reports/d.json"))

    s3 = S3()
    s3.keys.mkdir()
    (s3.keys / "accessKey").write_text(object_store.access_key)
    (s3.keys / "secretKey").write_text(object_store.secret_key)
    return s3


def test_a_valid_dataset_in_s3_is_published_manifest_complete(tmp_path: Path, s3, object_store):
    data = (VALID / "crlf.jsonl").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    source = s3.put(f"{s3.prefix}/uploads/crlf.jsonl", data)

    run = run_validate(tmp_path, s3.config(source, validationSplit=0.3))

    assert run.returncode == ExitCode.OK, run.stderr
    folder = f"{s3.prefix}/datasets/ns/d/{digest}/"
    assert s3.list(folder) == ["manifest.json", "train.jsonl", "validation.jsonl"]
    manifest = json.loads(s3.get(folder + "manifest.json"))
    for entry in manifest["files"]:
        body = s3.get(folder + entry["path"])
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["size"], entry["sha256"])
    report = s3.report()
    assert report["isCheckPassed"] and report["sha256"] == digest
    assert report["trainUri"] == f"s3://{s3.bucket}/{folder}train.jsonl"
    assert report["manifestUri"] == f"s3://{s3.bucket}/{folder}manifest.json"
    assert report["trainSamples"] + report["validationSamples"] == 12
    assert object_store.secret_key not in run.stdout + run.stderr


def test_an_invalid_dataset_in_s3_leaves_only_the_report(tmp_path: Path, s3):
    source = s3.put(f"{s3.prefix}/uploads/bad.jsonl", (CORPUS / "no_final_assistant.jsonl").read_bytes())

    run = run_validate(tmp_path, s3.config(source))

    assert run.returncode == ExitCode.BAD_INPUT
    assert s3.list(f"{s3.prefix}/datasets/") == []
    report = s3.report()
    assert report["isCheckPassed"] is False
    assert [(e["line"], e["rule"]) for e in report["errors"]] == [(9, "no_final_assistant")]


def test_a_missing_object_is_not_found(tmp_path: Path, s3):
    run = run_validate(tmp_path, s3.config(f"s3://{s3.bucket}/{s3.prefix}/uploads/none.jsonl"))

    assert run.returncode == ExitCode.BAD_INPUT
    report = s3.report()
    assert report["found"] is False and report["retryable"] is False and report["errors"][0]["rule"] == "not_found"


def test_the_datasets_own_credentials_are_used_for_the_source(tmp_path: Path, s3, object_store):
    source = s3.put(f"{s3.prefix}/uploads/text.jsonl", (VALID / "text.jsonl").read_bytes())
    wrong = tmp_path / "dataset-secret"
    wrong.mkdir()
    (wrong / "accessKey").write_text("NOTAKEY0000000000000")
    (wrong / "secretKey").write_text("not-the-secret-key-at-all")

    run = run_validate(tmp_path / "wrong", s3.config(source, sourceCredentialsDir=str(wrong)))

    assert run.returncode == ExitCode.BAD_INPUT
    report = s3.report()  # the report itself is written with the operator's keys
    assert report["errors"][0]["rule"] == "access_denied"
    assert "not-the-secret-key-at-all" not in run.stdout + run.stderr + json.dumps(report)

    right = run_validate(tmp_path / "right", s3.config(source, sourceCredentialsDir=str(s3.keys)))
    assert right.returncode == ExitCode.OK, right.stderr


def test_an_object_store_that_refuses_the_upload_is_retryable(tmp_path: Path, s3):
    """The source is fine but the store refuses the operator's keys: nothing is published, the Job retries."""
    wrong = tmp_path / "wrong-keys"
    wrong.mkdir()
    (wrong / "accessKey").write_text("NOTAKEY0000000000000")
    (wrong / "secretKey").write_text("not-the-secret-key-at-all")
    config = s3.config(str(VALID / "text.jsonl"))
    config["storage"]["credentialsDir"] = str(wrong)

    run = run_validate(tmp_path, config)

    assert run.returncode == ExitCode.RETRYABLE
    assert '"rule": "upload_failed"' in run.stdout and "cannot write the report" in run.termination_message
    assert s3.list(f"{s3.prefix}/") == []
    assert "not-the-secret-key-at-all" not in run.stdout + run.stderr
