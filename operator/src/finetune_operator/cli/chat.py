"""``finetune chat ENDPOINT [PROMPT]``: talk to a model an InferenceEndpoint serves, streaming the answer.

Where the endpoint is: ``--url`` (e.g. of ``kubectl port-forward svc/<endpoint>-server 8000``), else the local
address the project's local runner gives its Services, else ``status.url`` (reachable from inside the cluster).
The key: ``--api-key`` (or ``$FINETUNE_API_KEY``), else the endpoint's API key Secret when the user may read it.

With a PROMPT (or text on standard input) it answers once; on a terminal without one it is an interactive
session that keeps the conversation (``/reset`` forgets it, ``/exit`` or Ctrl-D ends it). The console's
playground uses the same ``chat_stream``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from finetune_operator.cli.base import (
    EXIT_FAILED,
    EXIT_FORBIDDEN,
    EXIT_NOT_FOUND,
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_UNREACHABLE,
    CliError,
    Subcommand,
    add_kube_arguments,
)
from finetune_operator.cli.kube import Kube

LOCAL_ADDRESS_ANNOTATION = "local.finetune.dev/address"


@dataclass(frozen=True)
class Target:
    base_url: str
    """``http://host:port/v1``."""
    api_key: str | None
    models: list[str]


def _base_url(text: str) -> str:
    url = text if "://" in text else f"http://{text}"
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def endpoint_target(kube: Kube, name: str, url: str | None = None, api_key: str | None = None) -> Target:
    """Where to send requests for the InferenceEndpoint ``name``, with which key; it must be Ready."""
    endpoint = kube.get("inferenceendpoints", name)
    status = endpoint.get("status") or {}
    if status.get("phase") != "Ready":
        raise CliError(f"inferenceendpoint {name} is {status.get('phase') or 'Pending'}, not Ready: {status.get('message') or 'no replica answers yet'}", EXIT_NOT_READY)
    if url is None and status.get("serviceName"):
        try:
            service = kube.service(status["serviceName"])
            local = (service.metadata.annotations or {}).get(LOCAL_ADDRESS_ANNOTATION)
            url = local or None
        except CliError:
            url = None
    url = url or status.get("url")
    if not url:
        raise CliError(f"inferenceendpoint {name} has no URL yet: pass --url", EXIT_NOT_READY)
    key = api_key or os.environ.get("FINETUNE_API_KEY") or None
    ref = (endpoint.get("spec") or {}).get("apiKeySecretRef")
    if key is None and ref:
        try:
            key = kube.secret_value(ref["name"], ref.get("key") or "apiKey")
        except CliError as e:
            if e.code == EXIT_FORBIDDEN:
                raise CliError(f"inferenceendpoint {name} needs an API key and you may not read its Secret {ref['name']}: pass --api-key", EXIT_FORBIDDEN) from None
            raise
    return Target(base_url=_base_url(url), api_key=key, models=list(status.get("models") or []))


def open_chat(target: Target, body: dict[str, Any], timeout: float = 120) -> Any:
    """POST /chat/completions; the open response (the caller reads and closes it). Errors are one line."""
    import http.client

    parts = urlsplit(target.base_url)
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if body.get("stream") else "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    try:
        conn.request("POST", parts.path.rstrip("/") + "/chat/completions", json.dumps(body), headers)
        response = conn.getresponse()
    except OSError as e:
        conn.close()
        raise CliError(f"cannot reach the endpoint at {target.base_url} ({type(e).__name__}: {e})", EXIT_UNREACHABLE) from None
    if response.status != 200:
        detail = response.read().decode(errors="replace")
        conn.close()
        try:
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = detail.strip()[:300]
        code = EXIT_FORBIDDEN if response.status in (401, 403) else (EXIT_NOT_FOUND if response.status == 404 else EXIT_FAILED)
        raise CliError(f"the endpoint answered {response.status}: {detail}", code)
    return response


def chat_stream(target: Target, model: str, messages: list[dict[str, str]], max_tokens: int = 256, temperature: float = 0.0) -> Iterator[str]:
    """The answer's text as it is generated (server-sent events of chat.completion.chunk)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature, "stream": True}
    response = open_chat(target, body)
    try:
        for raw in response:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            if chunk.get("error"):
                raise CliError(f"the endpoint failed: {chunk['error'].get('message', chunk['error'])}")
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text
    finally:
        response.close()


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint", help="the InferenceEndpoint")
    parser.add_argument("prompt", nargs="?", default=None, help="one prompt (default: standard input, or an interactive session on a terminal)")
    parser.add_argument("--model", default=None, help="a served model name (default: the endpoint's base model)")
    parser.add_argument("--system", default=None, help="a system prompt")
    parser.add_argument("--max-tokens", type=int, default=256, metavar="N", help="default 256")
    parser.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    parser.add_argument("--api-key", default=None, help="the endpoint's key (default: $FINETUNE_API_KEY, else its Secret)")
    parser.add_argument("--url", default=None, help="the endpoint's address, e.g. localhost:8000 of kubectl port-forward")
    add_kube_arguments(parser)


def _answer(target: Target, model: str, messages: list[dict[str, str]], args: argparse.Namespace) -> str:
    parts = []
    for text in chat_stream(target, model, messages, args.max_tokens, args.temperature):
        parts.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)


def chat(args: argparse.Namespace) -> int:
    with Kube.from_args(args) as kube:
        target = endpoint_target(kube, args.endpoint, args.url, args.api_key)
    model = args.model or (target.models[0] if target.models else args.endpoint)
    if target.models and model not in target.models:
        raise CliError(f"--model {model}: inferenceendpoint {args.endpoint} does not serve it (it serves: {', '.join(target.models)})", EXIT_NOT_FOUND)
    system = [{"role": "system", "content": args.system}] if args.system else []
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
    if prompt:
        _answer(target, model, [*system, {"role": "user", "content": prompt}], args)
        return EXIT_OK
    print(f"Chatting with {model} on {args.endpoint} ({target.base_url}). /reset forgets the conversation, /exit or Ctrl-D ends it.")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return EXIT_OK
        if line in ("/exit", "/quit"):
            return EXIT_OK
        if line == "/reset":
            history = []
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        history.append({"role": "assistant", "content": _answer(target, model, [*system, *history], args)})


COMMANDS = [Subcommand("chat", "", "chat with a model an InferenceEndpoint serves (streaming)", _arguments, chat)]
