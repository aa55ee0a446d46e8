"""What every kind's reconcile shares: the plan it returns, the shape of one reconcile (old status in,
conditions, a phase derived from them, the transition's Event), and the words of the world it reads
(a spec that does not parse, a container's termination message).

A kind's reconcile reads as its phases, one step each::

    r = Reconciliation.start(obj, derive_phase, transition_event, StatusModel)
    if r.is_final(...): return r.finish(plan)
    spec = r.parse(SpecModel, ...)
    ...
    return r.finish(plan)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from finetune_operator.reconcile.conditions import Conditions, now, rfc3339

STATUS_MESSAGE_LIMIT = 4096
"""status.message and condition messages: the CRDs' maxLength."""
EVENT_MESSAGE_LIMIT = 1024


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What a reconcile decided: the status to write, the Events to post, and the kind's actions."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    retry_after: float | None = None
    """Waiting on something that will heal (a Dataset, a Secret): reconcile again after this many seconds."""
    old_phase: str | None = None
    new_phase: str = "Pending"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis), so a status or an Event never exceeds its limit."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def backoff_seconds(key: str, attempt: int, base: float, cap: float) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): ``base`` doubling up to ``cap``, times 0.8 to 1.2. The
    jitter is the same for one object and attempt (``key``, its uid) and differs across objects, so many of
    them failing together do not retry in step."""
    jitter = random.Random(f"{key}-{attempt}").uniform(0.8, 1.2)
    return min(base * 2 ** (attempt - 1), cap) * jitter


def format_validation_error(e: ValidationError) -> str:
    """``spec.hyperparameters.epochs: Input should be greater than or equal to 1; ...`` (the first five)."""
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{loc}: {err['msg']}")
    return "; ".join(parts)


def check_status(model: type[BaseModel], status: dict[str, Any]) -> None:
    """Raise when ``status`` names a field the kind's status model does not have: the API server would drop it
    without a word (a misspelt status field must fail a test, not vanish). Strings and lists longer than the
    CRD allows are cut to fit, in place: a status the server refuses (422) would leave the object stuck."""
    _check_fields(model, status, "status")


def _check_fields(model: type[BaseModel], data: dict[str, Any], path: str) -> None:
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    for key, value in list(data.items()):
        info = fields.get(key)
        if info is None:
            raise ValueError(f"{path}.{key} is not a field of {model.__name__}")
        limit = next((m.max_length for m in info.metadata if getattr(m, "max_length", None) is not None), None)
        if limit is not None and isinstance(value, str) and len(value) > limit:
            data[key] = clip(value, limit)
        elif limit is not None and isinstance(value, list) and len(value) > limit:
            data[key] = value = value[:limit]
        inner = _model_of(info.annotation)
        if inner is not None and isinstance(value, dict):
            _check_fields(inner, value, f"{path}.{key}")
        elif inner is not None and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _check_fields(inner, item, f"{path}.{key}[{i}]")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like ``X``, ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


@dataclass
class Reconciliation:
    """One reconcile of one object: the status it started from, the conditions it moves, the status it builds."""

    obj: dict
    derive_phase: Callable[[Conditions], str]
    transition_event: Callable[[str, str, dict, dict], Event]
    """(new phase, message, new status, old status) → the Event of a transition."""
    status_model: type[BaseModel] | None = None
    old: dict[str, Any] = field(init=False)
    conditions: Conditions = field(init=False)
    out: dict[str, Any] = field(init=False)
    final_phases: tuple[str, ...] = ()
    """Phases that get a completionTime when first reached."""
    transition_first: bool = False
    """The transition's Event goes before the other Events of the pass (else after them)."""

    def __post_init__(self) -> None:
        meta = self.obj.get("metadata") or {}
        self.old = dict(self.obj.get("status") or {})
        self.conditions = Conditions.from_status(self.old, meta.get("generation"))
        self.out = {"observedGeneration": meta.get("generation")}

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.obj["metadata"]["namespace"]

    @property
    def uid(self) -> str:
        return self.obj["metadata"].get("uid", "")

    @property
    def old_phase(self) -> str | None:
        return self.old.get("phase")

    def parse(self, model: type[BaseModel]) -> tuple[Any, str | None]:
        """The spec as its model, or (None, the problem in the user's field names)."""
        try:
            return model.model_validate(self.obj.get("spec") or {}), None
        except ValidationError as e:
            return None, format_validation_error(e)

    def keep(self, *keys: str) -> None:
        """Carry fields of the old status over unchanged."""
        for key in keys:
            if self.old.get(key) is not None:
                self.out.setdefault(key, self.old[key])

    def finish(self, plan: Plan, event: Event | None = None, announce: bool = False) -> Plan:
        """Derive the phase, complete the status, and add the transition's Event (``event``, else the kind's
        words for the new phase) when the phase moved, or when ``announce`` says so anyway."""
        phase = self.derive_phase(self.conditions)
        out = self.out
        out["phase"] = phase
        out["conditions"] = self.conditions.as_list()
        if phase in self.final_phases and not self.old.get("completionTime"):
            out["completionTime"] = rfc3339(now())
        plan.status = out
        plan.old_phase = self.old_phase
        plan.new_phase = phase
        if self.status_model is not None:
            check_status(self.status_model, out)
        elif isinstance(out.get("message"), str):
            out["message"] = clip(out["message"], STATUS_MESSAGE_LIMIT)
        if phase != self.old_phase or announce:
            event = event or self.transition_event(phase, out.get("message") or "", out, self.old)
            if self.transition_first:
                plan.events.insert(0, event)
            else:
                plan.events.append(event)
        return plan
