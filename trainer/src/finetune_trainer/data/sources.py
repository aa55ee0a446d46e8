"""Where a dataset comes from: ``s3://`` objects, ``https://`` URLs and local files, read as streams.

``open_source`` learns the size first (``stat``, ``stat_object``, ``Content-Length``) so an oversized file is
refused before a byte of it is read, then hands back a buffered stream that hashes (sha256) and counts
every byte that passes through it: the checker reads the source once, and the hash is ready when it is
done. Nothing here loads a file whole.

A source that cannot be read raises ``SourceError`` with the checker's rule id, whether the object was
found, and whether trying again later may help (connection refused, timeouts, 5xx: yes; 404, refused
credentials: no). Messages carry the URI with its query string and user info removed (a presigned URL's
signature is a credential), and never a key.

URLs are fetched under the rules of ``finetune_trainer.outbound``: a token only over https and only to the
URL's own origin, checked addresses (no loopback, link-local or private ones unless the admin allows them),
a few redirects at most. A refusal is a ``SourceError`` whose rule is the rule that refused it.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from finetune_trainer.contract import StorageConfig, parse_s3_uri
from finetune_trainer.outbound import URLRefused, open_url, redact
from finetune_trainer.storage import ObjectStore, StorageError, is_s3, local_path

READ_BUFFER = 1 << 20
HTTP_TIMEOUT_SECONDS = 60.0
USER_AGENT = "finetune-trainer"


class SourceError(RuntimeError):
    """The source could not be opened or read to the end."""

    def __init__(self, rule: str, message: str, *, found: bool = False, retryable: bool = False):
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.found = found
        self.retryable = retryable


class HashingReader(io.RawIOBase):
    """A raw stream over another one that feeds sha256 and stops the read past ``limit`` bytes."""

    def __init__(self, inner: IO[bytes], limit: int | None = None, uri: str = ""):
        self._inner = inner
        self._limit = limit
        self._uri = uri
        self._digest = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        try:
            if hasattr(self._inner, "readinto"):
                n = self._inner.readinto(view) or 0
            else:
                data = self._inner.read(len(view))
                n = len(data)
                view[:n] = data
        except (OSError, socket.timeout) as e:
            raise SourceError(
                "source_unreachable", f"reading {redact(self._uri)} failed after {self.bytes_read} bytes: {e}", found=True, retryable=True
            ) from None
        except Exception as e:  # urllib3's ProtocolError and friends: a connection lost mid-body
            if type(e).__module__.startswith(("urllib3", "http")):
                raise SourceError(
                    "source_unreachable",
                    f"reading {redact(self._uri)} failed after {self.bytes_read} bytes: {type(e).__name__}",
                    found=True,
                    retryable=True,
                ) from None
            raise
        if n:
            self._digest.update(view[:n])
            self.bytes_read += n
            if self._limit is not None and self.bytes_read > self._limit:
                raise SourceError(
                    "too_large", f"{redact(self._uri)} is larger than the limit of {self._limit} bytes", found=True
                )
        return n

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
            release = getattr(self._inner, "release_conn", None)
            if release is not None:
                release()
        finally:
            super().close()


@dataclass
class Source:
    """An opened source: a buffered, hashing stream plus what was learnt before reading."""

    uri: str
    name: str
    """The last path segment, for telling Parquet by its extension."""
    size: int | None
    """Bytes, from stat or Content-Length; None when the server did not say."""
    reader: HashingReader
    stream: io.BufferedReader = field(init=False)

    def __post_init__(self) -> None:
        self.stream = io.BufferedReader(self.reader, buffer_size=READ_BUFFER)

    def head(self, n: int = 4) -> bytes:
        """The first ``n`` bytes, without consuming them."""
        return self.stream.peek(n)[:n]

    def drain(self) -> None:
        """Read what is left (so the hash covers the whole source)."""
        while self.stream.read(READ_BUFFER):
            pass

    def sha256(self) -> str:
        return self.reader.hexdigest()

    def copy_to(self, path: Path) -> None:
        """Stream the rest of the source into a local file (Parquet needs random access)."""
        with open(path, "wb") as out:
            while chunk := self.stream.read(READ_BUFFER):
                out.write(chunk)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _name_of(uri: str) -> str:
    path = urllib.parse.urlsplit(uri).path if "://" in uri else uri
    return path.rstrip("/").rsplit("/", 1)[-1]


def source_storage(storage: StorageConfig | None, credentials_dir: str | None) -> StorageConfig | None:
    """The object store settings for reading the source: the Dataset's own credentials when it names some."""
    if storage is None or credentials_dir is None:
        return storage
    return storage.model_copy(update={"credentials_dir": credentials_dir})


