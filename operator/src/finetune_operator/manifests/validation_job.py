"""The children of a Dataset generation: the validator's config ConfigMap and the batch/v1 Job that runs
``finetune-trainer validate``. Pure functions of (dataset, spec, config)."""

from __future__ import annotations

from typing import Any

from finetune_operator.api.dataset import DatasetSpec
from finetune_operator import naming
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import owner_reference
from finetune_operator.manifests import common
from finetune_trainer import contract

KIND_LABEL = "dataset"
CONTAINER = "validator"
CONFIG_FILE = f"{common.CONFIG_MOUNT}/config.json"
SOURCE_CREDENTIALS_MOUNT = "/var/run/secrets/finetune/source"
SOURCE_FILE_MOUNT = "/var/run/finetune/source"
GENERATION_LABEL = "finetune.dev/generation"
BACKOFF_LIMIT = 2
"""Pod retries for what may heal (a connection lost mid-read); bad input fails the Job at once."""
RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "8Gi"}}
"""The validator streams the file (constant memory); a tokenizer for token statistics needs the most."""


def source_path(spec: DatasetSpec) -> str:
    """What the validator reads: the URI, or the file a ConfigMap key is mounted as."""
    if spec.source.config_map_ref is not None:
        return f"{SOURCE_FILE_MOUNT}/{spec.source.config_map_ref.key}"
    return spec.source.uri or ""


def _tokenizer(spec: DatasetSpec, config: OperatorConfig) -> str | None:
    """The tokenizer URI as the pod sees it: pvc://claim/path becomes the path where the claim is mounted."""
    if spec.tokenizer and spec.tokenizer.startswith("pvc://"):
        claim, _, path = spec.tokenizer[len("pvc://") :].partition("/")
        return f"{config.pvc_mount_root}/{claim}/{path}".rstrip("/")
    return spec.tokenizer


def validate_config(name: str, namespace: str, uid: str, generation: int | None, spec: DatasetSpec, config: OperatorConfig) -> contract.ValidateConfig:
    credentials = SOURCE_CREDENTIALS_MOUNT if spec.source.secret_ref is not None and spec.source.uri else None
    return contract.ValidateConfig(
        source=source_path(spec),
        source_credentials_dir=credentials,
        format=spec.format,
        validation_split=spec.validation.fraction if spec.validation else 0.0,
        split_seed=spec.validation.seed if spec.validation else 42,
        min_samples=spec.min_samples,
        max_bytes=spec.max_size_bytes,
        tokenizer=_tokenizer(spec, config),
        output_uri=naming.dataset_output_uri(config, namespace, name),
        report_uri=naming.dataset_report_uri(config, namespace, name, uid, generation),
        storage=contract.StorageConfig(
            endpoint=config.storage_endpoint,
            secure=config.storage_secure,
            region=config.storage_region or None,
            credentials_dir=common.STORAGE_MOUNT,
        ),
        allow_private_urls=config.allow_private_urls,
    )


def build_validation_children(owner: dict, spec: DatasetSpec, config: OperatorConfig) -> list[dict]:
    """[ConfigMap, Job] of the owner's current generation, in creation order."""
    meta = owner["metadata"]
    name, namespace, uid, generation = meta["name"], meta["namespace"], meta["uid"], meta.get("generation")
    child = naming.validation_job_name(name, generation)
    owner_ref = owner_reference(owner)
    labels = common.labels("validator", KIND_LABEL, name, {GENERATION_LABEL: str(generation or 0)})
    cfg = validate_config(name, namespace, uid, generation, spec, config)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": child, "namespace": namespace, "labels": labels, "ownerReferences": [owner_ref]},
        "data": {"config.json": cfg.to_json()},
    }
    return [configmap, build_validation_job(owner_ref, child, namespace, spec, config, labels)]


def _volumes(child: str, spec: DatasetSpec, config: OperatorConfig) -> tuple[list[dict], list[dict]]:
    storage_vol, storage_mount = common.storage_volume(config)
    scratch_vols, scratch_mounts = common.scratch_volumes(config)
    volumes = [{"name": "config", "configMap": {"name": child}}, storage_vol, *scratch_vols]
    mounts = [{"name": "config", "mountPath": common.CONFIG_MOUNT, "readOnly": True}, storage_mount, *scratch_mounts]
    source = spec.source
    if source.config_map_ref is not None:
        ref = source.config_map_ref
        volumes.append({"name": "source", "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": ref.key}]}})
        mounts.append({"name": "source", "mountPath": SOURCE_FILE_MOUNT, "readOnly": True})
    elif source.secret_ref is not None:
        secret: dict[str, Any] = {"secretName": source.secret_ref.name, "defaultMode": 0o440}
        if source.secret_ref.key and (source.uri or "").startswith("https://"):
            # The validator sends the file `token` as a bearer token: map the named key onto it.
            secret["items"] = [{"key": source.secret_ref.key, "path": "token"}]
        volumes.append({"name": "source-credentials", "secret": secret})
        mounts.append({"name": "source-credentials", "mountPath": SOURCE_CREDENTIALS_MOUNT, "readOnly": True})
    if spec.tokenizer and spec.tokenizer.startswith("pvc://"):
        claim = spec.tokenizer[len("pvc://") :].split("/", 1)[0]
        volumes.append({"name": "tokenizer-pvc", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "tokenizer-pvc", "mountPath": f"{config.pvc_mount_root}/{claim}", "readOnly": True})
    return volumes, mounts


def build_validation_job(owner_ref: dict, child: str, namespace: str, spec: DatasetSpec, config: OperatorConfig, labels: dict[str, str]) -> dict:
    volumes, mounts = _volumes(child, spec, config)
    container = common.job_container({
        "name": CONTAINER,
        "image": config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["finetune-trainer", "validate", "--config", CONFIG_FILE],
        "env": common.base_env(),
        "resources": RESOURCES,
        "volumeMounts": mounts,
    })
    pod_spec = common.job_pod_spec(container, volumes)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": child, "namespace": namespace, "labels": labels, "ownerReferences": [owner_ref]},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": config.validation_deadline_seconds,
            "podFailurePolicy": {
                "rules": [
                    # The file (or the config) is bad: another try reads the same bytes.
                    {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [int(contract.ExitCode.BAD_INPUT)]}},
                    # Preemption, eviction, node drain: not the validator's fault; do not count it.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
