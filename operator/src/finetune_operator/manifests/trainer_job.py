"""The children of a FineTuneJob: the trainer config ConfigMap, the batch/v1 Job, and for several
nodes a headless Service for torchrun's rendezvous. Pure functions of (job, spec, inputs, config).

The ConfigMap holds the job's inputs for good (the trainer config), and the ConfigMap and the Job carry
the Dataset's sha256: once made, they are what the job was made from, whatever its Dataset says later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from finetune_operator import naming
from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests import common
from finetune_trainer import contract

KIND_LABEL = "finetunejob"
CONTAINER = "trainer"
CONFIG_FILE = f"{common.CONFIG_MOUNT}/config.json"
TOKEN_MOUNT = "/var/run/secrets/finetune/base-model"
RENDEZVOUS_PORT = 29500
METRICS_PORT = 9090
DATASET_SHA_ANNOTATION = "finetune.dev/dataset-sha256"
"""On the trainer's ConfigMap and Job: the sha256 of the training data they were made from."""
OUTPUT_MODEL_ANNOTATION = "finetune.dev/output-model-name"
"""On the trainer's ConfigMap and Job: the output model's name, decided when they were made (a continued
job's name records the model it continues, which may be gone by the time this one completes)."""
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@dataclass(frozen=True)
class TrainerInputs:
    """What a FineTuneJob trains on and where its files go, resolved from its Datasets (or read back from
    its ConfigMap, once made)."""

    train_data: list[str]
    artifacts_uri: str
    output_model_name: str
    validation_data: list[str] = field(default_factory=list)
    dataset_sha256: str | None = None
    from_checkpoint: str | None = None
    queue: str | None = None
    """The Kueue LocalQueue the Job is submitted to (it is created suspended)."""


def trainer_config(name: str, namespace: str, spec: FineTuneJobSpec, inputs: TrainerInputs, config: OperatorConfig) -> contract.TrainerConfig:
    """The trainer's config: the spec's options as the contract defines them (no field is copied by hand), the
    inputs, and where the store and the secrets are mounted."""
    targets: list[str] | str = "all-linear" if spec.lora.target_modules == ["all-linear"] else list(spec.lora.target_modules)
    token_file = None
    if spec.base_model.secret_ref is not None:
        token_file = f"{TOKEN_MOUNT}/{spec.base_model.secret_ref.key or 'token'}"
    hyperparameters = spec.hyperparameters.model_dump()
    hyperparameters["learning_rate"] = spec.hyperparameters.effective_learning_rate(spec.method)
    return contract.TrainerConfig(
        job_name=name,
        namespace=namespace,
        base_model=spec.base_model.uri,
        base_model_token_file=token_file,
        train_data=inputs.train_data,
        validation_data=inputs.validation_data,
        validation_split=spec.validation_split or 0.0,
        method=spec.method,
        objective=spec.objective,
        dpo=contract.DpoOptions.model_validate(spec.dpo.model_dump()) if spec.dpo is not None else contract.DpoOptions(),
        lora=contract.LoraConfig.model_validate({**spec.lora.model_dump(), "target_modules": targets}),
        hyperparameters=contract.Hyperparameters.model_validate(hyperparameters),
        merge=spec.output.merge,
        from_checkpoint=inputs.from_checkpoint,
        output_uri=inputs.artifacts_uri,
        output_model_name=inputs.output_model_name,
        storage=contract.StorageConfig(
            endpoint=config.storage_endpoint,
            secure=config.storage_secure,
            region=config.storage_region or None,
            credentials_dir=common.STORAGE_MOUNT,
        ),
        num_gpus=spec.resources.gpus,
        metrics_port=METRICS_PORT,
        progress_interval_seconds=config.progress_interval_seconds,
    )


SPEC_FIELDS_FOR_THE_OPERATOR = {
    "baseModel.secretRef": "mounted as a file; the config names the file (baseModelTokenFile)",
    "dataset": "resolved to the Dataset's normalised files (trainData, validationData)",
    "validationDataset": "resolved to that Dataset's files (validationData)",
    "fromCheckpoint": "resolved to the other job's checkpoint or model URI (fromCheckpoint)",
    "resources.gpuType": "node placement of the pod",
    "resources.cpu": "the container's resources",
    "resources.memory": "the container's resources",
    "numNodes": "the Job's completions and the rendezvous env",
    "suffix": "part of the output model's name (outputModelName)",
    "queueName": "the Kueue queue label of the Job",
    "priorityClassName": "the pod's priority class",
    "suspend": "the Job's suspend",
    "cancel": "the Job is deleted",
    "maxDurationSeconds": "the Job's activeDeadlineSeconds",
    "output.uri": "where the artifacts go (outputUri)",
}
"""The FineTuneJob spec fields that shape the Job or are resolved by the operator instead of being handed to
the trainer as they are (a test holds every other spec field to reaching the trainer's config)."""


def recorded_model_name(job: dict) -> str | None:
    """The output model's name the trainer's Job was made with (None for a Job made before names were recorded)."""
    return ((job.get("metadata") or {}).get("annotations") or {}).get(OUTPUT_MODEL_ANNOTATION)


