"""What a running trainer tells the world: ``progress.json``, ``events.jsonl``, ``metrics.jsonl``, Prometheus
metrics, a tqdm bar.

Only the process of rank 0 reports (``ProgressReporter(enabled=False)`` on the others is a no-op). The
snapshot is rewritten at every phase change, at the end, and by a background thread at least every
``progressIntervalSeconds`` while anything changed, so a slow step does not leave the operator blind.
``metrics.jsonl`` (the learning curve: one line per optimizer step, with the validation loss on the steps
after which validation ran) is rewritten with it, so the console draws a running job's curve from the store.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from finetune_trainer.contract import (
    EVENTS_FILE,
    METRICS_FILE,
    PROGRESS_FILE,
    CheckpointRecord,
    Phase,
    Progress,
    StepMetrics,
    TrainerEvent,
    join_uri,
    utcnow,
)
from finetune_trainer.storage import ObjectStore

log = logging.getLogger("finetune_trainer")


class TrainerMetrics:
    """Prometheus gauges and counters on their own registry, served on ``port`` (0 or None: not served)."""

    def __init__(self, port: int | None):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.step = Gauge("finetune_trainer_step", "Optimizer steps done", registry=self.registry)
        self.total_steps = Gauge("finetune_trainer_total_steps", "Optimizer steps planned", registry=self.registry)
        self.train_loss = Gauge("finetune_trainer_train_loss", "Training loss of the last optimizer step", registry=self.registry)
        self.eval_loss = Gauge("finetune_trainer_eval_loss", "Latest validation loss", registry=self.registry)
        self.tokens_per_second = Gauge(
            "finetune_trainer_tokens_per_second", "Trained (non-padding) tokens per second", registry=self.registry
        )
        self.trained_tokens = Counter(
            "finetune_trainer_trained_tokens", "Trained (non-padding) tokens", registry=self.registry
        )
        self.server = None
        self.port: int | None = None
        if port:
            from prometheus_client import start_http_server

            try:
                self.server, _thread = start_http_server(port, registry=self.registry)
            except OSError as e:  # metrics are worth a warning, not a failed job
                log.warning("cannot serve metrics on port %d: %s", port, e.strerror)
            else:
                self.port = self.server.server_port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


class ProgressReporter:
    """Keeps the ``Progress`` snapshot, writes it and the events to the job's output prefix."""

    def __init__(
        self,
        store: ObjectStore,
        output_uri: str,
        interval_seconds: float = 10.0,
        metrics_port: int | None = None,
        enabled: bool = True,
        total_epochs: int | None = None,
    ):
        self.store = store
        self.enabled = enabled
        self.progress_uri = join_uri(output_uri, PROGRESS_FILE)
        self.events_uri = join_uri(output_uri, EVENTS_FILE)
        self.metrics_uri = join_uri(output_uri, METRICS_FILE)
        self.history: list[StepMetrics] = []
        self._history_dirty = False
        self.interval = interval_seconds
        self.progress = Progress(total_epochs=total_epochs)
        self.metrics = TrainerMetrics(metrics_port) if enabled and metrics_port else None
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._last_error: str | None = None
        self._counted_tokens = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._flush_periodically, name="progress-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.metrics is not None:
            self.metrics.close()

    def resume_from(self, previous: dict | None) -> None:
        """Carry the checkpoint list of an interrupted run of the same job into this one's snapshot."""
        if previous:
            old = Progress.model_validate(previous)
            self.progress.checkpoints = old.checkpoints
            self.history = self._read_history()

    def _read_history(self) -> list[StepMetrics]:
        """The learning curve an interrupted run left (lines that do not parse are dropped)."""
        try:
            body = self.store.read_bytes(self.metrics_uri) if self.store.exists(self.metrics_uri) else b""
        except Exception as e:  # a lost curve is worth a warning, not a failed job
            log.warning("could not read %s: %s", self.metrics_uri, e)
            return []
        history = []
        for line in body.decode(errors="replace").splitlines():
            try:
                history.append(StepMetrics.model_validate_json(line))
            except ValueError:
                continue
        return history

    def keep_checkpoints(self, complete: list[tuple[int, str]]) -> None:
        """List exactly the complete checkpoints ``(step, uri)`` found in the store, keeping known dates."""
        known = {c.step: c for c in self.progress.checkpoints}
        with self._lock:
            self.progress.checkpoints = [known.get(step) or CheckpointRecord(step=step, uri=uri) for step, uri in complete]
            self._dirty = True

    # -- writing -----------------------------------------------------------------------------------
    def write(self) -> None:
        """Write progress.json now (rank 0 only). A failing write is logged, never fatal, while training."""
        if not self.enabled:
            return
        with self._lock:
            self.progress.updated_at = utcnow()
            body = self.progress.model_copy(deep=True)
            self._dirty = False
            curve = None
            if self._history_dirty:
                curve = "".join(m.model_dump_json(by_alias=True, exclude_none=True) + "\n" for m in self.history)
                self._history_dirty = False
        try:
            if curve is not None:  # first, so the curve is never behind the step progress.json shows
                self.store.write_bytes(self.metrics_uri, curve.encode(), "application/x-ndjson")
            self.store.write_json(self.progress_uri, body)
            self._last_error = None
        except Exception as e:  # the object store may blip; the next write retries
            if curve is not None:
                self._history_dirty = True
            if str(e) != self._last_error:
                log.warning("could not write %s: %s", self.progress_uri, e)
            self._last_error = str(e)

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.interval):
            if self._dirty:
                self.write()

    def event(self, message: str, reason: str = "Progress", warning: bool = False) -> None:
        """Append one line to events.jsonl and log it."""
        (log.warning if warning else log.info)(message)
        if not self.enabled:
            return
        line = TrainerEvent(type="Warning" if warning else "Normal", reason=reason, message=message)
        try:
            self.store.append_line(self.events_uri, line.model_dump_json(by_alias=True))
        except Exception as e:
            log.warning("could not append to %s: %s", self.events_uri, e)

    # -- updates -----------------------------------------------------------------------------------
    def update(self, **fields: Any) -> None:
        """Change snapshot fields (snake_case names of ``Progress``) and the matching metrics."""
        with self._lock:
            for name, value in fields.items():
                setattr(self.progress, name, value)
            self._dirty = True
            self._log_step(fields)
        if self.metrics is not None:
            m, p = self.metrics, self.progress
            m.step.set(p.step)
            if p.total_steps is not None:
                m.total_steps.set(p.total_steps)
            if p.train_loss is not None:
                m.train_loss.set(p.train_loss)
            if p.eval_loss is not None:
                m.eval_loss.set(p.eval_loss)
            if p.tokens_per_second is not None:
                m.tokens_per_second.set(p.tokens_per_second)
            if p.trained_tokens > self._counted_tokens:
                m.trained_tokens.inc(p.trained_tokens - self._counted_tokens)
                self._counted_tokens = p.trained_tokens
        if self._bar is not None and "step" in fields:
            self._bar.n = self.progress.step
            postfix = {}
            if self.progress.train_loss is not None:
                postfix["loss"] = f"{self.progress.train_loss:.4f}"
            if self.progress.tokens_per_second:
                postfix["tok/s"] = f"{self.progress.tokens_per_second:.0f}"
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.refresh()

    def _log_step(self, fields: dict[str, Any]) -> None:
        """Add a line to the learning curve for a step's training loss, or set the validation loss of the step
        it was computed after. A step trained again (after a resume) replaces its line and those after it."""
        p = self.progress
        if "step" in fields and fields.get("train_loss") is not None:
            while self.history and self.history[-1].step >= p.step:
                self.history.pop()
            self.history.append(StepMetrics(step=p.step, epoch=p.epoch, train_loss=p.train_loss, tokens_per_second=p.tokens_per_second))
            self._history_dirty = True
        elif fields.get("eval_loss") is not None:
            if self.history and self.history[-1].step == p.step:
                self.history[-1].eval_loss = p.eval_loss
            else:
                self.history.append(StepMetrics(step=p.step, epoch=p.epoch, eval_loss=p.eval_loss))
            self._history_dirty = True

    def phase(self, phase: Phase, **fields: Any) -> None:
        """Enter a phase and write progress.json at once."""
        self.update(phase=phase, **fields)
        self.write()

    def start_bar(self, total: int, initial: int) -> None:
        """A tqdm bar on stderr, only when stderr is a terminal (never in a pod's log)."""
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True)

    def add_checkpoint(self, step: int, uri: str) -> None:
        with self._lock:
            kept = [c for c in self.progress.checkpoints if c.step != step]
            self.progress.checkpoints = [*kept, CheckpointRecord(step=step, uri=uri, created_at=utcnow())]
            self._dirty = True
        self.write()


class Throughput:
    """Trained (non-padding) tokens per second over a sliding window of recent optimizer steps."""

    def __init__(self, window: int = 20):
        self.window = window
        self.samples: list[tuple[float, int]] = []

    def add(self, tokens: int) -> None:
        self.samples.append((time.monotonic(), tokens))
        del self.samples[: -self.window - 1]

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        elapsed = self.samples[-1][0] - self.samples[0][0]
        tokens = sum(t for _, t in self.samples[1:])
        return tokens / elapsed if elapsed > 0 else None
