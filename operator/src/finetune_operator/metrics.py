"""Prometheus metrics of the operator, served on FINETUNE_METRICS_PORT at /metrics."""

from __future__ import annotations

import threading
from collections import Counter

from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

OBJECTS = Gauge("finetune_objects", "Objects of each kind by phase, as this operator last saw them.", ["kind", "phase"], registry=REGISTRY)
RECONCILE_DURATION = Histogram(
    "finetune_reconcile_duration_seconds",
    "Time to reconcile one object (read children, decide, write status).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
PHASE_TRANSITIONS = PromCounter(
    "finetune_phase_transitions", "Phase transitions by kind.", ["kind", "from_phase", "to_phase"], registry=REGISTRY
)
QUEUE_WAIT = Histogram(
    "finetune_queue_wait_seconds",
    "Time a FineTuneJob waited (Queued) before its trainer started.",
    buckets=(1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400),
    registry=REGISTRY,
)
RECONCILE_ERRORS = PromCounter("finetune_reconcile_errors", "Reconciles that ended in an error, by kind.", ["kind"], registry=REGISTRY)


class PhaseBook:
    """Phase of every object this operator reconciled, to keep the finetune_objects gauge exact."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str, str], str] = {}

    def set(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            key = (kind, namespace, name)
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = phase
            counts = Counter((k, p) for (k, _, _), p in self._phases.items() if k == kind)
            for (k, p), n in counts.items():
                OBJECTS.labels(kind=k, phase=p).set(n)
            for sample_kind, sample_phase in list(_known_label_pairs(kind)):
                if (sample_kind, sample_phase) not in counts:
                    OBJECTS.labels(kind=sample_kind, phase=sample_phase).set(0)


def _known_label_pairs(kind: str):
    for metric in OBJECTS.collect():
        for sample in metric.samples:
            if sample.labels.get("kind") == kind:
                yield sample.labels["kind"], sample.labels["phase"]


PHASES = PhaseBook()


def serve(port: int) -> None:
    if port > 0:
        start_http_server(port, registry=REGISTRY)
