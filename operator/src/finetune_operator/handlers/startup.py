"""The one startup handler: kopf settings and the shared runtime."""

from __future__ import annotations

import logging

import kopf

from finetune_operator import runtime
from finetune_operator.config import OperatorConfig

logger = logging.getLogger(__name__)


def apply_settings(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    # Our own finalizer and annotation prefix, so the objects carry only finetune.dev keys.
    settings.persistence.finalizer = "finetune.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="finetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="finetune.dev", key="last-handled-configuration")
    # A watch that goes silent is closed by the server after server_timeout and by us after
    # client_timeout, then re-opened: a dead connection cannot blind the operator for long.
    settings.watching.server_timeout = config.watch_timeout_seconds
    settings.watching.client_timeout = config.watch_timeout_seconds + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = config.client_timeout_seconds
    settings.networking.connect_timeout = 30
    # Peering: standalone by default; with FINETUNE_PEERING several replicas elect one active.
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.standalone = False
        settings.peering.clusterwide = not config.namespace
        settings.peering.mandatory = True
    else:
        settings.peering.standalone = True
    # Events are the user's timeline: the phase transitions the reconcilers post, and warnings. kopf's own
    # "Handler ... succeeded" lines would be an Event for every watch event of every pod.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "finetune-operator"
    settings.execution.max_workers = 16
    settings.batching.worker_limit = None
    # A handler that raises an unexpected error is retried with growing delays, not hammered.
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: object) -> None:
    config = OperatorConfig.from_env()
    apply_settings(settings, config)
    runtime.init(config)
    logger.info(
        "finetune operator started",
        extra={"namespace": config.namespace or "*", "peering": config.peering or "standalone", "storage": config.storage_endpoint},
    )
    if not config.storage_scoped_keys:
        logger.warning(storage_keys_warning(config))


def storage_keys_warning(config: OperatorConfig) -> str:
    return (
        f"object store keys are not scoped to namespaces: whoever can read a namespace's Secret {config.storage_secret} "
        f"may reach every namespace's data with it. Give each namespace its own key (python -m "
        "finetune_operator.storage_keys grant; docs/install.md, 'Scoped store keys') and set FINETUNE_STORAGE_SCOPED_KEYS=true"
    )


@kopf.on.event("", "v1", "namespaces")
def on_namespace(event: kopf.RawEvent, name: str, meta: kopf.Meta, **_: object) -> None:
    """Keep the set of namespaces being deleted: reconciling objects there would only fight the namespace
    controller (re-creating children it deletes, posting Events it refuses)."""
    terminating = event.get("type") != "DELETED" and bool(meta.get("deletionTimestamp"))
    if terminating != runtime.namespace_terminating(name):
        runtime.set_namespace_terminating(name, terminating)
        if terminating:
            logger.info("namespace %s is being deleted: its objects are left to the namespace controller", name)
