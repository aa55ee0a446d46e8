"""``finetune console``: the web console, served on 127.0.0.1 by the user's own process with the user's own
kubeconfig, so the cluster's RBAC decides what it shows and does; there is no new server-side auth surface.

Read-mostly: the two writes are a job's cancel (the same merge patch as ``finetune jobs cancel``) and the
playground's chat, which goes to the endpoint with its API key Secret read with the user's credentials.
Downloads are zips built from files each verified against the artifact's manifest.json.

Requests must name this console as their Host (no DNS rebinding), and a POST must carry the header
``X-Finetune-Console: 1`` that only the console's own script sends (no cross-site form posts).
Everything it serves is in this package: no CDN, so it works offline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import zipfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from finetune_operator.cli.base import EXIT_FORBIDDEN, EXIT_NOT_FOUND, EXIT_NOT_READY, EXIT_OK, EXIT_USAGE, CliError
from finetune_operator.cli.console import pages
from finetune_operator.cli.kube import Kube

STATIC = Path(__file__).parent / "static"
NAME = r"([a-z0-9][-a-z0-9.]*)"
STATUS_OF = {EXIT_NOT_FOUND: HTTPStatus.NOT_FOUND, EXIT_FORBIDDEN: HTTPStatus.FORBIDDEN, EXIT_NOT_READY: HTTPStatus.CONFLICT,
             EXIT_USAGE: HTTPStatus.BAD_REQUEST}  # fmt: skip
SECTIONS = [("jobs", "Jobs"), ("datasets", "Datasets"), ("evaluations", "Evaluations"), ("endpoints", "Endpoints")]


class Console:
    """What every request shares: the API clients and the object store (found once, on first need)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.kube = Kube.from_args(args)
        self._store: Any = None
        self._store_problem: str | None = None
        self._lock = threading.Lock()

    def store(self) -> tuple[Any, str | None]:
        """(Store or None, why not)."""
        from finetune_operator.cli.store import Store

        with self._lock:
            if self._store is None:
                try:
                    self._store = Store.from_args(self.args, self.kube)
                    self._store_problem = None
                except CliError as error:
                    return None, str(error)  # tried again on the next request: a job may start a pod meanwhile
            return self._store, self._store_problem


def layout(console: Console, page: pages.Page, path: str) -> str:
    nav = "".join(f'<a class="{"on" if page.section == key else ""}" href="/{key}">{label}</a>' for key, label in SECTIONS)
    context = console.kube.context or "current context"
    live = f' data-refresh="{pages.e(path)}"' if page.refresh else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{pages.e(page.title)} · finetune console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/console.css">
