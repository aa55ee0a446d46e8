"""Names the operator gives: each kind's children, the label that ties a child to its owner, and where each
object's files live in the object store. The reconcilers, the manifest builders and the handlers all read
them from here, so a name is decided once.

Children have deterministic names, so a retry after a crash finds its own Job instead of making another.
"""

from __future__ import annotations

import hashlib

from finetune_operator.config import OperatorConfig
from finetune_trainer import contract

MAX_NAME_LENGTH = 63
"""Kubernetes object names that are also DNS labels (Services, pod hostnames, label values)."""

OWNER_LABELS = {
    "Dataset": "finetune.dev/dataset",
    "FineTuneJob": "finetune.dev/finetunejob",
    "Evaluation": "finetune.dev/evaluation",
    "InferenceEndpoint": "finetune.dev/inferenceendpoint",
}
"""The label every child (and every pod of a child Job or Deployment) carries with its owner's name."""

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
"""The label the Job controller puts on a Job's pods."""


def owner_label(kind: str) -> str:
    return OWNER_LABELS[kind]


# -- FineTuneJob -------------------------------------------------------------------------------------------


def base_model_short(uri: str) -> str:
    """``hf://meta-llama/Llama-3.2-1B@main`` → ``Llama-3.2-1B``; ``s3://b/models/tiny/`` → ``tiny``."""
    path = uri.split("://", 1)[-1].split("@", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1] or path


MAX_MODEL_NAME_LENGTH = 512
"""status.outputModel.name's limit: a long chain keeps its start (namespace, base model) and its end."""


def output_model_name(namespace: str, name: str, base_model_uri: str, suffix: str | None, continues: str | None = None) -> str:
    """The fine-tuned model's name, the Together pattern: ``<namespace>/<base-model-short>:<suffix>:<job-name>``;
    a job that continues another's model (fromCheckpoint) records the chain: ``<that model's name>:<suffix>:<job-name>``.

    >>> output_model_name("team-a", "polite", "hf://meta-llama/Llama-3.2-1B", "dpo", continues="team-a/Llama-3.2-1B:support:sft")
    'team-a/Llama-3.2-1B:support:sft:dpo:polite'
    """
    parts = [continues] if continues else [f"{namespace}/{base_model_short(base_model_uri)}"]
    if suffix:
        parts.append(suffix)
    parts.append(name)
    full = ":".join(parts)
    if len(full) <= MAX_MODEL_NAME_LENGTH:
        return full
    keep = (MAX_MODEL_NAME_LENGTH - 1) // 2
    return f"{full[:keep]}…{full[-keep:]}"


def trainer_job_name(name: str) -> str:
    """The trainer's Job, its ConfigMap and (several nodes) its headless Service: ``<name>-train``."""
    return f"{name}-train"


def finetunejob_artifacts_uri(config: OperatorConfig, namespace: str, name: str, uid: str, output_uri: str | None = None) -> str:
    """``s3://<bucket>/jobs/<ns>/<name>-<uid>`` (or under spec.output.uri): a new object under an old name never
    reads an old job's checkpoints."""
    if output_uri:
        return contract.join_uri(output_uri, f"{name}-{uid}")
    return f"s3://{config.storage_bucket}/{contract.job_prefix(namespace, name, uid)}"


# -- Dataset -----------------------------------------------------------------------------------------------


def validation_job_name(name: str, generation: int | None) -> str:
    """``<name>-validate-g<generation>``; a long name is shortened with a hash so it fits in 63 characters."""
    suffix = f"-validate-g{generation or 0}"
    if len(name) + len(suffix) <= MAX_NAME_LENGTH:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    keep = MAX_NAME_LENGTH - len(suffix) - len(digest) - 1
    return f"{name[:keep].rstrip('-')}-{digest}{suffix}"


def dataset_output_uri(config: OperatorConfig, namespace: str, name: str) -> str:
    """Where the validator writes ``<sha256>/``: ``s3://<bucket>/datasets/<ns>/<name>``."""
    return f"s3://{config.storage_bucket}/{contract.dataset_prefix(namespace, name)}"


def dataset_report_uri(config: OperatorConfig, namespace: str, name: str, uid: str, generation: int | None) -> str:
    """The check report of one generation: ``.../reports/<generation>-<uid8>.json`` (a Dataset deleted and
    created again under the same name has another uid, so it never reads its predecessor's reports)."""
    return contract.join_uri(dataset_output_uri(config, namespace, name), "reports", f"{generation or 0}-{uid[:8]}.json")


def dataset_folder_uri(config: OperatorConfig, namespace: str, name: str, sha256: str) -> str:
    return contract.join_uri(dataset_output_uri(config, namespace, name), sha256)


# -- Evaluation --------------------------------------------------------------------------------------------


def evaluation_job_name(name: str) -> str:
    return f"{name}-eval"


def evaluation_output_uri(config: OperatorConfig, namespace: str, name: str, uid: str) -> str:
    """``s3://<bucket>/evaluations/<ns>/<name>-<uid>``: a new object under an old name never reads old results."""
    return f"s3://{config.storage_bucket}/{contract.evaluation_prefix(namespace, name, uid)}"


# -- InferenceEndpoint -------------------------------------------------------------------------------------

SERVER_SUFFIX = "-server"
SERVER_PORT = 8000


def server_name(name: str) -> str:
    """The endpoint's ConfigMap, Deployment, Service and HPA: ``<name>-server``."""
    return f"{name}{SERVER_SUFFIX}"


def server_selector_labels(name: str) -> dict[str, str]:
    """The labels that select an endpoint's server pods (the Deployment's selector and the Service's)."""
    return {"app.kubernetes.io/component": "server", OWNER_LABELS["InferenceEndpoint"]: name}


def server_url(name: str, namespace: str) -> str:
    """The OpenAI-compatible base URL inside the cluster."""
    return f"http://{server_name(name)}.{namespace}.svc:{SERVER_PORT}/v1"
