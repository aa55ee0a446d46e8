"""An ASGI middleware that puts every route of the vLLM server behind the endpoint's API key.

vLLM's own ``--api-key`` guards only paths under ``/v1``; ``/tokenize``, ``/invocations``, ``/pooling``
and the like stay open. The vllm runtime therefore passes no ``--api-key`` and loads this module with
``--middleware finetune_vllm_auth.RequireApiKey`` instead (the operator mounts this file from the
endpoint's ConfigMap and puts its folder on ``PYTHONPATH``). Every request needs
``Authorization: Bearer <key>`` except the kubelet's probes (``/health``) and Prometheus (``/metrics``),
which carry counts only. The key is read from the file named by ``FINETUNE_API_KEY_FILE`` (a mounted
Secret), compared in constant time and never logged. Without that variable the API is open. The file is
looked at again at most once a second: a rotated Secret (the kubelet swaps the file) takes effect without
a restart, and an empty or unreadable new file keeps the key in force.

vLLM's adapter routes (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``) answer only requests from
the pod itself (loopback: the adapter sidecar), whatever key a client sends: clients do not manage the
server's adapters. With ``FINETUNE_ADAPTER_STATE_FILE`` set (adapters loaded at run time), ``GET /health``
answers vLLM's status with that file's content, the adapters' states in the builtin server's shape.

The module uses the standard library only: it runs inside the vLLM image.
"""

from __future__ import annotations

import hmac
import json
import os
import time

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/ping"})
ADMIN_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
API_KEY_FILE_ENV = "FINETUNE_API_KEY_FILE"
STATE_FILE_ENV = "FINETUNE_ADAPTER_STATE_FILE"
RECHECK_SECONDS = 1.0
DRAIN_LIMIT = 1 << 20
"""Bytes of a refused request's body read (and dropped) before the 401; a larger body's connection is closed."""


def _read_key() -> bytes | None:
    path = os.environ.get(API_KEY_FILE_ENV, "")
    if not path:
        return None
    with open(path, "rb") as handle:
        key = handle.read().strip()
    if not key:
        raise RuntimeError(f"{API_KEY_FILE_ENV} names an empty file")
    return key


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class RequireApiKey:
    """``app.add_middleware(RequireApiKey)``: answer 401 to a request without the right bearer token."""

    def __init__(self, app, api_key: bytes | None = None) -> None:
        self.app = app
        self.key_file = "" if api_key is not None else os.environ.get(API_KEY_FILE_ENV, "")
        self.api_key = api_key if api_key is not None else _read_key()
        self._identity = _identity(self.key_file) if self.key_file else None
        self._checked = time.monotonic()

    def _refresh(self) -> None:
        """Take a rotated key; keep the current one when the new file is empty or unreadable."""
        now = time.monotonic()
        if not self.key_file or now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        identity = _identity(self.key_file)
        if identity is None or identity == self._identity:
            return
        self._identity = identity
        try:
            with open(self.key_file, "rb") as handle:
                key = handle.read().strip()
        except OSError:
            return
        if key:
            self.api_key = key

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") not in ("http", "websocket") or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path in ADMIN_PATHS and (scope.get("client") or ("",))[0] not in LOOPBACK:
            await _refuse(scope, receive, send, 403, "Adapters are managed by the endpoint's spec, not through the API.", "forbidden")
            return
        if path == "/health" and scope.get("method") == "GET" and os.environ.get(STATE_FILE_ENV):
            await _health_with_adapters(self.app, scope, receive, send, os.environ[STATE_FILE_ENV])
            return
        if self.api_key is None or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        self._refresh()
        token = b""
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = rest.strip()
                break
        if token and hmac.compare_digest(token, self.api_key):
            await self.app(scope, receive, send)
            return
        await _unauthorized(scope, receive, send, provided=bool(token))


async def _drain(receive) -> None:
    """Read the request's body before answering: a server that closes the connection with body bytes still
    unread makes the kernel reset it, and the client sees "connection reset" instead of the 401."""
    seen = 0
    while seen <= DRAIN_LIMIT:
        message = await receive()
        if message.get("type") != "http.request":
            return
        seen += len(message.get("body") or b"")
        if not message.get("more_body"):
            return


async def _unauthorized(scope, receive, send, provided: bool) -> None:
    message = "Incorrect API key provided." if provided else "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
    await _refuse(scope, receive, send, 401, message, "invalid_api_key")


async def _refuse(scope, receive, send, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}).encode()
    if scope.get("type") == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await _drain(receive)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _health_with_adapters(app, scope, receive, send, state_file: str) -> None:
    """vLLM's own /health status, with the adapter sidecar's state as the body (what the operator reads)."""
    answer = {"status": 500}

    async def keep_status(message) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]

    await app(scope, receive, keep_status)
    try:
        with open(state_file, "rb") as handle:
            state = json.loads(handle.read() or b"{}")
    except (OSError, ValueError):
        state = {}
    adapters = state.get("adapters") if isinstance(state, dict) else None
    body = json.dumps({"status": "ok" if answer["status"] == 200 else "unavailable", "adapters": adapters or []}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": answer["status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})
