"""Prometheus metrics of the server, in a registry of their own (several servers may share a process in tests).

``/metrics`` is served without the API key, as Kubernetes scrapers expect; it carries counts and
timings only, never prompts, outputs or keys.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNKNOWN_MODEL = "unknown"
"""The ``model`` label of requests for a model the server does not serve (keeps label cardinality bounded)."""

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "finetune_server_requests",
            "Completion requests answered, by served model name and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "finetune_server_request_duration_seconds",
            "Time from receiving a completion request to its last byte.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "finetune_server_time_to_first_token_seconds",
            "Time from receiving a completion request to its first generated token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "finetune_server_prompt_tokens", "Prompt tokens of admitted requests.", ["model"], registry=self.registry
        )
        self.generation_tokens = Counter(
            "finetune_server_generation_tokens", "Tokens generated.", ["model"], registry=self.registry
        )
        self.queue_depth = Gauge("finetune_server_queue_depth", "Requests waiting for a batch slot.", registry=self.registry)
        self.running_requests = Gauge(
            "finetune_server_running_requests", "Sequences in the running batch.", registry=self.registry
        )
        self.loaded_adapters = Gauge(
            "finetune_server_loaded_adapters", "LoRA adapters loaded and served.", registry=self.registry
        )
        self.adapters = Gauge(
            "finetune_server_adapters", "LoRA adapters by state (loaded, loading, failed).", ["state"], registry=self.registry
        )

    def bind(self, queue_depth: Callable[[], float], running: Callable[[], float], adapter_counts: Callable[[], dict[str, int]]) -> None:
        """Read the gauges from the live server at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.running_requests.set_function(running)
        self._adapter_counts = adapter_counts

    def render(self) -> bytes:
        counts = getattr(self, "_adapter_counts", None)
        if counts is not None:
            by_state = counts()
            for state, value in by_state.items():
                self.adapters.labels(state=state).set(value)
            self.loaded_adapters.set(by_state.get("loaded", 0))
        return generate_latest(self.registry)
