"""The children of a FineTuneJob: the trainer config ConfigMap, the batch/v1 Job, and for several
nodes a headless Service for torchrun's rendezvous. Pure functions of (job, spec, inputs, config)."""

from __future__ import annotations

from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests import common
from finetune_operator.reconcile.finetunejob import effective_learning_rate, job_name
from finetune_trainer import contract

KIND_LABEL = "finetunejob"
CONTAINER = "trainer"
CONFIG_FILE = f"{common.CONFIG_MOUNT}/config.json"
TOKEN_MOUNT = "/var/run/secrets/finetune/base-model"
RENDEZVOUS_PORT = 29500
METRICS_PORT = 9090


def trainer_config(name: str, namespace: str, spec: FineTuneJobSpec, inputs: dict[str, Any], config: OperatorConfig) -> contract.TrainerConfig:
    hp = spec.hyperparameters
    targets: list[str] | str = "all-linear" if spec.lora.target_modules == ["all-linear"] else list(spec.lora.target_modules)
    token_file = None
    if spec.base_model.secret_ref is not None:
        token_file = f"{TOKEN_MOUNT}/{spec.base_model.secret_ref.key or 'token'}"
    return contract.TrainerConfig(
        job_name=name,
        namespace=namespace,
        base_model=spec.base_model.uri,
        base_model_token_file=token_file,
        train_data=inputs["train_data"],
        validation_data=inputs.get("validation_data", []),
        validation_split=spec.validation_split or 0.0,
        method=spec.method,
        lora=contract.LoraConfig(r=spec.lora.r, alpha=spec.lora.alpha, dropout=spec.lora.dropout, target_modules=targets),
        hyperparameters=contract.Hyperparameters(
            epochs=hp.epochs,
            batch_size=hp.batch_size,
            learning_rate=effective_learning_rate(spec),
            lr_scheduler=hp.lr_scheduler,
            warmup_ratio=hp.warmup_ratio,
            weight_decay=hp.weight_decay,
            max_seq_length=hp.max_seq_length,
            train_on_inputs=hp.train_on_inputs,
            n_checkpoints=hp.n_checkpoints,
            n_evals=hp.n_evals,
            seed=hp.seed,
            gradient_accumulation_steps=hp.gradient_accumulation_steps,
            packing=hp.packing,
            gradient_checkpointing=hp.gradient_checkpointing,
        ),
        merge=spec.output.merge,
        from_checkpoint=inputs.get("from_checkpoint"),
        output_uri=inputs["artifacts_uri"],
        output_model_name=inputs.get("output_model_name"),
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


def build_trainer_children(owner: dict, spec: FineTuneJobSpec, inputs: dict[str, Any], config: OperatorConfig) -> list[dict]:
    """[ConfigMap, (headless Service), Job] in creation order."""
    meta = owner["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    child = job_name(name)
    owner_ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": name,
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    queue = inputs.get("queue")
    base_labels = common.labels("trainer", KIND_LABEL, name)
    cfg = trainer_config(name, namespace, spec, inputs, config)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": child, "namespace": namespace, "labels": base_labels, "ownerReferences": [owner_ref]},
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
    children.append(build_trainer_job(owner_ref, name, namespace, spec, config, queue, base_labels))
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
    child = job_name(name)
    labels = dict(base_labels)
    if queue:
        labels["kueue.x-k8s.io/queue-name"] = queue
    command, extra_env = _command(spec, child)
    storage_vol, storage_mount = common.storage_volume(config)
    scratch_vols, scratch_mounts = common.scratch_volumes()
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
