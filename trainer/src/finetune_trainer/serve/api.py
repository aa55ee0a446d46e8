"""HTTP routes: OpenAI's API (models, chat completions, completions), vLLM's adapter admin API, health and metrics.

| route | auth | what |
|---|---|---|
| ``GET /v1/models`` | key | the base model and every loaded adapter |
| ``POST /v1/chat/completions`` | key | chat with the model's own chat template; ``stream`` gives server-sent events |
| ``POST /v1/completions`` | key | plain completion of one or more prompts |
| ``POST /v1/load_lora_adapter`` | key | ``{lora_name, lora_path}``: load an adapter now (vLLM's admin API) |
| ``POST /v1/unload_lora_adapter`` | key | ``{lora_name}``: stop serving an adapter |
| ``GET /v1/adapters`` | key | every adapter with its state (loading, loaded, failed) and the reason of a failure |
| ``GET /healthz`` | none | liveness: the process answers |
| ``GET /readyz`` | none | readiness: 200 once the base model (and the config file's adapters) are loaded, 503 before and while draining |
| ``GET /health`` | none | readiness plus details (adapters, queue, batch) |
| ``GET /metrics`` | none | Prometheus metrics |

The API key is compared in constant time and never logged. Errors are OpenAI's error object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from finetune_trainer.serve import errors
from finetune_trainer.serve.adapters import AdapterError, AdapterRegistry
from finetune_trainer.serve.engine import (
    EngineStoppedError,
    GenerationEngine,
    QueueFullError,
    RequestGroup,
    SamplingParams,
    SequenceSpec,
    SequenceUpdate,
)
from finetune_trainer.serve.metrics import CONTENT_TYPE, UNKNOWN_MODEL, ServerMetrics
from finetune_trainer.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadAdapterRequest,
    UnloadAdapterRequest,
    parse_body,
)

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/healthz", "/readyz", "/metrics"})
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
OWNER = "finetune"
DISCONNECT_CHECK_SECONDS = 1.0
MAX_JSON_DEPTH = 64
"""Arrays and objects a request body may nest: an OpenAI request needs a handful (a tool's JSON schema a few
more); a body of ``[[[[...`` within maxBodyBytes would otherwise exhaust the parser's recursion (a 500)."""


@dataclasses.dataclass
class ServerState:
    """Everything the routes need. ``engine`` and ``adapters`` are None until the base model is loaded."""

    base_model_uri: str
    served_model_name: str
    api_key: str | None
    max_model_len: int
    max_body_bytes: int
    metrics: ServerMetrics
    engine: GenerationEngine | None = None
    adapters: AdapterRegistry | None = None
    tokenizer: Any = None
    """The request side's own tokenizer (the engine decodes with another one: tokenizers are not shared across threads)."""
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    config_error: str | None = None
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))


def build_app(state: ServerState) -> web.Application:
    app = web.Application(middlewares=[_errors_middleware, _auth_middleware], client_max_size=state.max_body_bytes)
    app["state"] = state
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/load_lora_adapter", load_lora_adapter)
    app.router.add_post("/v1/unload_lora_adapter", unload_lora_adapter)
    app.router.add_get("/v1/adapters", list_adapters)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


def _state(request: web.Request) -> ServerState:
    return request.app["state"]


def error_response(error: errors.APIError) -> web.Response:
    return web.json_response(error.body(), status=error.status)


# ---------------------------------------------------------------------------------------------
# Middlewares


@web.middleware
async def _errors_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every error leaves as OpenAI's error object; completion requests are counted and timed."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except errors.APIError as e:
        status = e.status
        return error_response(e)
    except web.HTTPRequestEntityTooLarge:
        status = 413
        return error_response(errors.body_too_large(_state(request).max_body_bytes))
    except web.HTTPException as e:
        status = e.status
        if e.status < 400:
            raise
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status)
        return error_response(errors.APIError(e.status, f"{e.reason}: {request.method} {request.path}", kind, None, code))
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499  # the client went away
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(errors.APIError(500, "The server had an error while processing your request.", "server_error"))
    finally:
        if request.path in GENERATION_PATHS:
            model = request.get("model_label", UNKNOWN_MODEL)
            metrics = _state(request).metrics
            metrics.requests.labels(model=model, status=str(status)).inc()
            metrics.request_duration.labels(model=model).observe(time.monotonic() - started)


@web.middleware
async def _auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    state = _state(request)
    if state.api_key is None or request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.unauthorized(provided=False)
    if not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
        raise errors.unauthorized(provided=True)
    return await handler(request)


async def read_json(request: web.Request) -> Any:
    limit = _state(request).max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise errors.body_too_large(limit)
    body = await request.read()
    if not body:
        raise errors.bad_request("The request body is empty; send a JSON object.")
    try:
        value = json.loads(body)
    except RecursionError:  # the parser's own recursion ran out: far deeper than MAX_JSON_DEPTH
        raise errors.body_too_deep(MAX_JSON_DEPTH) from None
    except UnicodeDecodeError:
        raise errors.body_not_json("it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise errors.body_not_json(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise errors.body_not_json(str(e)[:200]) from None
    if nested_deeper_than(value, MAX_JSON_DEPTH):
        raise errors.body_too_deep(MAX_JSON_DEPTH)
    return value


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` holds arrays and objects more than ``limit`` levels deep (the body itself is level 1);
    walked without recursion, so no body can exhaust the stack of what later validates or copies it."""
    pending = [(value, 1)] if isinstance(value, (dict, list)) else []
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


# ---------------------------------------------------------------------------------------------
# Health, metrics


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    state = _state(request)
    if state.ready and not state.draining:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": _not_ready_reason(state)}, status=503)


def _not_ready_reason(state: ServerState) -> str:
    if state.draining:
        return "draining"
    if state.load_error:
        return f"failed: {state.load_error}"
    return "loading"


async def health(request: web.Request) -> web.Response:
    state = _state(request)
    ready = state.ready and not state.draining
    details = {
        "status": "ready" if ready else _not_ready_reason(state),
        "model": state.served_model_name,
        "adapters": state.adapters.describe() if state.adapters else [],
        "queue_depth": state.engine.queue_depth if state.engine else 0,
        "running": state.engine.running_count if state.engine else 0,
        "config_error": state.config_error,
    }
    return web.json_response(details, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = _state(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# ---------------------------------------------------------------------------------------------
# Models and adapters


def _model_card(state: ServerState, name: str, parent: str | None) -> dict:
    card = {"id": name, "object": "model", "created": state.created, "owned_by": OWNER, "root": name, "parent": parent}
    if parent is None:
        card["root"] = state.base_model_uri
        card["max_model_len"] = state.max_model_len
    return card


def _require_ready(state: ServerState) -> tuple[GenerationEngine, AdapterRegistry]:
    if state.engine is None or state.adapters is None:
        raise errors.unavailable(f"The model is not loaded yet ({_not_ready_reason(state)}). Retry when /readyz answers 200.")
    return state.engine, state.adapters


async def list_models(request: web.Request) -> web.Response:
    state = _state(request)
    data = [_model_card(state, state.served_model_name, None)]
    if state.adapters is not None:
        for name in sorted(state.adapters.servable_names()):
            card = _model_card(state, name, state.served_model_name)
            adapter = state.adapters.resolve(name)
            card["root"] = adapter.uri if adapter else name
            data.append(card)
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state = _state(request)
    name = request.match_info["model"]
    if name == state.served_model_name:
        return web.json_response(_model_card(state, name, None))
    if state.adapters is not None and name in state.adapters.servable_names():
        return web.json_response(_model_card(state, name, state.served_model_name))
    raise errors.model_not_found(name)


async def list_adapters(request: web.Request) -> web.Response:
    state = _state(request)
    adapters = state.adapters.describe() if state.adapters else []
    return web.json_response({"object": "list", "data": adapters, "config_error": state.config_error})


async def load_lora_adapter(request: web.Request) -> web.Response:
    state = _state(request)
    _, registry = _require_ready(state)
    body = parse_body(LoadAdapterRequest, await read_json(request))
    try:
        future = registry.load(body.lora_name, body.lora_path, "api", replace=False)
        loaded = await asyncio.wrap_future(future)
    except AdapterError as e:
        raise errors.APIError(e.status, str(e), "invalid_request_error" if e.status < 500 else "server_error", "lora_path", e.code) from None
    return web.json_response(
        {
            "object": "lora_adapter",
            "name": loaded.name,
            "status": loaded.status,
            "load_seconds": round(loaded.load_seconds or 0.0, 3),
            "message": f"Success: LoRA adapter '{loaded.name}' added successfully.",
        }
    )


async def unload_lora_adapter(request: web.Request) -> web.Response:
    state = _state(request)
    _, registry = _require_ready(state)
    body = parse_body(UnloadAdapterRequest, await read_json(request))
    try:
        registry.unload(body.lora_name)
    except AdapterError as e:
        raise errors.APIError(e.status, str(e), "invalid_request_error", "lora_name", e.code) from None
    return web.json_response(
        {"object": "lora_adapter", "name": body.lora_name, "status": "unloaded", "message": f"Success: LoRA adapter '{body.lora_name}' removed successfully."}
    )


# ---------------------------------------------------------------------------------------------
# Completions


@dataclasses.dataclass
class _Choice:
    text: list[str] = dataclasses.field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None


class _Generation:
    """One request in flight: its group in the engine and the updates coming back from the engine thread."""

    def __init__(self, engine: GenerationEngine, specs: list[SequenceSpec], adapter: str | None, model_name: str):
        self.model_name = model_name
        self.loop = asyncio.get_running_loop()
        self.updates: asyncio.Queue[list[SequenceUpdate]] = asyncio.Queue()
        self.group = RequestGroup(specs, adapter, self._deliver)
        self.engine = engine
        self.choices = [_Choice() for _ in specs]
        self.unfinished = len(specs)

    def _deliver(self, updates: list[SequenceUpdate]) -> None:  # engine thread
        self.loop.call_soon_threadsafe(self.updates.put_nowait, updates)

    def submit(self) -> None:
        try:
            self.engine.submit(self.group)
        except QueueFullError:
            raise errors.queue_full(self.engine.max_queue) from None
        except EngineStoppedError:
            raise errors.unavailable("The server is shutting down; retry on another replica.") from None

    async def next_updates(self, request: web.Request) -> list[SequenceUpdate]:
        """The next batch of updates; cancels the generation if the client has gone away meanwhile."""
        while True:
            try:
                updates = await asyncio.wait_for(self.updates.get(), DISCONNECT_CHECK_SECONDS)
                while not self.updates.empty():  # the engine ran ahead: take everything it has sent
                    updates.extend(self.updates.get_nowait())
                return updates
            except TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    self.group.cancel()
                    raise ConnectionResetError("client disconnected") from None

    def record(self, update: SequenceUpdate) -> None:
        if update.error is not None:
            if update.error_status == 404:
                raise errors.model_not_found(self.model_name, update.error)
            raise errors.APIError(update.error_status, update.error, "server_error")
        choice = self.choices[update.index]
        choice.text.append(update.text)
        choice.completion_tokens = update.completion_tokens
        if update.finish_reason is not None:
            choice.finish_reason = update.finish_reason
            self.unfinished -= 1

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


def _sampling(body: ChatCompletionRequest | CompletionRequest, max_tokens: int, index: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=None if body.seed is None else body.seed + index,
        stop=tuple(body.stop),
    )


def _resolve_model(state: ServerState, request: web.Request, name: str) -> str | None:
    """The internal adapter name for a served model name (None for the base model); 404 when unknown."""
    if name == state.served_model_name:
        request["model_label"] = name
        return None
    adapter = state.adapters.resolve(name)
    if adapter is None:
        raise errors.model_not_found(name)
    request["model_label"] = name
    if adapter.internal is None:
        if adapter.status == "failed":
            raise errors.model_not_found(name, f"The adapter failed to load: {adapter.error}")
        raise errors.model_not_found(name, "The adapter is still loading; retry shortly.")
    return adapter.internal


def _check_length(state: ServerState, prompt_ids: list[int], max_tokens: int | None, param: str) -> int:
    if not prompt_ids:
        raise errors.bad_request("The prompt is empty: it must hold at least one token.", param)
    room = state.max_model_len - len(prompt_ids)
    if max_tokens is None:
        if room < 1:
            raise errors.bad_request(
                f"This model's maximum context length is {state.max_model_len} tokens. However, your messages resulted in "
                f"{len(prompt_ids)} tokens. Please reduce the length of the messages.",
                param,
                "context_length_exceeded",
            )
        return room
    if max_tokens > room:
        raise errors.bad_request(
            f"This model's maximum context length is {state.max_model_len} tokens. However, you requested "
            f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.",
            param,
            "context_length_exceeded",
        )
    return max_tokens


def _chat_prompt(state: ServerState, body: ChatCompletionRequest) -> list[int]:
    tokenizer = state.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise errors.bad_request("This model has no chat template; use /v1/completions.", "messages")
    messages = [{"role": m.role, "content": m.content} for m in body.messages]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # the template itself may refuse a conversation (raise_exception in Jinja)
        raise errors.bad_request(f"The chat template rejected the messages: {e}", "messages") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _completion_prompts(state: ServerState, body: CompletionRequest) -> list[list[int]]:
    vocab = len(state.tokenizer)
    prompts = []
    for prompt in body.prompt:
        if isinstance(prompt, str):
            prompts.append(list(state.tokenizer(prompt)["input_ids"]))
        else:
            if any(t < 0 or t >= vocab for t in prompt):
                raise errors.bad_request(f"Token ids in the prompt must be between 0 and {vocab - 1}.", "prompt")
            prompts.append(list(prompt))
    return prompts


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    engine, _ = _require_ready(state)
    received = time.monotonic()
    body = parse_body(ChatCompletionRequest, await read_json(request))
    _refuse_unsupported(body)
    adapter = _resolve_model(state, request, body.model)
    prompt_ids = _chat_prompt(state, body)
    max_tokens = _check_length(state, prompt_ids, body.token_limit, "messages")
    specs = [SequenceSpec(prompt_ids, _sampling(body, max_tokens, i)) for i in range(body.n)]
    return await _run(request, state, engine, body, specs, adapter, [len(prompt_ids)], received, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    engine, _ = _require_ready(state)
    received = time.monotonic()
    body = parse_body(CompletionRequest, await read_json(request))
    _refuse_unsupported(body)
    adapter = _resolve_model(state, request, body.model)
    prompts = _completion_prompts(state, body)
    specs = []
    for prompt_ids in prompts:
        max_tokens = _check_length(state, prompt_ids, body.token_limit, "prompt")
        specs += [SequenceSpec(prompt_ids, _sampling(body, max_tokens, i)) for i in range(body.n)]
    return await _run(request, state, engine, body, specs, adapter, [len(p) for p in prompts], received, chat=False)


def _refuse_unsupported(body: ChatCompletionRequest | CompletionRequest) -> None:
    for field, why in body.unsupported():
        raise errors.bad_request(why, field, "unsupported_parameter")


async def _run(
    request: web.Request,
    state: ServerState,
    engine: GenerationEngine,
    body: ChatCompletionRequest | CompletionRequest,
    specs: list[SequenceSpec],
    adapter: str | None,
    prompt_lengths: list[int],
    received: float,
    chat: bool,
) -> web.StreamResponse:
    generation = _Generation(engine, specs, adapter, body.model)
    generation.submit()
    model = request["model_label"]
    prompt_tokens = sum(prompt_lengths)
    state.metrics.prompt_tokens.labels(model=model).inc(prompt_tokens)
    meta = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": body.model,
    }
    first_token_seen = False
    try:
        if body.stream:
            response = await _stream(request, generation, body, meta, prompt_tokens, chat, received)
        else:
            while generation.unfinished:
                for update in await generation.next_updates(request):
                    if not first_token_seen and update.completion_tokens:
                        first_token_seen = True
                        state.metrics.time_to_first_token.labels(model=model).observe(time.monotonic() - received)
                    generation.record(update)
            response = web.json_response(_final_body(generation, meta, prompt_tokens, chat))
        return response
    finally:
        generation.group.cancel()
        state.metrics.generation_tokens.labels(model=model).inc(generation.completion_tokens)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _final_body(generation: _Generation, meta: dict, prompt_tokens: int, chat: bool) -> dict:
    choices = []
    for index, choice in enumerate(generation.choices):
        text = "".join(choice.text)
        if chat:
            choices.append(
                {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": choice.finish_reason}
            )
        else:
            choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": choice.finish_reason})
    return {
        "id": meta["id"],
        "object": "chat.completion" if chat else "text_completion",
        "created": meta["created"],
        "model": meta["model"],
        "system_fingerprint": None,
        "choices": choices,
        "usage": _usage(prompt_tokens, generation.completion_tokens),
    }


async def _stream(
    request: web.Request,
    generation: _Generation,
    body: ChatCompletionRequest | CompletionRequest,
    meta: dict,
    prompt_tokens: int,
    chat: bool,
    received: float,
) -> web.StreamResponse:
    state = _state(request)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    obj = "chat.completion.chunk" if chat else "text_completion"
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await response.prepare(request)

    def chunk(choices: list[dict]) -> bytes:
        data = {"id": meta["id"], "object": obj, "created": meta["created"], "model": meta["model"], "system_fingerprint": None, "choices": choices}
        if include_usage:
            data["usage"] = None
        return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"

    def choice(index: int, text: str | None, finish_reason: str | None, role: bool = False) -> dict:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    if chat:
        await response.write(b"".join(chunk([choice(i, "", None, role=True)]) for i in range(len(generation.choices))))
    first_token_seen = False
    try:
        while generation.unfinished:
            # When the engine ran ahead of this writer, the text of several steps goes out as one chunk per choice.
            pending: dict[int, list[str]] = {}
            out = []
            for update in await generation.next_updates(request):
                if not first_token_seen and update.completion_tokens:
                    first_token_seen = True
                    state.metrics.time_to_first_token.labels(model=request["model_label"]).observe(time.monotonic() - received)
                generation.record(update)
                if update.text:
                    pending.setdefault(update.index, []).append(update.text)
                if update.finish_reason is not None:
                    if update.index in pending:
                        out.append(chunk([choice(update.index, "".join(pending.pop(update.index)), None)]))
                    out.append(chunk([choice(update.index, None if chat else "", update.finish_reason)]))
            out += [chunk([choice(index, "".join(texts), None)]) for index, texts in pending.items()]
            if out:
                await response.write(b"".join(out))
    except errors.APIError as e:
        await response.write(b"data: " + json.dumps(e.body()).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response
    if include_usage:
        usage = {"id": meta["id"], "object": obj, "created": meta["created"], "model": meta["model"], "system_fingerprint": None, "choices": []}
        usage["usage"] = _usage(prompt_tokens, generation.completion_tokens)
        await response.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
