"""A small OpenAI-compatible HTTP server for tests: it answers the way a test tells it to.

It stands in for endpoints outside this project (a hosted judge, a flaky model server) so a test can
make them answer garbage, fail with HTTP errors, or record that nobody called them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

Reply = tuple[int, str]
"""(HTTP status, text of the first choice) for one request; status other than 200 answers an error."""


class OpenAIStub:
    def __init__(self, reply: Callable[[dict[str, Any]], Reply]):
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"path": request.path, "auth": request.headers.get("Authorization"), **body})
        status, text = self.reply(body)
        if status != 200:
            return web.json_response({"error": {"message": text, "type": "server_error"}}, status=status)
        if request.path.endswith("/chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": body.get("model"), "choices": [choice]})
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
        return web.json_response({"id": "c", "object": "text_completion", "created": 0, "model": body.get("model"), "choices": [choice]})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def closed_port_url() -> str:
    """A URL on loopback where nothing listens (the port was bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
