"""What every handler shares: the operator configuration, the API client and the object store reader.

Set up once by the startup handler (``handlers.startup``); tests may call ``init`` themselves.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

from finetune_operator.config import OperatorConfig
from finetune_operator.kube import Kube
from finetune_operator.storage import OperatorStorage


@dataclass
class Runtime:
    config: OperatorConfig
    kube: Kube
    storage: OperatorStorage


_runtime: Runtime | None = None
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()
_terminating_namespaces: set[str] = set()


def init(config: OperatorConfig, kube: Kube | None = None, storage: OperatorStorage | None = None) -> Runtime:
    global _runtime
    _runtime = Runtime(config=config, kube=kube or Kube(timeout_seconds=config.client_timeout_seconds), storage=storage or OperatorStorage(config))
    return _runtime


def get() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the operator runtime is not initialised (the startup handler has not run)")
    return _runtime


def object_lock(uid: str) -> threading.Lock:
    """One reconcile at a time per object, whichever event triggered it."""
    with _locks_guard:
        return _locks[uid]


def forget(uid: str) -> None:
    with _locks_guard:
        _locks.pop(uid, None)
    if _runtime is not None:
        _runtime.kube.forget(uid)


def set_namespace_terminating(namespace: str, terminating: bool) -> None:
    """Told by the namespace watch: a namespace being deleted takes every object in it along."""
    with _locks_guard:
        if terminating:
            _terminating_namespaces.add(namespace)
        else:
            _terminating_namespaces.discard(namespace)


def namespace_terminating(namespace: str) -> bool:
    with _locks_guard:
        return namespace in _terminating_namespaces
