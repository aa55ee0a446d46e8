"""The operator reads what tenants' pods wrote with bounds: a huge or hostile JSON file in the store cannot
exhaust the shared operator's memory or crash a reconcile; it counts as unreadable."""

from __future__ import annotations

import io
import json

from finetune_operator.config import OperatorConfig
from finetune_operator.storage import MAX_JSON_BYTES, OperatorStorage


def storage(object_store, storage_credentials) -> OperatorStorage:
    return OperatorStorage(OperatorConfig(storage_endpoint=object_store.endpoint, storage_secure=False, storage_bucket=object_store.bucket,
                                          storage_credentials_dir=str(storage_credentials)))  # fmt: skip


def put(object_store, key: str, data: bytes) -> str:
    object_store.client().put_object(object_store.bucket, key, io.BytesIO(data), len(data))
    return f"s3://{object_store.bucket}/{key}"


def test_a_json_file_larger_than_the_bound_is_not_read(object_store, storage_credentials):
    store = storage(object_store, storage_credentials)
    fits = put(object_store, "bounds/fits.json", json.dumps({"step": 3, "pad": "x" * 1000}).encode())
    assert store.read_json(fits)["step"] == 3
    huge = put(object_store, "bounds/huge/progress.json", json.dumps({"step": 3, "pad": "x" * (MAX_JSON_BYTES + 10)}).encode())
    assert store.read_json(huge) is None
    assert store.read_progress(huge.rsplit("/", 1)[0]) is None


def test_a_deeply_nested_json_file_is_unreadable_not_a_crash(object_store, storage_credentials):
    store = storage(object_store, storage_credentials)
    deep = put(object_store, "bounds/deep.json", b"[" * 100_000 + b"]" * 100_000)
    assert store.read_json(deep) is None


def test_only_the_newest_part_of_a_huge_event_log_is_read(object_store, storage_credentials):
    from finetune_operator import storage as module

    store = storage(object_store, storage_credentials)
    line = json.dumps({"time": "2026-01-01T00:00:00Z", "reason": "Step", "message": "x" * 200}) + "\n"
    count = module.MAX_EVENTS_BYTES // len(line) + 500
    body = "".join(line.replace("x" * 200, f"{i:06d}" + "x" * 194) for i in range(count)).encode()
    put(object_store, "bounds/job/events.jsonl", body)
    events = store.read_events(f"s3://{object_store.bucket}/bounds/job")
    assert events and events[-1].message.startswith(f"{count - 1:06d}")
    assert len(events) < count
