"""The CLI's and the console's reads from the object store: events.jsonl, metrics.jsonl, results.jsonl, and
verified artifact downloads.

Where the store is: ``--storage-endpoint`` (or ``$FINETUNE_STORAGE_ENDPOINT``), else the endpoint the operator
gives its pods, read from one of its ConfigMaps in the namespace (``config.json``'s ``storage``; in a cluster
that is often an in-cluster name: then pass the endpoint, e.g. of ``kubectl port-forward``). The keys:
``--credentials-file``, else ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY``, else the namespace's storage
Secret (``$FINETUNE_STORAGE_SECRET``, default ``finetune-storage``) when the user may read it. Keys are
never printed.

A download verifies every file against the artifact's ``manifest.json`` (size and sha256): a file that does
not match is removed and the command fails with exit code 6, so a folder that a download left is complete.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer import contract

from finetune_operator.cli.base import EXIT_CORRUPT, EXIT_FAILED, EXIT_FORBIDDEN, EXIT_NOT_FOUND, EXIT_NOT_READY, EXIT_UNREACHABLE, CliError

MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
CHUNK = 1 << 20


def read_credentials_file(credentials_file: str) -> tuple[str, str]:
    """Access and secret key from an AWS credentials file or a folder with files accessKey and secretKey."""
    path = Path(credentials_file).expanduser()
    if path.is_dir():
        try:
            return (path / "accessKey").read_text().strip(), (path / "secretKey").read_text().strip()
        except OSError as e:
            raise CliError(f"--credentials-file {path}: {e.strerror}") from None
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text())
    except (OSError, configparser.Error) as e:
        raise CliError(f"--credentials-file {path}: not a readable credentials file ({type(e).__name__})") from None
    sections = ["default"] if parser.has_section("default") else parser.sections()
    for section in sections:
        values = parser[section]
        access = values.get("aws_access_key_id") or values.get("accessKey")
        secret = values.get("aws_secret_access_key") or values.get("secretKey")
        if access and secret:
            return access.strip(), secret.strip()
    raise CliError(f"--credentials-file {path}: no aws_access_key_id and aws_secret_access_key in it")


@dataclass
class StoreSettings:
    endpoint: str
    secure: bool
    region: str | None
    access_key: str
    secret_key: str


def _cluster_storage(kube: Any) -> dict[str, Any]:
    """The ``storage`` section of a config the operator wrote for its pods in this namespace, or {}."""
    try:
        maps = kube.config_maps("app.kubernetes.io/name=finetune")
    except CliError:
        return {}
    for config_map in maps:
        try:
            config = json.loads((config_map.data or {}).get("config.json") or "{}")
        except ValueError:
            continue
        storage = config.get("storage") or {}
        if storage.get("endpoint"):
            return storage
    return {}


def settings_from(args: Any, kube: Any) -> StoreSettings:
    """Where the store is and the keys to read it with (flags, environment, then what the cluster says)."""
    endpoint = getattr(args, "storage_endpoint", None)
    insecure = getattr(args, "storage_insecure", None)
    env_secure = os.environ.get("FINETUNE_STORAGE_SECURE")
    secure: bool | None = None if insecure is None else not insecure
    if secure is None and env_secure is not None and endpoint:
        secure = env_secure.lower() not in ("false", "0", "no")
    region = os.environ.get("FINETUNE_STORAGE_REGION") or None
    if not endpoint:
        storage = _cluster_storage(kube)
        endpoint = storage.get("endpoint")
        if secure is None and "secure" in storage:
            secure = bool(storage["secure"])
        region = region or storage.get("region")
    if not endpoint:
        raise CliError(
            f"no object store endpoint: pass --storage-endpoint HOST:PORT or set FINETUNE_STORAGE_ENDPOINT (the operator "
            f"has started no pod in namespace {kube.namespace} to learn it from)",
            EXIT_NOT_FOUND,
        )
    if "://" in endpoint:  # tolerate a URL: its scheme says whether TLS is on
        scheme, _, endpoint = endpoint.partition("://")
        secure = scheme == "https" if secure is None else secure
    if secure is None:
        secure = True
    credentials_file = getattr(args, "credentials_file", None)
    if credentials_file:
        access, secret = read_credentials_file(credentials_file)
    elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    else:
        name = os.environ.get("FINETUNE_STORAGE_SECRET", "finetune-storage")
        try:
            access = kube.secret_value(name, "accessKey")
            secret = kube.secret_value(name, "secretKey")
        except CliError as e:
            raise CliError(
                f"no object store keys: {e} (pass --credentials-file, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)", e.code
            ) from None
    return StoreSettings(endpoint=endpoint.rstrip("/"), secure=secure, region=region, access_key=access, secret_key=secret)


class Store:
    """A minio client with errors as one line: missing → exit 3, refused keys → 4, unreachable → 7."""

    def __init__(self, settings: StoreSettings):
        import urllib3
        from minio import Minio

        self.settings = settings
        self.client = Minio(
            settings.endpoint, access_key=settings.access_key, secret_key=settings.secret_key, secure=settings.secure,
            region=settings.region,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=5, read=60), retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504])
            ),
        )  # fmt: skip

    @classmethod
    def from_args(cls, args: Any, kube: Any) -> Store:
        return cls(settings_from(args, kube))

    def _error(self, e: Exception, uri: str, verb: str) -> CliError:
        code = getattr(e, "code", None)
        if code in MISSING:
            return CliError(f"{uri} does not exist in the object store", EXIT_NOT_FOUND)
        if code in DENIED:
            return CliError(f"no access: the object store refused to {verb} {uri} ({code})", EXIT_FORBIDDEN)
        if code:
            return CliError(f"cannot {verb} {uri}: {code}", EXIT_FAILED)
        return CliError(f"cannot reach the object store at {self.settings.endpoint} ({type(e).__name__})", EXIT_UNREACHABLE)

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = contract.parse_s3_uri(uri)
        try:
            response = self.client.get_object(bucket, key)
        except Exception as e:
            raise self._error(e, uri, "read") from None
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def read_optional(self, uri: str) -> bytes | None:
        """The object's bytes, or None when it does not exist (yet)."""
        try:
            return self.read_bytes(uri)
        except CliError as e:
            if e.code == EXIT_NOT_FOUND:
                return None
            raise

    def read_jsonl(self, uri: str) -> list[dict[str, Any]]:
        """The lines of a JSONL object that parse (none when it does not exist)."""
        body = self.read_optional(uri)
        out = []
        for line in (body or b"").decode(errors="replace").splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out

    def manifest(self, folder_uri: str) -> contract.Manifest | None:
        body = self.read_optional(contract.join_uri(folder_uri, contract.MANIFEST_FILE))
        if body is None:
            return None
        try:
            return contract.Manifest.model_validate_json(body)
        except ValueError:
            raise CliError(f"{folder_uri}/manifest.json does not follow the contract", EXIT_CORRUPT) from None

    def download_artifact(self, folder_uri: str, dest: Path, progress: bool = True, on_file: Callable[[str], None] | None = None) -> contract.Manifest:
        """Every file the manifest lists, into ``dest``, each checked against its size and sha256; then the
        manifest itself. A file that does not match is removed and the download fails (exit 6)."""
        manifest = self.manifest(folder_uri)
        if manifest is None:
            raise CliError(f"{folder_uri} has no manifest.json: the artifact is incomplete or does not exist", EXIT_NOT_READY)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        from tqdm import tqdm

        bar = tqdm(total=manifest.total_size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name or "download",
                   disable=not progress, file=sys.stderr)  # fmt: skip
        try:
            for entry in manifest.files:
                target = (dest / entry.path).resolve()
                if root not in target.parents:  # a manifest is tenant-written: never write outside the folder
                    raise CliError(f"{folder_uri}/manifest.json names a path outside the artifact: {entry.path!r}", EXIT_CORRUPT)
                self._download_file(contract.join_uri(folder_uri, entry.path), target, entry, bar)
                if on_file:
                    on_file(entry.path)
        finally:
            bar.close()
        (dest / contract.MANIFEST_FILE).write_text(manifest.to_json())
        return manifest

    def _download_file(self, uri: str, target: Path, entry: contract.ManifestFile, bar: Any) -> None:
        bucket, key = contract.parse_s3_uri(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        written = 0
        try:
            response = self.client.get_object(bucket, key)
        except Exception as e:
            raise self._error(e, uri, "download") from None
        try:
            with open(target, "wb") as out:
                for block in response.stream(CHUNK):
                    out.write(block)
                    digest.update(block)
                    written += len(block)
                    bar.update(len(block))
        except OSError as e:
            raise CliError(f"cannot write {target}: {e.strerror}") from None
        finally:
            response.close()
            response.release_conn()
        if written != entry.size or digest.hexdigest() != entry.sha256:
            target.unlink(missing_ok=True)
            what = f"size {written}, expected {entry.size}" if written != entry.size else f"sha256 {digest.hexdigest()[:12]}…, expected {entry.sha256[:12]}…"
            raise CliError(f"{entry.path} does not match its manifest ({what}): removed; the download is incomplete", EXIT_CORRUPT)

    def delete_prefix(self, uri: str) -> int:
        """Delete every object under a folder URI; returns how many were deleted."""
        from minio.deleteobjects import DeleteObject

        bucket, key = contract.parse_s3_uri(uri)
        try:
            names = [o.object_name for o in self.client.list_objects(bucket, prefix=key.rstrip("/") + "/", recursive=True)]
            errors = list(self.client.remove_objects(bucket, [DeleteObject(n) for n in names]))
        except Exception as e:
            raise self._error(e, uri, "delete") from None
        if errors:
            raise CliError(f"could not delete {len(errors)} of {len(names)} objects under {uri} (first: {errors[0].name}: {errors[0].code})")
        return len(names)