def inputs_from_config_map(config_map: dict | None, owner_uid: str) -> TrainerInputs | None:
    """The inputs a job's ConfigMap was made with, when it belongs to the FineTuneJob ``owner_uid``."""
    if config_map is None:
        return None
    refs = (config_map.get("metadata") or {}).get("ownerReferences") or []
    if not any(ref.get("uid") == owner_uid for ref in refs):
        return None
    try:
        cfg = contract.TrainerConfig.model_validate(json.loads((config_map.get("data") or {}).get("config.json") or "{}"))
    except (ValueError, ValidationError):
        return None
    annotations = (config_map.get("metadata") or {}).get("annotations") or {}
    queue = ((config_map.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL)
    return TrainerInputs(
        train_data=cfg.train_data,
        validation_data=cfg.validation_data,
        dataset_sha256=annotations.get(DATASET_SHA_ANNOTATION),
        from_checkpoint=cfg.from_checkpoint,
        artifacts_uri=cfg.output_uri,
        output_model_name=cfg.output_model_name or "",
        queue=queue,
    )


def build_trainer_children(owner: dict, spec: FineTuneJobSpec, inputs: TrainerInputs, config: OperatorConfig) -> list[dict]:
    """[ConfigMap, (headless Service), Job] in creation order."""
    meta = owner["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    child = naming.trainer_job_name(name)
    owner_ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": name,
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    queue = inputs.queue
    base_labels = common.labels("trainer", KIND_LABEL, name)
    cfg = trainer_config(name, namespace, spec, inputs, config)
    annotations = {DATASET_SHA_ANNOTATION: inputs.dataset_sha256} if inputs.dataset_sha256 else {}
    if inputs.output_model_name:
        annotations[OUTPUT_MODEL_ANNOTATION] = inputs.output_model_name
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": child, "namespace": namespace, "labels": {**base_labels, **({QUEUE_LABEL: queue} if queue else {})},
                     "annotations": annotations, "ownerReferences": [owner_ref]},
        "data": {"config.json": cfg.to_json()},
    }
    children = [configmap]
    multi_node = spec.num_nodes > 1
    if multi_node:
        children.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": child, "namespace": namespace, "labels": base_labels, "ownerReferences": [owner_ref]},
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,
                    "selector": {"batch.kubernetes.io/job-name": child},
                    "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
                },
            }
        )
    job = build_trainer_job(owner_ref, name, namespace, spec, config, queue, base_labels)
    job["metadata"]["annotations"].update(annotations)
    children.append(job)
    return children


def _command(spec: FineTuneJobSpec, child: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The trainer command and its distributed env.

    The trainer starts one worker per GPU itself (plain `finetune-trainer train`, not torchrun, so its
    exit codes reach the Job's podFailurePolicy unchanged); on several nodes each pod of the Indexed Job
    reads its node rank from JOB_COMPLETION_INDEX and meets the others at pod 0 of the headless Service.
    """
    command = ["finetune-trainer", "train", "--config", CONFIG_FILE]
    if spec.num_nodes == 1:
        return command, []
    env = [
        {"name": "NNODES", "value": str(spec.num_nodes)},
        {"name": "NPROC_PER_NODE", "value": str(max(spec.resources.gpus, 1))},
        {"name": "MASTER_ADDR", "value": f"{child}-0.{child}"},
        {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
    ]
    return command, env


def build_trainer_job(
    owner_ref: dict, name: str, namespace: str, spec: FineTuneJobSpec, config: OperatorConfig, queue: str | None, base_labels: dict[str, str]
) -> dict:
    child = naming.trainer_job_name(name)
    labels = dict(base_labels)
    if queue:
        labels[QUEUE_LABEL] = queue
    command, extra_env = _command(spec, child)
    storage_vol, storage_mount = common.storage_volume(config)
    scratch_vols, scratch_mounts = common.scratch_volumes(config)
    volumes = [{"name": "config", "configMap": {"name": child}}, storage_vol, *scratch_vols]
    mounts = [{"name": "config", "mountPath": common.CONFIG_MOUNT, "readOnly": True}, storage_mount, *scratch_mounts]
    if spec.base_model.secret_ref is not None:
        volumes.append({"name": "base-model-token", "secret": {"secretName": spec.base_model.secret_ref.name, "defaultMode": 0o440}})
        mounts.append({"name": "base-model-token", "mountPath": TOKEN_MOUNT, "readOnly": True})
    if spec.base_model.uri.startswith("pvc://"):
        claim = spec.base_model.uri[len("pvc://") :].split("/", 1)[0]
        volumes.append({"name": "base-model-pvc", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "base-model-pvc", "mountPath": f"{config.pvc_mount_root}/{claim}", "readOnly": True})
    container = common.job_container({
        "name": CONTAINER,
        "image": config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "env": common.base_env() + extra_env,
        "resources": common.resources(config, spec.resources.gpus, spec.resources.cpu, spec.resources.memory),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "volumeMounts": mounts,
    })
    pod_spec = common.job_pod_spec(container, volumes, terminationGracePeriodSeconds=config.termination_grace_seconds,
                                   **common.gpu_placement(config, spec.resources.gpu_type, spec.resources.gpus))
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.num_nodes > 1:
        pod_spec["subdomain"] = child
    job_spec: dict[str, Any] = {
        "suspend": bool(queue) or spec.suspend,
        "backoffLimit": config.backoff_limit,
        "completions": spec.num_nodes,
        "parallelism": spec.num_nodes,
        "podFailurePolicy": {
            "rules": [
                # Bad input or config: retrying cannot help; fail the Job at once.
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [int(contract.ExitCode.BAD_INPUT)]}},
                # Preemption, eviction, node drain: not the trainer's fault; do not count it.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {"metadata": {"labels": labels, "annotations": {"prometheus.io/port": str(METRICS_PORT)}}, "spec": pod_spec},
    }
    if spec.num_nodes > 1:
        job_spec["completionMode"] = "Indexed"
    if spec.max_duration_seconds:
        job_spec["activeDeadlineSeconds"] = spec.max_duration_seconds
    annotations = {"finetune.dev/suspended-by": "user"} if spec.suspend else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": child, "namespace": namespace, "labels": labels, "annotations": annotations, "ownerReferences": [owner_ref]},
        "spec": job_spec,
    }
