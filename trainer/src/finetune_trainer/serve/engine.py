"""Continuous batching: one thread runs the model, requests join and leave the batch between decode steps.

The engine owns the model. Requests (``RequestGroup``: one or more sequences, for ``n`` choices or several
prompts) wait in a bounded queue; between two decode steps the engine

1. runs the operations other threads asked for (installing or deleting a LoRA adapter: the model is
   only ever touched from this thread, so nothing changes under a running forward pass),
2. admits waiting sequences while the batch has room: their prompts are prefilled together (left
   padded), the first token sampled, and their KV cache merged into the running batch's cache,
3. runs one decode step for every running sequence and drops the finished and cancelled ones.

The batch keeps one ``DynamicCache`` with left padding: every row's cache has the same length, padded
on the left, and the attention mask says which positions are real. Position ids are per row, so a row
computes exactly what it would compute alone. Rows may use different LoRA adapters in one forward pass
(peft's ``adapter_names``, ``"__base__"`` for the base model).

Updates (new text, finish reason) go back through the group's ``on_update`` callback, called from the
engine thread; the HTTP layer hands them to its event loop.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""peft's name for 'no adapter' in a mixed-adapter batch."""


class QueueFullError(Exception):
    """The waiting queue holds ``max_queue`` requests already."""


class EngineStoppedError(Exception):
    """The engine is shutting down and takes no new requests."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one sequence. ``temperature == 0`` is greedy decoding."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclasses.dataclass
class SequenceUpdate:
    """What happened to one sequence in one engine step."""

    index: int
    """The sequence's index within its group (the choice index)."""
    text: str
    """Text generated since the previous update (stop strings already trimmed)."""
    completion_tokens: int
    """Tokens generated so far."""
    finish_reason: str | None = None
    """``stop`` (end of sequence token or a stop string), ``length`` (max_tokens), or None while running."""
    error: str | None = None
    error_status: int = 500
    """The HTTP status that fits the error: 503 while shutting down, 404 for an adapter gone meanwhile."""


@dataclasses.dataclass
class SequenceSpec:
    """One sequence to generate: a prompt (token ids) and how to sample."""

    prompt_ids: list[int]
    params: SamplingParams


class RequestGroup:
    """The sequences of one HTTP request. They share an adapter and a callback, and are cancelled together."""

    def __init__(
        self,
        sequences: Sequence[SequenceSpec],
        adapter: str | None,
        on_update: Callable[[list[SequenceUpdate]], None],
    ):
        self.sequences = list(sequences)
        self.adapter = adapter
        """Internal (peft) adapter name, or None for the base model."""
        self.on_update = on_update
        self.cancelled = False
        self.admitted = 0
        """How many of the sequences have entered the batch."""

    def cancel(self) -> None:
        """Stop generating: the sequences leave the batch (or the queue) at the next step."""
        self.cancelled = True


@dataclasses.dataclass
class _Row:
    """A running sequence: one row of the batch."""

    group: RequestGroup
    index: int
    spec: SequenceSpec
    generator: torch.Generator | None
    length: int = 0
    """Real (unpadded) tokens in this row's cache."""
    next_token: int = -1
    generated: list[int] = dataclasses.field(default_factory=list)
    emitted: int = 0
    """Characters of text already sent."""
    done: bool = False

    @property
    def adapter(self) -> str | None:
        return self.group.adapter


