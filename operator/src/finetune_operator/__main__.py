"""``python -m finetune_operator``: run the operator (kopf) with the settings from the environment."""

from __future__ import annotations

import logging
import secrets
import sys

import kopf

from finetune_operator.config import OperatorConfig


def main() -> int:
    config = OperatorConfig.from_env()
    kopf.configure(
        verbose=config.log_level.upper() == "DEBUG",
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object",
    )
    logging.getLogger().setLevel(config.log_level.upper())
    import finetune_operator.handlers  # noqa: F401  (registers the handlers)
    from finetune_operator import metrics

    try:
        metrics.serve(config.metrics_port)
    except OSError as e:
        raise SystemExit(f"cannot serve metrics on port {config.metrics_port}: {e.strerror}") from None

    kopf.run(
        standalone=not config.peering,
        peering_name=config.peering or None,
        # Replicas with equal priorities all pause; distinct ones elect the highest as the active one.
        priority=secrets.randbelow(1_000_000) + 1 if config.peering else None,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
