"""The children of an Evaluation: the evaluator's config ConfigMap and the batch/v1 Job that runs
``finetune-trainer evaluate``. Pure functions of (evaluation, spec, resolved inputs, config).

Credentials are mounted as files and only their paths go into the config: the object store keys, each
endpoint's (or judge's) API key, a Hugging Face token for an hf:// base model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune_operator import naming
from finetune_operator.api.common import SecretKeyRef
from finetune_operator.api.evaluation import EvaluationSpec
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import owner_reference
from finetune_operator.manifests import common
from finetune_trainer import contract

KIND_LABEL = "evaluation"
CONTAINER = "evaluator"
CONFIG_FILE = f"{common.CONFIG_MOUNT}/config.json"
API_KEYS_MOUNT = "/var/run/secrets/finetune/api-keys"
HF_TOKEN_MOUNT = "/var/run/secrets/finetune/hf-token"
API_KEY_FILE = "apiKey"
HF_TOKEN_FILE = "token"


@dataclass
class ResolvedModel:
    """One row of the results table, as the evaluation Job reaches it."""

    name: str
    endpoint: str | None = None
    model: str | None = None
    api_key: SecretKeyRef | None = None
    """Secret (and key) of the endpoint's API key; mounted as a file, never copied."""
    model_uri: str | None = None
    adapter_uri: str | None = None
    hf_token: SecretKeyRef | None = None
    """Secret with a Hugging Face token for an hf:// model_uri (a FineTuneJob's baseModel.secretRef)."""


@dataclass
class Inputs:
    dataset_uri: str
    models: list[ResolvedModel]
    judges: dict[str, ResolvedModel] = field(default_factory=dict)
    """The judge of each llm_judge grader, by grader name."""
    output_uri: str = ""


class SecretFiles:
    """One read-only Secret volume per distinct (Secret, key), the key mounted as one named file."""

    def __init__(self) -> None:
        self.volumes: list[dict] = []
        self.mounts: list[dict] = []
        self._paths: dict[tuple[str, str], str] = {}

    def api_key_file(self, ref: SecretKeyRef | None) -> str | None:
        if ref is None:
            return None
        key = (ref.name, ref.key or API_KEY_FILE)
        if key not in self._paths:
            index = len(self._paths)
            folder = f"{API_KEYS_MOUNT}/{index}"
            self.volumes.append(
                {"name": f"api-key-{index}", "secret": {"secretName": ref.name, "defaultMode": 0o440, "items": [{"key": key[1], "path": API_KEY_FILE}]}}
            )
            self.mounts.append({"name": f"api-key-{index}", "mountPath": folder, "readOnly": True})
            self._paths[key] = f"{folder}/{API_KEY_FILE}"
        return self._paths[key]


def _hf_token(inputs: Inputs) -> SecretKeyRef | None:
    """The Hugging Face token of the first hf:// model that names one (the hub client reads one token)."""
    return next((m.hf_token for m in inputs.models if m.hf_token is not None), None)


def _eval_model(model: ResolvedModel, secrets: SecretFiles, trusted_endpoint: bool) -> contract.EvalModel:
    """``trusted_endpoint``: the endpoint is an InferenceEndpoint's Service URL this operator resolved, not a URL the
    tenant wrote (an llm_judge's ``url``), which the pod holds to the rules for tenants' URLs."""
    return contract.EvalModel(
        name=model.name,
        endpoint=model.endpoint,
        model=model.model,
        api_key_file=secrets.api_key_file(model.api_key),
        model_uri=model.model_uri,
        adapter_uri=model.adapter_uri,
        trusted_endpoint=trusted_endpoint and model.endpoint is not None,
    )


def evaluate_config(spec: EvaluationSpec, inputs: Inputs, config: OperatorConfig, secrets: SecretFiles) -> contract.EvaluateConfig:
    graders = []
    for g in spec.graders:
        judge = inputs.judges.get(g.name)
        graders.append(
            contract.GraderSpec(
                name=g.name,
                type=g.type,
                pattern=g.pattern,
                case_sensitive=g.case_sensitive,
                threshold=g.threshold,
                judge=_eval_model(judge, secrets, trusted_endpoint=g.judge is not None and g.judge.url is None) if judge is not None else None,
                rubric=g.rubric,
            )
        )
    gen = spec.generation
    return contract.EvaluateConfig(
        models=[_eval_model(m, secrets, trusted_endpoint=True) for m in inputs.models],  # endpoints only from InferenceEndpoints
        baseline=spec.baseline,
        dataset=inputs.dataset_uri,
        graders=graders,
        generation=contract.GenerationSettings(max_tokens=gen.max_tokens, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed, stop=list(gen.stop)),
        max_samples=spec.max_samples,
        regrade=spec.regrade,
        output_uri=inputs.output_uri,
        storage=contract.StorageConfig(
            endpoint=config.storage_endpoint,
            secure=config.storage_secure,
            region=config.storage_region or None,
            credentials_dir=common.STORAGE_MOUNT,
        ),
        allow_private_urls=config.allow_private_urls,
    )


