"""What the CLI and the console show beyond an object's status, assembled in one place: a job's event log
(the trainer's events.jsonl merged with Kubernetes Events, oldest first), its learning curve
(metrics.jsonl), its checkpoints and downloadable artifacts, and an evaluation's per-sample answers side by
side (results.jsonl)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from finetune_trainer import contract

from finetune_operator.cli.base import EXIT_NOT_FOUND, EXIT_NOT_READY, CliError
from finetune_operator.cli.output import parse_time

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Event:
    time: dt.datetime | None
    source: str
    """``trainer`` (events.jsonl) or ``operator`` (a Kubernetes Event)."""
    type: str
    reason: str
    message: str
    count: int = 1
    sequence: int = 0
    """Order among events of the same second: the API server's resourceVersion, the line of events.jsonl."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat().replace("+00:00", "Z") if self.time else None,
            "source": self.source, "type": self.type, "reason": self.reason, "message": self.message, "count": self.count,
        }  # fmt: skip


def kube_event_time(event: Any) -> dt.datetime | None:
    for value in (event.first_timestamp, event.event_time, event.last_timestamp, event.metadata.creation_timestamp):
        parsed = parse_time(value)
        if parsed is not None:
            return parsed
    return None


def merged_events(kube: Any, store: Any | None, kind: str, obj: dict[str, Any]) -> list[Event]:
    """The object's Kubernetes Events and, when it has an artifacts folder and the store is given, the
    trainer's events.jsonl, oldest first (a tie keeps the trainer's line first: it happened in the pod)."""
    events = [
        Event(kube_event_time(e), "operator", e.type or "Normal", e.reason or "", e.message or "", e.count or 1,
              int(e.metadata.resource_version) if str(e.metadata.resource_version or "").isdigit() else 0)
        for e in kube.events_for(kind, obj["metadata"]["name"], obj["metadata"].get("namespace"))
    ]
    artifacts = (obj.get("status") or {}).get("artifactsUri")
    if store is not None and artifacts:
        for i, line in enumerate(store.read_jsonl(contract.join_uri(artifacts, contract.EVENTS_FILE))):
            events.append(Event(parse_time(line.get("time")), "trainer", line.get("type") or "Normal", line.get("reason") or "",
                                line.get("message") or "", sequence=i))  # fmt: skip
    order = {"trainer": 0, "operator": 1}
    # Kubernetes Events carry whole seconds: compare at that precision, the pod's line first within a second
    return sorted(events, key=lambda e: ((e.time or EPOCH).replace(microsecond=0), order[e.source], e.sequence, e.time or EPOCH))


def learning_curve(store: Any, job: dict[str, Any]) -> list[contract.StepMetrics]:
    """The job's metrics.jsonl, one entry per logged step (empty before the first step)."""
    artifacts = (job.get("status") or {}).get("artifactsUri")
    if not artifacts:
        return []
    out = []
    for line in store.read_jsonl(contract.join_uri(artifacts, contract.METRICS_FILE)):
        try:
            out.append(contract.StepMetrics.model_validate(line))
        except ValueError:
            continue
    return out


@dataclass(frozen=True)
class Artifact:
    """Something of a job that can be downloaded."""

    label: str
    """``checkpoint``, ``adapter``, ``model`` or ``merged``."""
    uri: str
    step: int | None = None


def job_artifacts(job: dict[str, Any]) -> list[Artifact]:
    """The job's checkpoints (oldest first), then its final model (and merged model), as status lists them."""
    status = job.get("status") or {}
    out = [Artifact("checkpoint", c["uri"], c.get("step")) for c in sorted(status.get("checkpoints") or [], key=lambda c: c.get("step", 0))]
    model = status.get("outputModel") or {}
    if model.get("uri"):
        out.append(Artifact("adapter" if model.get("adapter", True) else "model", model["uri"]))
    if model.get("mergedUri"):
        out.append(Artifact("merged", model["mergedUri"]))
    return out


def artifact_to_download(job: dict[str, Any], checkpoint: int | None = None, merged: bool = False) -> Artifact:
    """The folder ``jobs download`` fetches: a checkpoint by step, else the final model (or the merged one)."""
    name = job["metadata"]["name"]
    status = job.get("status") or {}
    artifacts = job_artifacts(job)
    if checkpoint is not None:
        found = next((a for a in artifacts if a.label == "checkpoint" and a.step == checkpoint), None)
        if found is None:
            steps = ", ".join(str(a.step) for a in artifacts if a.label == "checkpoint") or "none yet"
            raise CliError(f"finetunejob {name} has no checkpoint at step {checkpoint} (its checkpoints: {steps})", EXIT_NOT_FOUND)
        return found
    phase = status.get("phase") or "Pending"
    if phase != "Completed":
        raise CliError(
            f"finetunejob {name} is {phase}, not Completed: its model is not there yet (download a checkpoint with --checkpoint STEP)",
            EXIT_NOT_READY,
        )
    wanted = "merged" if merged else None
    found = next((a for a in artifacts if (a.label == wanted if wanted else a.label in ("adapter", "model"))), None)
    if found is None:
        raise CliError(f"finetunejob {name} has no {'merged model (spec.output.merge is false)' if merged else 'output model'}", EXIT_NOT_FOUND)
    return found


# -- evaluations -------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One graded turn: the prompt and reference, and each model's answer with each grader's score."""

    example: int
    turn: int
    prompt: str
    reference: str | None
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """model → {response, error, scores: {grader: score}, errors: {grader: why}}."""


def evaluation_samples(store: Any, evaluation: dict[str, Any], limit: int | None) -> list[Sample]:
    """The first ``limit`` samples of results.jsonl (all with None), each with every model's answer."""
    status = evaluation.get("status") or {}
    uri = status.get("resultsUri")
    if not uri:
        raise CliError(f"evaluation {evaluation['metadata']['name']} has no results yet (phase {status.get('phase') or 'Pending'})", EXIT_NOT_READY)
    samples: dict[tuple[int, int], Sample] = {}
    for record in store.read_jsonl(uri):
        key = (int(record.get("example", 0)), int(record.get("turn", 0)))
        sample = samples.get(key)
        if sample is None:
            if limit is not None and len(samples) >= limit:
                continue
            sample = samples[key] = Sample(key[0], key[1], record.get("prompt") or "", record.get("reference"))
        sample.answers[record.get("model", "?")] = {
            "response": record.get("response"), "error": record.get("error"),
            "scores": record.get("scores") or {}, "errors": record.get("errors") or {},
        }  # fmt: skip
    return sorted(samples.values(), key=lambda s: (s.example, s.turn))


def model_order(evaluation: dict[str, Any]) -> list[str]:
    """The models of an Evaluation, baseline first."""
    spec = evaluation.get("spec") or {}
    names = [m["name"] for m in spec.get("models") or []]
    baseline = spec.get("baseline")
    return ([baseline] if baseline in names else []) + [n for n in names if n != baseline]


def grader_names(evaluation: dict[str, Any]) -> list[str]:
    return [g["name"] for g in (evaluation.get("spec") or {}).get("graders") or []]