class GenerationEngine:
    """Runs a causal LM over a continuously changing batch of sequences, in its own thread."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_batch_size: int,
        max_queue: int,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        device: torch.device | str = "cpu",
        num_threads: int | None = None,
    ):
        self.base_model = model
        self.peft_model: Any | None = None
        """The base model wrapped by peft once a first adapter is installed (set by the adapter registry)."""
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "_tokenizer", None)
        plain = not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self._backend = backend if plain and hasattr(backend, "decode") else None
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.eos_token_ids = frozenset(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.device = torch.device(device)
        self.num_threads = num_threads

        self._cond = threading.Condition()
        self._waiting: collections.deque[RequestGroup] = collections.deque()
        self._ops: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._adapters_to_delete: set[str] = set()
        self._running: list[_Row] = []
        self._prefilling: list[_Row] = []
        self._cache: Any | None = None
        self._mask: torch.Tensor | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- public, thread-safe --------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; whatever still waits or runs is answered with an error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, group: RequestGroup) -> None:
        """Queue a request; raises ``QueueFullError`` when ``max_queue`` requests are waiting already."""
        with self._cond:
            if self._stopping:
                raise EngineStoppedError("the server is shutting down")
            if len(self._waiting) >= self.max_queue and any(g.cancelled for g in self._waiting):
                self._waiting = collections.deque(g for g in self._waiting if not g.cancelled)
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError()
            self._waiting.append(group)
            self._cond.notify_all()

    def call_between_steps(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` in the engine thread between two steps; the future holds its result or exception."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                future.set_exception(EngineStoppedError("the server is shutting down"))
                return future
            self._ops.append((fn, future))
            self._cond.notify_all()
        return future

    def release_adapter(self, internal_name: str) -> None:
        """Delete an adapter from the model as soon as no waiting or running sequence uses it."""
        with self._cond:
            self._adapters_to_delete.add(internal_name)
            self._cond.notify_all()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._running

    @property
    def model(self) -> torch.nn.Module:
        return self.peft_model if self.peft_model is not None else self.base_model

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        while True:
            with self._cond:
                while not (self._stopping or self._ops or self._waiting or self._running or self._adapters_to_delete):
                    self._cond.wait(timeout=1.0)
                if self._stopping:
                    break
                ops = list(self._ops)
                self._ops.clear()
            for fn, future in ops:
                try:
                    future.set_result(fn())
                except BaseException as e:  # delivered to the caller
                    future.set_exception(e)
            try:
                self._delete_unused_adapters()
                self._admit()
                if self._running:
                    self._decode_step()
            except Exception as e:  # a failed forward pass must not take the server down
                log.exception("generation step failed")
                self._fail_running(f"generation failed: {type(e).__name__}: {e}")
            finally:
                self._prefilling = []
        self._shutdown()

    def _shutdown(self) -> None:
        self._fail_running("the server is shutting down", 503)
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
            ops = list(self._ops)
            self._ops.clear()
        for group in waiting:
            self._notify(group, [SequenceUpdate(i, "", 0, None, "the server is shutting down", 503) for i in range(len(group.sequences))])
        for _, future in ops:
            future.set_exception(EngineStoppedError("the server is shutting down"))

    def _fail_running(self, message: str, status: int = 500) -> None:
        """Answer every running sequence (and those being prefilled) with an error and empty the batch."""
        failed: dict[int, tuple[RequestGroup, list[SequenceUpdate]]] = {}
        rows = self._running + [r for r in self._prefilling if not any(r is x for x in self._running)]
        for row in rows:
            failed.setdefault(id(row.group), (row.group, []))[1].append(
                SequenceUpdate(row.index, "", len(row.generated), None, message, status)
            )
        self._running, self._cache, self._mask = [], None, None
        for group, updates in failed.values():
            self._notify(group, updates)

    def _delete_unused_adapters(self) -> None:
        with self._cond:
            if not self._adapters_to_delete:
                return
            in_use = {g.adapter for g in self._waiting} | {r.adapter for r in self._running}
            deletable = self._adapters_to_delete - in_use
            self._adapters_to_delete -= deletable
        for name in deletable:
            if self.peft_model is not None and name in self.peft_model.peft_config:
                self.peft_model.delete_adapter(name)
                log.info("adapter %s removed from the model", name)

    # -- admission and prefill ------------------------------------------------------------------
    def _admit(self) -> None:
        free = self.max_batch_size - len(self._running)
        new_rows: list[_Row] = []
        orphans: list[RequestGroup] = []
        with self._cond:
            while free > 0 and self._waiting:
                group = self._waiting[0]
                if group.cancelled:
                    self._waiting.popleft()
                    continue
                if group.adapter is not None and group.admitted == 0 and not self._has_adapter(group.adapter):
                    self._waiting.popleft()  # unloaded between the request's lookup and its admission
                    orphans.append(group)
                    continue
                while free > 0 and group.admitted < len(group.sequences):
                    spec = group.sequences[group.admitted]
                    new_rows.append(_Row(group, group.admitted, spec, _generator(spec.params)))
                    group.admitted += 1
                    free -= 1
                if group.admitted == len(group.sequences):
                    self._waiting.popleft()
        for group in orphans:
            message = "the adapter was unloaded before the request started"
            self._notify(group, [SequenceUpdate(i, "", 0, None, message, 404) for i in range(len(group.sequences))])
        if new_rows:
            self._prefilling = new_rows
            self._prefill(new_rows)

    def _has_adapter(self, internal_name: str) -> bool:
        return self.peft_model is not None and internal_name in self.peft_model.peft_config

    def _prefill(self, rows: list[_Row]) -> None:
        from transformers import DynamicCache

        width = max(len(r.spec.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = row.spec.prompt_ids
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids) :] = 1
            row.length = len(ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(input_ids, mask, positions, cache, rows)
        self._merge(rows, cache, mask.to(self.device))
        self._accept(rows, self._sample(logits, rows))

    def _merge(self, rows: list[_Row], cache: Any, mask: torch.Tensor) -> None:
        """Append newly prefilled rows (and their cache) to the running batch, left-padding the shorter side."""
        if not self._running:
            self._running, self._cache, self._mask = list(rows), cache, mask
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            old_layer.keys = torch.cat([_pad_left(old_layer.keys, width - old_len, -2), _pad_left(new_layer.keys, width - new_len, -2)])
            old_layer.values = torch.cat([_pad_left(old_layer.values, width - old_len, -2), _pad_left(new_layer.values, width - new_len, -2)])
        self._mask = torch.cat([_pad_left(self._mask, width - old_len, 1), _pad_left(mask, width - new_len, 1)])
        self._running.extend(rows)

    # -- decoding -------------------------------------------------------------------------------
    def _decode_step(self) -> None:
        rows = self._running
        input_ids = torch.tensor([[r.next_token] for r in rows], dtype=torch.long)
        positions = torch.tensor([[r.length] for r in rows], dtype=torch.long)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        logits = self._forward(input_ids, self._mask, positions, self._cache, rows)
        for row in rows:
            row.length += 1
        self._accept(rows, self._sample(logits, rows))
        self.steps += 1

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, rows: list[_Row]) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self.peft_model is not None:
            kwargs["adapter_names"] = [r.adapter or BASE_ADAPTER for r in rows]
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1, :].float()

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        tokens = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            params = row.spec.params
            if params.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
                sorted_probs[outside] = 0.0
                pick = torch.multinomial(sorted_probs.cpu(), 1, generator=row.generator)
                tokens[i] = int(order[pick.to(order.device)])
            else:
                tokens[i] = int(torch.multinomial(probs.cpu(), 1, generator=row.generator))
        return tokens

    def _accept(self, rows: list[_Row], tokens: list[int]) -> None:
        """Record each row's new token, send its text, and drop finished and cancelled rows from the batch."""
        updates: dict[int, tuple[RequestGroup, list[SequenceUpdate]]] = {}
        for row, token in zip(rows, tokens, strict=True):
            if row.group.cancelled:
                row.done = True
                continue
            update = self._advance(row, token)
            if update is not None:
                updates.setdefault(id(row.group), (row.group, []))[1].append(update)
        self._drop_finished()
        for group, group_updates in updates.values():
            self._notify(group, group_updates)

    def _advance(self, row: _Row, token: int) -> SequenceUpdate | None:
        params = row.spec.params
        finish: str | None = None
        if token in self.eos_token_ids:
            finish = "stop"
        else:
            row.generated.append(token)
            row.next_token = token
            if len(row.generated) >= params.max_tokens:
                finish = "length"
        text = self._decode(row.generated)
        if params.stop:
            longest = max(len(s) for s in params.stop)
            search_from = max(0, row.emitted - longest)
            hits = [i for i in (text.find(s, search_from) for s in params.stop) if i >= 0]
            if hits:
                text, finish = text[: min(hits)], "stop"
        if finish is None:
            # An incomplete UTF-8 character at the end decodes to one U+FFFD that its next bytes may
            # still turn into the real character: hold it back. So is what could start a stop string.
            safe = len(text) - 1 if text.endswith("\ufffd") else len(text)
            if params.stop:
                safe -= max(len(s) for s in params.stop) - 1
            delta = text[row.emitted : safe] if safe > row.emitted else ""
        else:
            delta = text[row.emitted :]
            row.done = True
        row.emitted += len(delta)
        if not delta and finish is None:
            return SequenceUpdate(row.index, "", len(row.generated)) if len(row.generated) == 1 else None
        return SequenceUpdate(row.index, delta, len(row.generated), finish)

    def _decode(self, ids: list[int]) -> str:
        """The text of ``ids`` exactly as ``tokenizer.decode(ids, skip_special_tokens=True)`` gives it.

        Called for every row at every step, so it goes straight to the Rust tokenizer when the Python
        wrapper would add nothing (it only adds clean-up of spaces when that is configured).
        """
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self._running) if not r.done]
        if len(keep) == len(self._running):
            return
        if not keep:
            self._running, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row carry nothing: cut them.
        leading = int((mask.cumsum(dim=1) == 0).sum(dim=1).min())
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[..., leading:, :]
            layer.values = layer.values.index_select(0, index)[..., leading:, :]
        self._mask = mask[:, leading:]
        self._running = [self._running[i] for i in keep]

    def _notify(self, group: RequestGroup, updates: list[SequenceUpdate]) -> None:
        try:
            group.on_update(updates)
        except Exception:  # a broken callback must not stop the engine
            log.exception("delivering generation updates failed")


def _generator(params: SamplingParams) -> torch.Generator | None:
    if params.temperature <= 0:
        return None
    generator = torch.Generator()
    generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
    return generator


def _pad_left(tensor: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    if amount <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