def build_evaluation_children(owner: dict, spec: EvaluationSpec, inputs: Inputs, config: OperatorConfig) -> list[dict]:
    """[ConfigMap, Job] in creation order."""
    meta = owner["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    child = naming.evaluation_job_name(name)
    owner_ref = owner_reference(owner)
    labels = common.labels("evaluator", KIND_LABEL, name)
    secrets = SecretFiles()
    cfg = evaluate_config(spec, inputs, config, secrets)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": child, "namespace": namespace, "labels": labels, "ownerReferences": [owner_ref]},
        "data": {"config.json": cfg.to_json()},
    }
    return [configmap, build_evaluation_job(owner_ref, child, namespace, spec, inputs, config, labels, secrets)]


def _pvc_claims(inputs: Inputs) -> list[str]:
    claims: list[str] = []
    for m in inputs.models:
        for uri in (m.model_uri, m.adapter_uri):
            if uri and uri.startswith("pvc://"):
                claim = uri[len("pvc://") :].split("/", 1)[0]
                if claim not in claims:
                    claims.append(claim)
    return claims


def build_evaluation_job(
    owner_ref: dict, child: str, namespace: str, spec: EvaluationSpec, inputs: Inputs, config: OperatorConfig, labels: dict[str, str], secrets: SecretFiles
) -> dict:
    storage_vol, storage_mount = common.storage_volume(config)
    scratch_vols, scratch_mounts = common.scratch_volumes(config)
    volumes = [{"name": "config", "configMap": {"name": child}}, storage_vol, *scratch_vols, *secrets.volumes]
    mounts = [{"name": "config", "mountPath": common.CONFIG_MOUNT, "readOnly": True}, storage_mount, *scratch_mounts, *secrets.mounts]
    env = common.base_env() + [{"name": "FINETUNE_PVC_ROOT", "value": config.pvc_mount_root}]
    token = _hf_token(inputs)
    if token is not None:
        volumes.append({"name": "hf-token", "secret": {"secretName": token.name, "defaultMode": 0o440, "items": [{"key": token.key or HF_TOKEN_FILE, "path": HF_TOKEN_FILE}]}})
        mounts.append({"name": "hf-token", "mountPath": HF_TOKEN_MOUNT, "readOnly": True})
        env.append({"name": "HF_TOKEN_PATH", "value": f"{HF_TOKEN_MOUNT}/{HF_TOKEN_FILE}"})
    for i, claim in enumerate(_pvc_claims(inputs)):
        volumes.append({"name": f"model-pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"model-pvc-{i}", "mountPath": f"{config.pvc_mount_root}/{claim}", "readOnly": True})
    resources = spec.resources
    container = common.job_container({
        "name": CONTAINER,
        "image": config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["finetune-trainer", "evaluate", "--config", CONFIG_FILE],
        "env": env,
        "resources": common.resources(config, resources.gpus, resources.cpu, resources.memory),
        "volumeMounts": mounts,
    })
    pod_spec = common.job_pod_spec(container, volumes, terminationGracePeriodSeconds=30,
                                   **common.gpu_placement(config, resources.gpu_type, resources.gpus))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": child, "namespace": namespace, "labels": labels, "ownerReferences": [owner_ref]},
        "spec": {
            "backoffLimit": config.backoff_limit,
            "activeDeadlineSeconds": config.evaluation_deadline_seconds,
            "podFailurePolicy": {
                "rules": [
                    # A bad config or dataset (an unknown grader, a regex that does not compile): another
                    # try reads the same config; fail the Job at once.
                    {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [int(contract.ExitCode.BAD_INPUT)]}},
                    # Preemption, eviction, node drain: not the evaluator's fault; do not count it.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
