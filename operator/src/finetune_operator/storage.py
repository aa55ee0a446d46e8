"""The operator's view of the object store: it reads what trainers wrote (progress.json, manifests,
reports) and, when configured, deletes a deleted job's artifacts. It never writes artifacts."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from finetune_operator.config import OperatorConfig
from finetune_trainer import contract

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 1 << 20
"""The most the operator reads of one JSON file a pod wrote (progress.json, a report, a summary): a tenant can
write any size there, and the operator is shared. A larger file counts as unreadable."""
MAX_EVENTS_BYTES = 8 << 20
"""The most of events.jsonl read (its newest lines)."""


class OperatorStorage:
    def __init__(self, config: OperatorConfig):
        self.config = config
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import urllib3
            from minio import Minio

            folder = Path(self.config.storage_credentials_dir)
            try:
                access = (folder / "accessKey").read_text().strip()
                secret = (folder / "secretKey").read_text().strip()
            except OSError as e:
                raise RuntimeError(f"object store credentials are not mounted at {folder} ({e.strerror})") from None
            self._client = Minio(
                self.config.storage_endpoint,
                access_key=access,
                secret_key=secret,
                secure=self.config.storage_secure,
                region=self.config.storage_region or None,
                # Fail fast: a reconcile must not block a worker for long on an unreachable store.
                http_client=urllib3.PoolManager(
                    timeout=urllib3.Timeout(connect=5, read=30),
                    retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
                    maxsize=16,
                ),
            )
        return self._client

    def read_json(self, uri: str) -> Any | None:
        """The JSON at ``uri``; None when missing or unreadable (the caller reports, never crashes)."""
        from minio.error import S3Error

        bucket, key = contract.parse_s3_uri(uri)
        try:
            response = self.client.get_object(bucket, key)
        except S3Error as e:
            if e.code not in {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}:
                logger.warning("reading %s failed: %s", uri, e.code)
            return None
        except Exception as e:  # connection trouble: next reconcile tries again
            logger.warning("reading %s failed: %s", uri, type(e).__name__)
            return None
        try:
            body = response.read(MAX_JSON_BYTES + 1)
            if len(body) > MAX_JSON_BYTES:
                logger.warning("%s is larger than %d bytes; not read", uri, MAX_JSON_BYTES)
                return None
            return json.loads(body)
        except (ValueError, RecursionError):
            logger.warning("%s is not JSON", uri)
            return None
        finally:
            response.close()
            response.release_conn()

    def read_progress(self, artifacts_uri: str) -> contract.Progress | None:
        data = self.read_json(contract.join_uri(artifacts_uri, contract.PROGRESS_FILE))
        if data is None:
            return None
        try:
            return contract.Progress.model_validate(data)
        except ValueError:
            logger.warning("progress.json under %s does not follow the contract", artifacts_uri)
            return None

    def manifest_exists(self, folder_uri: str) -> bool:
        return self.read_json(contract.join_uri(folder_uri, contract.MANIFEST_FILE)) is not None

    def read_events(self, artifacts_uri: str) -> list[contract.TrainerEvent]:
        from minio.error import S3Error

        bucket, key = contract.parse_s3_uri(contract.join_uri(artifacts_uri, contract.EVENTS_FILE))
        try:
            size = self.client.stat_object(bucket, key).size or 0
            offset = max(0, size - MAX_EVENTS_BYTES)  # the newest lines, at most MAX_EVENTS_BYTES
            response = self.client.get_object(bucket, key, offset=offset)
            body = response.read(MAX_EVENTS_BYTES).decode(errors="replace")
            if offset:
                body = body.split("\n", 1)[-1]  # the first line was cut
            response.close()
            response.release_conn()
        except (S3Error, Exception):
            return []
        events = []
        for line in body.splitlines():
            try:
                events.append(contract.TrainerEvent.model_validate_json(line))
            except ValueError:
                continue
        return events

    def delete_prefix(self, uri: str) -> int:
        from minio.deleteobjects import DeleteObject

        bucket, key = contract.parse_s3_uri(uri)
        names = [o.object_name for o in self.client.list_objects(bucket, prefix=key.rstrip("/") + "/", recursive=True)]
        errors = list(self.client.remove_objects(bucket, [DeleteObject(n) for n in names]))
        for err in errors:
            logger.warning("could not delete %s: %s", err.name, err.code)
        return len(names) - len(errors)
