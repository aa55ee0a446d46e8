"""Object storage for the trainer: ``s3://`` URIs through the minio client, plain paths on the local disk.

Every command of the trainer reads and writes through ``ObjectStore``, so the same code runs in a pod
(S3) and on a laptop (``finetune-trainer train --config config.json`` with local paths).

The one rule that matters: an artifact (a folder of files) is complete only when its ``manifest.json``
exists, and ``upload_artifact`` writes it after every file it lists. ``download_artifact`` refuses a
folder without one and checks every file's size and sha256 against it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from finetune_trainer.contract import MANIFEST_FILE, Manifest, ManifestFile, StorageConfig, parse_s3_uri

CHUNK = 1 << 20


class StorageError(RuntimeError):
    """An object store operation failed (missing object, refused credentials, corrupt artifact)."""


class IncompleteArtifactError(StorageError):
    """A folder has no manifest.json, or its files do not match it."""


def missing_manifest_message(uri: str, has_objects: bool) -> str:
    """Why an s3:// model or adapter without ``manifest.json`` is refused, everywhere one is read."""
    if not has_objects:
        return f"{uri}: no such model (the prefix holds no objects)"
    return (
        f"{uri} has no {MANIFEST_FILE}: a folder is read only as a complete artifact (written last by this project's "
        f"uploads); upload a folder copied by hand with `finetune-trainer upload FOLDER {uri}`"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def read_credentials(config: StorageConfig) -> tuple[str, str]:
    """Access and secret key from the mounted Secret folder, else from the AWS_* environment variables."""
    if config.credentials_dir:
        folder = Path(config.credentials_dir)
        try:
            access = (folder / "accessKey").read_text().strip()
            secret = (folder / "secretKey").read_text().strip()
        except OSError as e:
            raise StorageError(f"cannot read object store credentials from {folder}: {e.strerror}") from None
        return access, secret
    access = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not access or not secret:
        raise StorageError("no object store credentials: set storage.credentialsDir or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    return access, secret


class ObjectStore:
    """Reads and writes ``s3://bucket/key`` and local paths with one interface."""

    def __init__(self, config: StorageConfig | None = None):
        self.config = config
        self._client = None
        self._buckets: set[str] = set()

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def client(self):  # minio.Minio, imported lazily
        if self._client is None:
            if self.config is None:
                raise StorageError("an s3:// URI needs a storage configuration (endpoint and credentials)")
            from minio import Minio

            access, secret = read_credentials(self.config)
            self._client = Minio(
                self.config.endpoint,
                access_key=access,
                secret_key=secret,
                secure=self.config.secure,
                region=self.config.region,
            )
        return self._client

    def _s3_error(self, op: str, uri: str, e: Exception) -> StorageError:
        code = getattr(e, "code", None) or type(e).__name__
        return StorageError(f"{op} {uri}: {code}")

    # -- single objects --------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return local_path(uri).exists()
        from minio.error import S3Error

        bucket, key = parse_s3_uri(uri)
        try:
            self.client.stat_object(bucket, key)
            return True
        except S3Error as e:
            if e.code in {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}:
                return False
            raise self._s3_error("stat", uri, e) from None

    def size(self, uri: str) -> int:
        if not is_s3(uri):
            return local_path(uri).stat().st_size
        bucket, key = parse_s3_uri(uri)
        return int(self.client.stat_object(bucket, key).size)

    def read_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            try:
                return local_path(uri).read_bytes()
            except FileNotFoundError:
                raise StorageError(f"read {uri}: NoSuchKey") from None
        from minio.error import S3Error

        bucket, key = parse_s3_uri(uri)
        try:
            response = self.client.get_object(bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        except S3Error as e:
            raise self._s3_error("read", uri, e) from None

    def read_json(self, uri: str) -> Any | None:
        """The parsed JSON object at ``uri``, or None when there is none."""
        if not self.exists(uri):
            return None
        return json.loads(self.read_bytes(uri))

    def write_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write one object. On S3 a single PUT is atomic: readers see the old or the new body, never half."""
        if not is_s3(uri):
            path = local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return
        bucket, key = parse_s3_uri(uri)
        self.ensure_bucket(bucket)
        self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def write_json(self, uri: str, obj: Any) -> None:
        if hasattr(obj, "model_dump_json"):
            body = obj.model_dump_json(by_alias=True, exclude_none=True, indent=2)
        else:
            body = json.dumps(obj, indent=2, default=str)
        self.write_bytes(uri, body.encode(), "application/json")

    def append_line(self, uri: str, line: str) -> None:
        """Append a line to a small log object (events.jsonl). S3 has no append: read, add, rewrite."""
        if not is_s3(uri):
            path = local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(line.rstrip("\n") + "\n")
            return
        old = self.read_bytes(uri) if self.exists(uri) else b""
        self.write_bytes(uri, old + line.rstrip("\n").encode() + b"\n", "application/x-ndjson")

    def open_read(self, uri: str) -> IO[bytes]:
        """A streaming reader (the caller closes it); the body is not loaded into memory."""
        if not is_s3(uri):
            try:
                return open(local_path(uri), "rb")
            except FileNotFoundError:
                raise StorageError(f"read {uri}: NoSuchKey") from None
        from minio.error import S3Error

        bucket, key = parse_s3_uri(uri)
        try:
            return self.client.get_object(bucket, key)
        except S3Error as e:
            raise self._s3_error("read", uri, e) from None

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket unless it exists (once per bucket). A key scoped to a namespace's prefixes may not
        look at the bucket itself; then the write that follows says whether it exists."""
        from minio.error import S3Error

        if bucket in self._buckets:
            return
        try:
            if not self.client.bucket_exists(bucket):
                self.client.make_bucket(bucket)
        except S3Error as e:
            if e.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists", "AccessDenied"}:
                raise self._s3_error("create bucket", f"s3://{bucket}", e) from None
        self._buckets.add(bucket)

    def delete(self, uri: str) -> None:
        if not is_s3(uri):
            path = local_path(uri)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            return
        bucket, key = parse_s3_uri(uri)
        self.client.remove_object(bucket, key)

    # -- folders ---------------------------------------------------------------------------------
    def list(self, prefix_uri: str) -> Iterator[str]:
        """Relative names (with ``/``) of every object under a folder URI, recursively."""
        if not is_s3(prefix_uri):
            root = local_path(prefix_uri)
            if root.is_dir():
                for path in sorted(root.rglob("*")):
                    if path.is_file():
                        yield path.relative_to(root).as_posix()
            return
        bucket, key = parse_s3_uri(prefix_uri)
        prefix = key + "/" if key else ""
        for obj in self.client.list_objects(bucket, prefix=prefix, recursive=True):
            yield obj.object_name[len(prefix) :]

    def upload_file(self, path: Path, uri: str) -> None:
        if not is_s3(uri):
            dest = local_path(uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if Path(path).resolve() != dest.resolve():
                shutil.copyfile(path, dest)
            return
        bucket, key = parse_s3_uri(uri)
        self.ensure_bucket(bucket)
        self.client.fput_object(bucket, key, str(path))

    def download_file(self, uri: str, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not is_s3(uri):
            try:
                shutil.copyfile(local_path(uri), path)
            except FileNotFoundError:
                raise StorageError(f"read {uri}: NoSuchKey") from None
            return
        from minio.error import S3Error

        bucket, key = parse_s3_uri(uri)
        try:
            self.client.fget_object(bucket, key, str(path))
        except S3Error as e:
            raise self._s3_error("download", uri, e) from None

    # -- artifacts -------------------------------------------------------------------------------
    def upload_artifact(self, folder: Path, uri: str, kind: str, **metadata: Any) -> Manifest:
        """Upload every file of ``folder`` under ``uri``, then ``manifest.json`` last."""
        folder = Path(folder)
        files: list[ManifestFile] = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel == MANIFEST_FILE:
                continue
            files.append(ManifestFile(path=rel, size=path.stat().st_size, sha256=sha256_file(path)))
            self.upload_file(path, f"{uri.rstrip('/')}/{rel}")
        known = {"base_model", "step"}
        manifest = Manifest(
            kind=kind,
            files=files,
            base_model=metadata.get("base_model"),
            step=metadata.get("step"),
            metadata={k: v for k, v in metadata.items() if k not in known and v is not None},
        )
        self.write_json(f"{uri.rstrip('/')}/{MANIFEST_FILE}", manifest)
        return manifest

    def read_manifest(self, uri: str) -> Manifest | None:
        data = self.read_json(f"{uri.rstrip('/')}/{MANIFEST_FILE}")
        return None if data is None else Manifest.model_validate(data)

    def download_artifact(self, uri: str, folder: Path, verify: bool = True) -> Manifest:
        """Download a complete artifact; refuse one without a manifest or with a file that does not match."""
        manifest = self.read_manifest(uri)
        if manifest is None:
            raise IncompleteArtifactError(missing_manifest_message(uri, has_objects=True))
        folder = Path(folder)
        for entry in manifest.files:
            dest = folder / entry.path
            self.download_file(f"{uri.rstrip('/')}/{entry.path}", dest)
            if verify:
                size = dest.stat().st_size
                if size != entry.size or sha256_file(dest) != entry.sha256:
                    raise IncompleteArtifactError(f"{uri}/{entry.path} does not match its manifest (size {size}, expected {entry.size})")
        return manifest

    def fetch_folder(self, uri: str, folder: Path) -> Path:
        """A local folder with the content of ``uri``: itself if local, else a verified download."""
        if not is_s3(uri):
            path = local_path(uri)
            if not path.is_dir():
                raise StorageError(f"{uri}: no such folder")
            return path
        self.download_artifact(uri, folder)
        return Path(folder)
