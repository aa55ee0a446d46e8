"""The one shape every kind's reconcile has: read, lock, decide, act, post Events, write status, report.

Each kind supplies ``decide`` (read what it observes and return its reconciler's plan) and ``act``
(create, patch or delete children); this module does the rest the same way for all four: the
per-object lock, reading again under it only when this process wrote the status since the copy it
holds, writing status only when it changed, the metrics, the transition log line and the Events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from finetune_operator import kube as k
from finetune_operator import metrics, runtime, tenancy

logger = logging.getLogger("finetune_operator.handlers")


class Plan(Protocol):
    status: dict[str, Any]
    events: list[Any]
    old_phase: str | None
    new_phase: str


def secret_labels(rt: runtime.Runtime, namespace: str, spec_model: type[BaseModel], raw_spec: dict) -> dict[str, dict[str, str] | None] | None:
    """The labels of each Secret the spec names (None for one that does not exist), read as metadata only;
    None for a spec that does not parse (the reconciler says why)."""
    try:
        spec = spec_model.model_validate(raw_spec)
    except ValidationError:
        return None
    names = [name for _, name in tenancy.named_secrets(spec)]
    if rt.config.storage_scoped_keys:
        names.append(rt.config.storage_secret)
    return {name: rt.kube.secret_labels(namespace, name) for name in dict.fromkeys(names)}


def status_changed(current: dict, new: dict) -> bool:
    return any(current.get(key) != value for key, value in new.items())


def reconcile_object(
    kind: str,
    resource: k.Resource,
    namespace: str,
    name: str,
    body: dict | None,
    decide: Callable[[dict, runtime.Runtime], Plan],
    act: Callable[[dict, runtime.Runtime, Plan], None],
) -> tuple[dict, Plan] | None:
    """Serialised per object. Returns the object as read and the plan carried out (None: it is gone or
    being deleted)."""
    rt = runtime.get()
    if runtime.namespace_terminating(namespace):
        # The namespace controller is deleting everything in it, children first or last: nothing to
        # decide, no phase to move, no Event (none can be created there any more).
        return None
    started = time.monotonic()
    fresh = rt.kube.get(resource, namespace, name) if body is None else body
    if fresh is None:
        return None
    with runtime.object_lock(fresh["metadata"]["uid"]):
        # Another trigger may have just written status: deciding on an older copy would repeat its
        # transition (and its Event), so read again unless this copy is known to be current.
        if rt.kube.wrote_status_since(fresh):
            fresh = rt.kube.get(resource, namespace, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return None
        try:
            plan = decide(fresh, rt)
            act(fresh, rt, plan)
            # The Events first: were the process to die before the status write, the next pass finds the
            # transition still to make and posts them again; after it, they would be lost.
            for event in plan.events:
                rt.kube.post_event(fresh, event.type, event.reason, event.message)
            if status_changed(fresh.get("status") or {}, plan.status):
                rt.kube.patch_status(resource, namespace, name, plan.status)
        except k.NamespaceTerminating:
            # The namespace is being deleted with everything in it (the watch had not told us yet): its
            # children are going away on purpose; making them again is neither possible nor wanted.
            runtime.set_namespace_terminating(namespace, True)
            logger.info("%s %s/%s: its namespace is being deleted; nothing to reconcile", kind, namespace, name)
            return None
        except Exception:
            metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
            raise
        finally:
            metrics.RECONCILE_DURATION.labels(kind=kind).observe(time.monotonic() - started)
    report(kind, fresh, plan)
    return fresh, plan


def report(kind: str, body: dict, plan: Plan) -> None:
    """The phase gauge, and a transition counter and log line when the phase moved."""
    meta = body["metadata"]
    metrics.PHASES.set(kind, meta["namespace"], meta["name"], plan.new_phase)
    if plan.old_phase != plan.new_phase:
        metrics.PHASE_TRANSITIONS.labels(kind=kind, from_phase=plan.old_phase or "None", to_phase=plan.new_phase).inc()
        logger.info("%s/%s: %s → %s", meta["namespace"], meta["name"], plan.old_phase, plan.new_phase)
