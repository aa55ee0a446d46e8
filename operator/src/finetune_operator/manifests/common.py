"""Pieces every pod the operator makes shares: labels, the restricted security context, storage mounts."""

from __future__ import annotations

from typing import Any

from finetune_operator.config import OperatorConfig

MANAGED_BY = {"app.kubernetes.io/managed-by": "finetune-operator"}
UID = 1000
STORAGE_MOUNT = "/var/run/secrets/finetune/storage"
CONFIG_MOUNT = "/etc/finetune"
TERMINATION_LOG = "/dev/termination-log"


def labels(component: str, kind_label: str, owner_name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "finetune",
        "app.kubernetes.io/component": component,
        **MANAGED_BY,
        f"finetune.dev/{kind_label}": owner_name,
    }
    out.update(extra or {})
    return out


def pod_security_context() -> dict[str, Any]:
    """Pod-level settings that pass the Pod Security Standards `restricted` profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def job_container(fields: dict[str, Any]) -> dict[str, Any]:
    """A Job's container: the given fields plus the restricted security context and the termination
    message the operator reads the trainer's last word from."""
    return {
        **fields,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def job_pod_spec(container: dict[str, Any], volumes: list[dict], **fields: Any) -> dict[str, Any]:
    """A Job's pod: never restarted in place (the Job retries), no API token, no Service env, restricted."""
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
        **fields,
    }


def storage_volume(config: OperatorConfig, secret_name: str | None = None) -> tuple[dict, dict]:
    """The object store credentials Secret, mounted read-only as files accessKey and secretKey."""
    volume = {
        "name": "storage-credentials",
        "secret": {"secretName": secret_name or config.storage_secret, "defaultMode": 0o440},
    }
    mount = {"name": "storage-credentials", "mountPath": STORAGE_MOUNT, "readOnly": True}
    return volume, mount


TMP_SIZE = "4Gi"
SHM_SIZE = "8Gi"


def scratch_volumes(config: OperatorConfig | None = None) -> tuple[list[dict], list[dict]]:
    """Writable places on a read-only root filesystem: /tmp, a cache (models downloaded from a hub), and /dev/shm
    for torch; each with a size limit, so a pod cannot fill its node's disk or memory (the kubelet evicts it)."""
    cache = config.ephemeral_storage if config is not None else OperatorConfig().ephemeral_storage
    volumes = [
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        {"name": "cache", "emptyDir": {"sizeLimit": cache}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/var/cache/finetune"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    return volumes, mounts


def base_env() -> list[dict[str, Any]]:
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/var/cache/finetune/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "FINETUNE_TERMINATION_LOG", "value": TERMINATION_LOG},
    ]


def gpu_placement(config: OperatorConfig, gpu_type: str | None, gpus: int) -> dict[str, Any]:
    """nodeSelector and tolerations of the configured GPU type, plus the standard GPU taint toleration."""
    out: dict[str, Any] = {}
    if gpus <= 0:
        return out
    tolerations: list[dict[str, Any]] = [{"key": config.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    if gpu_type and gpu_type in config.gpu_types:
        placement = config.gpu_types[gpu_type]
        if placement.node_selector:
            out["nodeSelector"] = dict(placement.node_selector)
        tolerations += placement.tolerations
    out["tolerations"] = tolerations
    return out


def resources(config: OperatorConfig, gpus: int, cpu: str | None, memory: str | None) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": cpu or config.default_cpu, "memory": memory or config.default_memory}
    limits = {**amounts, "ephemeral-storage": config.ephemeral_storage}
    if gpus > 0:
        limits[config.gpu_resource] = str(gpus)
    return {"requests": amounts, "limits": limits}


def differs(desired: Any, live: Any) -> bool:
    """True when ``desired`` is not contained in ``live``: some key it sets is missing or has another value.

    The API server adds defaults (``imagePullPolicy``, ``protocol``, ``terminationMessagePath`` ...), so a
    live object is compared against what the operator asks for, not for equality. Lists must have the
    same length and match item by item.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return True
        return any(differs(value, live.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return True
        return any(differs(d, item) for d, item in zip(desired, live, strict=True))
    if isinstance(desired, (int, float)) and not isinstance(desired, bool) and isinstance(live, str):
        return str(desired) != live
    return desired != live
