"""SeaweedFS serves S3 on loopback with generated credentials, refuses everyone else, and stops cleanly."""

from __future__ import annotations

import io
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import minio
import pytest
from minio.error import S3Error

from finetune_local.objectstore import find_weed, start_object_store


def test_the_weed_binary_comes_from_the_installed_package() -> None:
    weed = Path(find_weed())
    assert weed.name == "weed" and os.access(weed, os.X_OK)


def test_objects_round_trip_through_the_bucket(object_store: Any) -> None:
    client = object_store.client()
    assert client.bucket_exists(object_store.bucket)
    payload = b'{"step": 3, "loss": 1.25}\n'
    client.put_object(object_store.bucket, "jobs/ns/run-1/progress.json", io.BytesIO(payload), len(payload))
    assert client.get_object(object_store.bucket, "jobs/ns/run-1/progress.json").read() == payload
    listed = [o.object_name for o in client.list_objects(object_store.bucket, prefix="jobs/ns/", recursive=True)]
    assert "jobs/ns/run-1/progress.json" in listed
    object_store.create_bucket("second-bucket")
    assert client.bucket_exists("second-bucket")


@pytest.mark.parametrize("credentials", ["wrong secret key", "unknown access key"])
def test_requests_with_wrong_credentials_are_refused(object_store: Any, credentials: str) -> None:
    if credentials == "wrong secret key":
        client = object_store.client(secret_key="not-the-secret-key-at-all-0000000000000")
        expected = "SignatureDoesNotMatch"
    else:
        client = object_store.client(access_key="AKIANOTAREALKEY00000")
        expected = "InvalidAccessKeyId"
    with pytest.raises(S3Error) as refused:
        client.put_object(object_store.bucket, "intruder.txt", io.BytesIO(b"x"), 1)
    assert refused.value.code == expected
    with pytest.raises(S3Error):
        list(client.list_objects(object_store.bucket))


def test_anonymous_requests_are_refused(object_store: Any) -> None:
    anonymous = minio.Minio(object_store.endpoint, secure=False, region="us-east-1")
    with pytest.raises(S3Error) as refused:
        anonymous.put_object(object_store.bucket, "anonymous.txt", io.BytesIO(b"x"), 1)
    assert refused.value.code == "AccessDenied"
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(f"{object_store.url}/{object_store.bucket}/", timeout=5)
    assert raw.value.code == 403


def test_a_store_stops_without_leaving_a_process(tmp_path: Path) -> None:
    store = start_object_store(tmp_path / "s3", bucket="scratch")
    process = store.process
    assert process is not None and store.running
    assert store.endpoint.startswith("127.0.0.1:")
    assert store.access_key not in (tmp_path / "s3" / "weed.log").read_text()
    store.stop()
    assert process.poll() is not None
    assert not store.running
    host, port = store.endpoint.split(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2)
    store.stop()  # a second stop is harmless