def open_source(
    uri: str,
    storage: StorageConfig | None = None,
    *,
    credentials_dir: str | None = None,
    max_bytes: int | None = None,
    timeout: float = HTTP_TIMEOUT_SECONDS,
    allow_private_urls: bool = False,
) -> Source:
    """Open ``uri`` for streaming. Raises ``SourceError`` when it cannot be found or reached, or may not be.

    ``max_bytes`` bounds what the stream will deliver when the size was not known up front;
    ``allow_private_urls`` (the admin's setting) lets an http(s) URL reach loopback and private addresses.
    """
    if is_s3(uri):
        return _open_s3(uri, source_storage(storage, credentials_dir), max_bytes)
    if uri.startswith(("https://", "http://")):
        return _open_http(uri, max_bytes, timeout, _bearer_token(credentials_dir), allow_private_urls)
    return _open_local(uri, max_bytes)


def _bearer_token(credentials_dir: str | None) -> str | None:
    """The ``token`` file of the Dataset's mounted Secret, sent to an https:// source as a bearer token."""
    if credentials_dir is None:
        return None
    path = Path(credentials_dir) / "token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _open_local(uri: str, max_bytes: int | None) -> Source:
    path = local_path(uri)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise SourceError("not_found", f"{uri} is a folder, not a file")
        raw = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise SourceError("not_found", f"no such file: {uri}") from None
    except PermissionError:
        raise SourceError("access_denied", f"no permission to read {uri}", found=True) from None
    return Source(uri=uri, name=path.name, size=size, reader=HashingReader(raw, max_bytes, uri))


def _open_http(uri: str, max_bytes: int | None, timeout: float, token: str | None, allow_private_urls: bool) -> Source:
    shown = redact(uri)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    try:
        response = open_url(uri, token=token, headers=headers, timeout=timeout, allow_private=allow_private_urls)
    except URLRefused as e:
        raise SourceError(e.rule, e.message) from None
    except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, not HTTP
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise SourceError("source_unreachable", f"cannot connect to {shown}: {reason}", retryable=True) from None
    if response.status >= 300:  # an error, or a redirect without a Location
        response.close()
        raise _http_failure(shown, response.status)
    length = response.getheader("Content-Length")
    size = int(length) if length and length.isdigit() else None
    return Source(uri=uri, name=_name_of(uri), size=size, reader=HashingReader(response, max_bytes, uri))


def _http_failure(shown: str, status: int) -> SourceError:
    if status in (404, 410):
        return SourceError("not_found", f"{shown}: HTTP {status} (not found)")
    if status in (401, 403):
        return SourceError("access_denied", f"{shown}: HTTP {status} (access denied)", found=True)
    retryable = status >= 500 or status in (408, 429)
    return SourceError("source_unreachable", f"{shown}: HTTP {status}", retryable=retryable)


def _s3_failure(uri: str, error: Exception) -> SourceError:
    from minio.error import S3Error

    if isinstance(error, S3Error):
        code = error.code or "error"
        if code in {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}:
            return SourceError("not_found", f"{uri}: {code}")
        if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}:
            return SourceError("access_denied", f"{uri}: {code} (check the Dataset's credentials Secret)")
        return SourceError("source_unreachable", f"{uri}: {code}", retryable=True)
    if isinstance(error, StorageError):  # missing credentials, a missing storage section
        return SourceError("access_denied", f"{uri}: {error}")
    return SourceError("source_unreachable", f"cannot reach the object store for {uri}: {type(error).__name__}", retryable=True)


def _open_s3(uri: str, storage: StorageConfig | None, max_bytes: int | None) -> Source:
    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as e:
        raise SourceError("not_found", str(e)) from None
    if storage is None:
        raise SourceError("access_denied", f"{uri}: an s3:// source needs the object store settings (storage)")
    client = ObjectStore(storage)
    try:
        size = int(client.client.stat_object(bucket, key).size)
        response = client.client.get_object(bucket, key)
    except Exception as e:  # S3Error, urllib3 errors, StorageError: sorted out by _s3_failure
        raise _s3_failure(uri, e) from None
    return Source(uri=uri, name=_name_of(uri), size=size, reader=HashingReader(response, max_bytes, uri))


def fetch_tokenizer(uri: str, storage: StorageConfig | None, folder: Path, allow_private_urls: bool = False) -> Path:
    """A local ``tokenizer.json`` for ``uri``: a local folder or file, ``s3://`` or ``https://`` (a folder or
    the file itself), or ``hf://org/name[@revision]`` (from ``$HF_ENDPOINT``, default the Hugging Face Hub)."""
    if uri.startswith("file://") or (not is_s3(uri) and "://" not in uri):
        path = local_path(uri)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise SourceError("not_found", f"no tokenizer.json at {uri}")
        return file
    if uri.startswith("hf://"):
        repo, _, revision = uri[len("hf://") :].partition("@")
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        uri = f"{endpoint}/{repo.strip('/')}/resolve/{revision or 'main'}/tokenizer.json"
    elif not uri.rstrip("/").endswith(".json"):
        uri = uri.rstrip("/") + "/tokenizer.json"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "tokenizer.json"
    with open_source(uri, storage, max_bytes=1 << 30, allow_private_urls=allow_private_urls) as source:
        source.copy_to(target)
    return target