<script src="/static/console.js" defer></script></head>
<body><header><a class="brand" href="/jobs">finetune</a><nav>{nav}</nav>
<span class="where">namespace <strong id="namespace">{pages.e(console.kube.namespace)}</strong> · {pages.e(context)}</span></header>
<main><div id="live"{live}>{page.live}</div>{page.static}</main></body></html>"""


class Handler(BaseHTTPRequestHandler):
    console: Console
    server_version = "finetune-console"
    # HTTP/1.0: one request per connection, so a browser never reuses a connection the console has let go
    allowed_hosts: set[str] = set()

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal is the user's
        pass

    # -- plumbing ----------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, page: pages.Page, status: int = 200, fragment: bool = False) -> None:
        path = urlsplit(self.path).path
        body = page.live if fragment else layout(self.console, page, path)
        self._send(status, body.encode(), "text/html; charset=utf-8", {"X-Refresh": "1" if page.refresh else "0"})

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _host_ok(self) -> bool:
        return self.headers.get("Host", "") in self.allowed_hosts

    # -- GET ---------------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if not self._host_ok():
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host", "text/plain")
            return
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        fragment = query.get("fragment") == ["1"]
        try:
            if path in ("/", ""):
                self._send(HTTPStatus.FOUND, b"", "text/plain", {"Location": "/jobs"})
            elif path.startswith("/static/"):
                self._static(path[len("/static/") :])
            elif m := re.fullmatch(rf"/jobs/{NAME}/download", path):
                self._download(m.group(1), query)
            elif m := re.fullmatch(rf"/jobs/{NAME}/curve", path):
                self._curve(m.group(1))
            else:
                self._html(self._page(path, query), fragment=fragment)
        except CliError as error:
            self._html(pages.error_page(str(error)), STATUS_OF.get(error.code, HTTPStatus.BAD_GATEWAY), fragment)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_HEAD = do_GET

    def _page(self, path: str, query: dict[str, list[str]]) -> pages.Page:
        c = self.console
        if path == "/jobs":
            return pages.jobs_list(c)
        if path == "/datasets":
            return pages.datasets_list(c)
        if path == "/evaluations":
            return pages.evaluations_list(c)
        if path == "/endpoints":
            return pages.endpoints_list(c)
        if m := re.fullmatch(rf"/jobs/{NAME}", path):
            return pages.job_page(c, m.group(1))
        if m := re.fullmatch(rf"/datasets/{NAME}", path):
            return pages.dataset_page(c, m.group(1))
        if m := re.fullmatch(rf"/evaluations/{NAME}", path):
            samples = query.get("samples", ["20"])[0]
            if not samples.isdigit() or not 1 <= int(samples) <= 1000:
                raise CliError(f"samples={samples}: must be a number from 1 to 1000", EXIT_USAGE)
            return pages.evaluation_page(c, m.group(1), int(samples))
        if m := re.fullmatch(rf"/endpoints/{NAME}", path):
            return pages.endpoint_page(c, m.group(1))
        raise CliError(f"no page at {path}", EXIT_NOT_FOUND)

    def _static(self, name: str) -> None:
        types = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
        file = STATIC / name
        if "/" in name or file.suffix not in types or not file.is_file():
            raise CliError(f"no file {name}", EXIT_NOT_FOUND)
        self._send(200, file.read_bytes(), types[file.suffix])

    def _curve(self, name: str) -> None:
        from finetune_operator.cli.reads import learning_curve

        job = self.console.kube.get("finetunejobs", name)
        store, problem = self.console.store()
        if store is None:
            raise CliError(problem or "no object store", EXIT_NOT_READY)
        self._json([m.model_dump(mode="json", by_alias=True, exclude_none=True) for m in learning_curve(store, job)])

    def _download(self, name: str, query: dict[str, list[str]]) -> None:
        """A zip of the job's model (or ``?checkpoint=STEP``, ``?merged=1``), every file verified first."""
        from finetune_operator.cli.reads import artifact_to_download

        checkpoint = query.get("checkpoint", [None])[0]
        if checkpoint is not None and not checkpoint.isdigit():
            raise CliError(f"checkpoint={checkpoint}: must be a step number", EXIT_USAGE)
        job = self.console.kube.get("finetunejobs", name)
        artifact = artifact_to_download(job, int(checkpoint) if checkpoint else None, query.get("merged") == ["1"])
        store, problem = self.console.store()
        if store is None:
            raise CliError(problem or "no object store", EXIT_NOT_READY)
        folder = f"{name}-step-{artifact.step}" if artifact.label == "checkpoint" else name
        with tempfile.TemporaryDirectory(prefix="finetune-console-") as tmp:
            store.download_artifact(artifact.uri, Path(tmp) / folder, progress=False)
            archive = Path(tmp) / "download.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for file in sorted((Path(tmp) / folder).rglob("*")):
                    if file.is_file():
                        zf.write(file, file.relative_to(tmp).as_posix())
            self._send(200, archive.read_bytes(), "application/zip", {"Content-Disposition": f'attachment; filename="{folder}.zip"'})

    # -- POST --------------------------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok() or self.headers.get("X-Finetune-Console") != "1":
            self.close_connection = True  # its body is left unread
            self._json({"error": "this console accepts writes only from its own pages"}, HTTPStatus.FORBIDDEN)
            return
        path = urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > 1 << 20:
                raise CliError("request body larger than 1 MiB", EXIT_USAGE)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if m := re.fullmatch(rf"/jobs/{NAME}/cancel", path):
                self._cancel(m.group(1))
            elif m := re.fullmatch(rf"/endpoints/{NAME}/chat", path):
                self._chat(m.group(1), body)
            else:
                raise CliError(f"nothing to post to at {path}", EXIT_NOT_FOUND)
        except CliError as error:
            self._json({"error": str(error)}, STATUS_OF.get(error.code, HTTPStatus.BAD_GATEWAY))
        except ValueError:
            self._json({"error": "the body is not JSON"}, HTTPStatus.BAD_REQUEST)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _cancel(self, name: str) -> None:
        kube = self.console.kube
        job = kube.get("finetunejobs", name)
        phase = (job.get("status") or {}).get("phase") or "Pending"
        if phase in pages.TERMINAL:
            raise CliError(f"finetunejob {name} has already ended ({phase})", EXIT_NOT_READY)
        kube.patch_spec("finetunejobs", name, {"cancel": True})
        self._json({"message": f"finetunejob {name} cancelled; its checkpoints are kept"})

    def _chat(self, name: str, body: dict[str, Any]) -> None:
        """The answer as plain text, once the endpoint has streamed all of it (a buffered body: a chunked one
        was sometimes reported aborted by the browser after it had been read whole)."""
        from finetune_operator.cli.chat import chat_stream, endpoint_target

        prompt = str(body.get("prompt") or "").strip()
        if not prompt:
            raise CliError("prompt: write a message", EXIT_USAGE)
        target = endpoint_target(self.console.kube, name)
        model = str(body.get("model") or (target.models[0] if target.models else name))
        if target.models and model not in target.models:
            raise CliError(f"model {model}: not served by {name} (it serves: {', '.join(target.models)})", EXIT_NOT_FOUND)
        try:
            max_tokens = max(1, min(4096, int(body.get("max_tokens") or 64)))
            temperature = max(0.0, min(2.0, float(body.get("temperature") or 0)))
        except (TypeError, ValueError):
            raise CliError("max_tokens and temperature must be numbers", EXIT_USAGE) from None
        messages = ([{"role": "system", "content": str(body["system"])}] if body.get("system") else []) + [{"role": "user", "content": prompt}]
        answer = "".join(chat_stream(target, model, messages, max_tokens, temperature))
        self._send(200, answer.encode(), "text/plain; charset=utf-8")


def serve(args: argparse.Namespace) -> tuple[ThreadingHTTPServer, str]:
    """The console's HTTP server on 127.0.0.1 (not yet serving) and its URL."""
    console = Console(args)
    handler = type("ConsoleHandler", (Handler,), {"console": console})
    try:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    except OSError as error:
        raise CliError(f"--port {args.port}: cannot listen on 127.0.0.1 ({error.strerror})", EXIT_USAGE) from None
    server.daemon_threads = True
    port = server.server_address[1]
    handler.allowed_hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
    return server, f"http://127.0.0.1:{port}/"


def run_console(args: argparse.Namespace) -> int:
    server, url = serve(args)
    console = server.RequestHandlerClass.console  # type: ignore[attr-defined]
    print(f"finetune console: {url}  (namespace {console.kube.namespace}; Ctrl-C stops it)", flush=True)
    graphical = sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if not args.no_browser and graphical:  # never a text browser that would take over this terminal
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        server.server_close()
        console.kube.close()
    return EXIT_OK
