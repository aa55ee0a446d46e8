"""Fixtures for the dataset tests: the malformed corpus, a byte-level tokenizer, a local HTTP(S) file server."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.tls import self_signed_certificate, serve_tls

CORPUS = Path(__file__).parent / "corpus"
VALID = CORPUS / "valid"
BIN = Path(sys.executable).parent


def load_expected(folder: Path) -> dict[str, dict]:
    return yaml.safe_load((folder / "expected.yaml").read_text())


def chat_line(i: int, answer: str | None = None) -> str:
    """One conversation as a JSONL line (no newline)."""
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": answer or f"{i} + {i} = {2 * i}."},
            ]
        }
    )


def write_chat(path: Path, n: int) -> Path:
    path.write_text("".join(chat_line(i) + "\n" for i in range(n)))
    return path


@pytest.fixture
def byte_tokenizer(tmp_path: Path) -> Path:
    """A folder with a byte-level tokenizer.json without merges or special tokens: one token per UTF-8 byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@dataclass
class FileServer:
    """A loopback HTTP server over a folder; ``/status/<code>/...`` answers with that status, ``/private/...``
    serves the folder to a bearer of ``PRIVATE_TOKEN`` only, ``/nolength/...`` without a Content-Length."""

    root: Path
    url: str


PRIVATE_TOKEN = "tok-3f9a1c"
"""``/private/...`` needs ``Authorization: Bearer <PRIVATE_TOKEN>``."""


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if self.path.startswith("/private/"):
            if self.headers.get("Authorization") != f"Bearer {PRIVATE_TOKEN}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.path = self.path[len("/private") :]
        if self.path.startswith("/nolength/"):  # a body whose size is not announced: read until the close
            body = (self.directory and Path(self.directory, self.path[len("/nolength/") :]).read_bytes()) or b""
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:
        pass


def _start_file_server(root: Path, certificate: tuple[Path, Path] | None = None) -> Iterator[FileServer]:
    root.mkdir()
    handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if certificate is not None:
        serve_tls(server, certificate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if certificate is not None else "http"
    try:
        yield FileServer(root=root, url=f"{scheme}://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    yield from _start_file_server(tmp_path / "www")


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_file_server(tmp_path: Path, certificate: tuple[Path, Path], monkeypatch) -> Iterator[FileServer]:
    """The file server over TLS, its certificate trusted through ``SSL_CERT_FILE`` (here and in subprocesses)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    yield from _start_file_server(tmp_path / "www-tls", certificate)


@dataclass
class ValidateRun:
    returncode: int
    stdout: str
    stderr: str
    report: dict | None
    termination_message: str | None


def run_validate(tmp_path: Path, config: dict, env: dict | None = None) -> ValidateRun:
    """Run ``finetune-trainer validate --config`` as the validation Job does, in a subprocess."""
    import os

    work = Path(tmp_path)
    work.mkdir(parents=True, exist_ok=True)
    config_file = work / "config.json"
    config_file.write_text(json.dumps(config))
    termination = work / "termination-log"
    environment = {**os.environ, "FINETUNE_TERMINATION_LOG": str(termination), **(env or {})}
    done = subprocess.run(
        [str(BIN / "finetune-trainer"), "validate", "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    report_path = Path(config["reportUri"]) if "://" not in config["reportUri"] else None
    report = json.loads(report_path.read_text()) if report_path is not None and report_path.exists() else None
    message = termination.read_text() if termination.exists() else None
    return ValidateRun(done.returncode, done.stdout, done.stderr, report, message)
