"""The children of an InferenceEndpoint: a ConfigMap, the server Deployment, its Service and, when
``replicas.min < replicas.max``, a HorizontalPodAutoscaler. Pure functions of (endpoint, spec, adapters, config).

Two runtimes:

* ``builtin``: the trainer image's ``finetune-trainer serve``. Its ``ServeConfig`` (``serve.json``) lives
  in the ConfigMap, mounted as a folder (not ``subPath``, so the kubelet swaps in new content); the
  server re-reads it and hot-loads or unloads adapters. The adapters are in the ConfigMap only: adding
  one changes the ConfigMap, never the pod template, so no pod restarts.
* ``vllm``: the vLLM OpenAI server. An init container (trainer image, ``finetune-trainer fetch``) puts
  the base model and the adapters from the object store on emptyDirs and checks the spec against what
  vLLM accepts for this model (context length, attention heads, adapter ranks); the adapters are named on the
  command line, and the pod template carries a hash of the adapter list, so a change rolls the
  Deployment (old pods serve until new ones are Ready). ``finetune_vllm_auth`` (from the ConfigMap,
  loaded with ``--middleware``) puts every route except ``/health`` and ``/metrics`` behind the API key.

Names are deterministic: ConfigMap, Deployment, Service and HPA are all ``<endpoint>-server``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any

from finetune_operator.api.inferenceendpoint import InferenceEndpointSpec
from finetune_operator import naming
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests import common, vllm_auth
from finetune_trainer import contract

KIND_LABEL = "inferenceendpoint"
COMPONENT = "server"
CONTAINER = "server"
FETCH_CONTAINER = "fetch"
PORT = naming.SERVER_PORT
PORT_NAME = "http"
SERVE_CONFIG_FILE = "serve.json"
FETCH_CONFIG_FILE = "fetch.json"
AUTH_MODULE = "finetune_vllm_auth"
PYTHON_DIR = f"{common.CONFIG_MOUNT}/python"
API_KEY_MOUNT = "/var/run/secrets/finetune/api-key"
TOKEN_MOUNT = "/var/run/secrets/finetune/base-model"
MODELS_MOUNT = "/models"
ADAPTERS_MOUNT = "/adapters"
VLLM_BASE_DIR = f"{MODELS_MOUNT}/base"
ADAPTERS_HASH_ANNOTATION = "finetune.dev/adapters-hash"
ADAPTER_LOADING_LABEL = "finetune.dev/adapter-loading"
"""``runtime`` on a vllm Deployment whose adapters a sidecar loads at run time (see ``build_server_children``)."""
ADAPTERS_CONFIG_FILE = "adapters.json"
ADAPTERS_CONTAINER = "adapters"
ADAPTER_STATE_FILE = f"{ADAPTERS_MOUNT}/.state.json"
AUTOSCALING_METRIC_ANNOTATION = "finetune.dev/autoscaling-metric"
"""On the InferenceEndpoint: ``cpu`` (default) or ``in-flight-requests`` (needs a custom metrics adapter)."""
INFLIGHT_METRIC = "finetune_inflight_requests"
CPU_TARGET_UTILIZATION = 70
DEFAULT_API_KEY = "apiKey"
DRAIN_SECONDS = 25


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter resolved to a URI, ready to be handed to the server."""

    name: str
    uri: str


def child_name(name: str) -> str:
    """The name of every child: ``<endpoint>-server``."""
    return naming.server_name(name)


def effective_runtime(spec: InferenceEndpointSpec) -> str:
    """``spec.runtime``, or vllm when the replicas have GPUs, else builtin."""
    if spec.runtime:
        return spec.runtime
    return "vllm" if spec.resources.gpus > 0 else "builtin"


def served_model_name(name: str, spec: InferenceEndpointSpec) -> str:
    return spec.served_model_name or name


service_url = naming.server_url
selector_labels = naming.server_selector_labels


def adapters_hash(adapters: list[ServedAdapter]) -> str:
    """A short hash of the adapter list (names and URIs, in order): the vllm pod template carries it."""
    data = json.dumps([[a.name, a.uri] for a in adapters], separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def adapter_dir(adapter_name: str) -> str:
    """A local folder for an adapter: its name made path-safe, plus a short hash so two names never collide."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", adapter_name).strip("-.")[:48] or "adapter"
    return f"{ADAPTERS_MOUNT}/{slug}-{hashlib.sha256(adapter_name.encode()).hexdigest()[:8]}"


def pvc_path(uri: str, config: OperatorConfig) -> tuple[str, str]:
    """``pvc://claim/path`` → (claim, the path in the pod)."""
    claim, _, path = uri[len("pvc://") :].partition("/")
    return claim, f"{config.pvc_mount_root}/{claim}" + (f"/{path.strip('/')}" if path.strip("/") else "")


def _storage(config: OperatorConfig) -> contract.StorageConfig:
    return contract.StorageConfig(
        endpoint=config.storage_endpoint,
        secure=config.storage_secure,
        region=config.storage_region or None,
        credentials_dir=common.STORAGE_MOUNT,
    )


def api_key_file(spec: InferenceEndpointSpec) -> str | None:
    if spec.api_key_secret_ref is None:
        return None
    return f"{API_KEY_MOUNT}/{spec.api_key_secret_ref.key or DEFAULT_API_KEY}"


def serve_config(name: str, spec: InferenceEndpointSpec, adapters: list[ServedAdapter], config: OperatorConfig) -> contract.ServeConfig:
    """The builtin server's config file (``serve.json``)."""
    base = spec.base_model.uri
    if base.startswith("pvc://"):
        base = pvc_path(base, config)[1]
    return contract.ServeConfig(
        base_model=base,
        served_model_name=served_model_name(name, spec),
        adapters=[contract.AdapterRef(name=a.name, uri=a.uri) for a in adapters],
        api_key_file=api_key_file(spec),
        host="0.0.0.0",
        port=PORT,
        max_model_len=spec.max_model_len,
        storage=_storage(config),
    )


def fetch_config(spec: InferenceEndpointSpec, adapters: list[ServedAdapter], config: OperatorConfig) -> contract.FetchConfig:
    """What the vllm runtime's init container does before vLLM starts: download an s3:// base model and every
    adapter, then check the base model's config.json and the adapters' ranks against what vLLM accepts with
    this spec (``maxModelLen``, the GPUs as tensor parallel size, ``maxLoraRank``). A base model that is not
    downloaded has only its config.json read: from the mounted claim (pvc://) or the Hub (hf://)."""
    base = spec.base_model.uri
    items = []
    base_model = None
    if base.startswith("s3://"):
        items.append(contract.FetchItem(uri=base, dest=VLLM_BASE_DIR, kind="model"))
    elif base.startswith("pvc://"):
        base_model = pvc_path(base, config)[1]
    else:
        base_model = base
    items += [contract.FetchItem(uri=a.uri, dest=adapter_dir(a.name), kind="adapter") for a in adapters]
    token_file = None
    if spec.base_model.secret_ref is not None and base.startswith("hf://"):
        token_file = f"{TOKEN_MOUNT}/{spec.base_model.secret_ref.key or 'token'}"
    limits = contract.ServingLimits(
        max_model_len=spec.max_model_len, tensor_parallel_size=max(1, spec.resources.gpus), max_lora_rank=spec.max_lora_rank
    )
    return contract.FetchConfig(
        items=items, base_model=base_model, base_model_token_file=token_file, limits=limits, storage=_storage(config)
    )


def vllm_env() -> list[dict[str, Any]]:
    """What vLLM needs to start as an arbitrary UID on a read-only root filesystem.

    The pod's UID has no passwd entry in the vLLM image, so ``getpass.getuser()`` (torch inductor's cache
    directory, called while vLLM compiles the model) raises ``KeyError`` unless ``USER``/``LOGNAME`` say who
    it is; the caches go to the writable cache emptyDir.
    """
    cache = "/var/cache/finetune"
    return [
        {"name": "USER", "value": "finetune"},
        {"name": "LOGNAME", "value": "finetune"},
        {"name": "XDG_CACHE_HOME", "value": cache},
        {"name": "VLLM_CACHE_ROOT", "value": f"{cache}/vllm"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{cache}/torchinductor"},
        {"name": "TRITON_CACHE_DIR", "value": f"{cache}/triton"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
    ]


def vllm_args(
    name: str, spec: InferenceEndpointSpec, adapters: list[ServedAdapter], config: OperatorConfig, runtime_lora_loading: bool = False
) -> list[str]:
    """The vLLM OpenAI server's arguments (after ``python3 -m vllm.entrypoints.openai.api_server``).

    With adapters loaded at run time none is named here, and vLLM also listens on loopback for the sidecar."""
    base = spec.base_model.uri
    revision = None
    if base.startswith("s3://"):
        model = VLLM_BASE_DIR
    elif base.startswith("pvc://"):
        model = pvc_path(base, config)[1]
    else:  # hf://org/name[@revision]: vLLM downloads it through the Hugging Face cache
        model, _, revision = base[len("hf://") :].partition("@")
    args = ["--model", model]
    if revision:
        args += ["--revision", revision]
    args += [
        "--served-model-name", served_model_name(name, spec),
        "--host=0.0.0.0" if runtime_lora_loading else "--host=$(POD_IP)",
        "--port", str(PORT),
        "--max-model-len", str(spec.max_model_len),
        "--enable-lora",
        "--max-loras", str(spec.max_loras),
        "--max-lora-rank", str(spec.max_lora_rank),
    ]  # fmt: skip
    if spec.resources.gpus > 1:
        args += ["--tensor-parallel-size", str(spec.resources.gpus)]
    if adapters and not runtime_lora_loading:
        args += ["--lora-modules", *[f"{a.name}={adapter_dir(a.name)}" for a in adapters]]
    args += ["--middleware", f"{AUTH_MODULE}.RequireApiKey", "--disable-uvicorn-access-log"]
    return args


def vllm_adapters_config(spec: InferenceEndpointSpec, adapters: list[ServedAdapter], config: OperatorConfig) -> contract.VllmAdaptersConfig:
    """What the adapter sidecar keeps loaded in vLLM (``finetune-trainer vllm-adapters``)."""
    return contract.VllmAdaptersConfig(
        adapters=[contract.VllmAdapter(name=a.name, uri=a.uri, dest=adapter_dir(a.name)) for a in adapters],
        server=f"http://127.0.0.1:{PORT}",
        api_key_file=api_key_file(spec),
        max_lora_rank=spec.max_lora_rank,
        state_file=ADAPTER_STATE_FILE,
        storage=_storage(config),
    )


def build_server_children(
    owner: dict, spec: InferenceEndpointSpec, adapters: list[ServedAdapter], config: OperatorConfig, runtime_lora_loading: bool = False
) -> list[dict]:
    """[ConfigMap, Deployment, Service, (NetworkPolicy), (HorizontalPodAutoscaler)] in creation order.

    ``runtime_lora_loading`` (vllm): the adapters are not part of the pod template but of the ConfigMap, and a
    sidecar (``finetune-trainer vllm-adapters``) loads and unloads them in the running vLLM server, as the
    builtin server does itself: an adapter change restarts no pod, so it needs no spare GPUs. The pod's
    ``/health`` then reports each adapter's state like the builtin server's, and the Deployment carries the
    label ``finetune.dev/adapter-loading: runtime``; the status must be read from there, not from the rollout.
    """
    meta = owner["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    owner_ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": name,
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    runtime = effective_runtime(spec)
    at_run_time = runtime_lora_loading and runtime == "vllm"
    extra = {"finetune.dev/runtime": runtime, **({ADAPTER_LOADING_LABEL: "runtime"} if at_run_time else {})}
    labels = common.labels(COMPONENT, KIND_LABEL, name, extra)
    child = child_name(name)
    children = [build_config_map(owner_ref, name, namespace, spec, adapters, config, labels, runtime, at_run_time)]
    children.append(build_deployment(owner_ref, name, namespace, spec, adapters, config, labels, runtime, at_run_time))
    children.append(build_service(owner_ref, name, namespace, labels))
    if config.network_policies:
        children.append(build_network_policy(owner_ref, name, namespace, spec, labels, config))
    if spec.replicas.min < spec.replicas.max:
        metric = (meta.get("annotations") or {}).get(AUTOSCALING_METRIC_ANNOTATION, "cpu")
        children.append(build_hpa(owner_ref, child, namespace, spec, labels, metric))
    return children


def build_config_map(
    owner_ref: dict, name: str, namespace: str, spec: InferenceEndpointSpec, adapters: list[ServedAdapter],
    config: OperatorConfig, labels: dict[str, str], runtime: str, runtime_lora_loading: bool = False,
) -> dict:  # fmt: skip
    if runtime == "builtin":
        data = {SERVE_CONFIG_FILE: serve_config(name, spec, adapters, config).to_json()}
    elif runtime_lora_loading:
        data = {
            FETCH_CONFIG_FILE: fetch_config(spec, [], config).to_json(),
            ADAPTERS_CONFIG_FILE: vllm_adapters_config(spec, adapters, config).to_json(),
            f"{AUTH_MODULE}.py": inspect.getsource(vllm_auth),
        }
    else:
        data = {FETCH_CONFIG_FILE: fetch_config(spec, adapters, config).to_json(), f"{AUTH_MODULE}.py": inspect.getsource(vllm_auth)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": child_name(name), "namespace": namespace, "labels": labels, "ownerReferences": [owner_ref]},
        "data": data,
    }


def _probe(path: str, period: int, failure_threshold: int, timeout: int = 2) -> dict:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failure_threshold,
    }


@dataclass
class _PodParts:
    """What the server pod is assembled from, as each runtime adds to it."""

    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    env: list[dict[str, Any]]
    scratch_mounts: list[dict[str, Any]]
    annotations: dict[str, str] = field(default_factory=dict)
    init_containers: list[dict] = field(default_factory=list)
    sidecars: list[dict] = field(default_factory=list)


def _pod_parts(child: str, spec: InferenceEndpointSpec, config: OperatorConfig) -> _PodParts:
    """The volumes, mounts and env every runtime has: config, scratch, API key, base model token or claim."""
    scratch_vols, scratch_mounts = common.scratch_volumes()
    parts = _PodParts(
        volumes=[{"name": "config", "configMap": {"name": child}}, *scratch_vols],
        mounts=[{"name": "config", "mountPath": common.CONFIG_MOUNT, "readOnly": True}, *scratch_mounts],
        env=common.base_env() + [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        scratch_mounts=scratch_mounts,
        annotations={"prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"},
    )
    if spec.api_key_secret_ref is not None:
        parts.volumes.append({"name": "api-key", "secret": {"secretName": spec.api_key_secret_ref.name, "defaultMode": 0o440}})
        parts.mounts.append({"name": "api-key", "mountPath": API_KEY_MOUNT, "readOnly": True})
    if spec.base_model.secret_ref is not None:
        parts.volumes.append({"name": "base-model-token", "secret": {"secretName": spec.base_model.secret_ref.name, "defaultMode": 0o440}})
        parts.mounts.append({"name": "base-model-token", "mountPath": TOKEN_MOUNT, "readOnly": True})
        if spec.base_model.uri.startswith("hf://"):
            parts.env.append({"name": "HF_TOKEN_PATH", "value": f"{TOKEN_MOUNT}/{spec.base_model.secret_ref.key or 'token'}"})
    if spec.base_model.uri.startswith("pvc://"):
        claim, _ = pvc_path(spec.base_model.uri, config)
        parts.volumes.append({"name": "base-model-pvc", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        parts.mounts.append({"name": "base-model-pvc", "mountPath": f"{config.pvc_mount_root}/{claim}", "readOnly": True})
    return parts


def _builtin_container(parts: _PodParts, config: OperatorConfig) -> dict:
    """``finetune-trainer serve``: it loads the base model and hot-loads adapters itself."""
    # The storage credentials are mounted whatever the spec says now: an s3:// adapter added later
    # is hot-loaded without changing the pod template.
    storage_vol, storage_mount = common.storage_volume(config)
    parts.volumes.append(storage_vol)
    parts.mounts.append(storage_mount)
    return {
        "name": CONTAINER,
        "image": config.effective_server_image,
        "command": ["finetune-trainer", "serve", "--config", f"{common.CONFIG_MOUNT}/{SERVE_CONFIG_FILE}", "--host=$(POD_IP)", f"--port={PORT}"],
        "readinessProbe": _probe("/readyz", period=5, failure_threshold=2),
        "livenessProbe": _probe("/healthz", period=10, failure_threshold=3),
        # Importing torch can take a while on a busy node: liveness starts once /healthz first answers.
        "startupProbe": _probe("/healthz", period=2, failure_threshold=90),
    }


def _vllm_container(
    parts: _PodParts, name: str, spec: InferenceEndpointSpec, adapters: list[ServedAdapter], config: OperatorConfig, runtime_lora_loading: bool
) -> dict:
    """vLLM's OpenAI server, after a fetch init container (and beside the adapter sidecar when adapters load at run time)."""
    storage_vol, storage_mount = common.storage_volume(config)
    parts.volumes += [{"name": "models", "emptyDir": {}}, {"name": "adapters", "emptyDir": {}}]
    data_mounts = [{"name": "models", "mountPath": MODELS_MOUNT}, {"name": "adapters", "mountPath": ADAPTERS_MOUNT}]
    parts.env += [{"name": "PYTHONPATH", "value": PYTHON_DIR}, *vllm_env()]
    if spec.api_key_secret_ref is not None:
        parts.env.append({"name": vllm_auth.API_KEY_FILE_ENV, "value": api_key_file(spec)})
    # The auth module sits in the ConfigMap next to fetch.json; PYTHONPATH points at it.
    items = [{"key": FETCH_CONFIG_FILE, "path": FETCH_CONFIG_FILE}, {"key": f"{AUTH_MODULE}.py", "path": f"python/{AUTH_MODULE}.py"}]
    parts.volumes[0]["configMap"]["items"] = items
    if runtime_lora_loading:
        items.append({"key": ADAPTERS_CONFIG_FILE, "path": ADAPTERS_CONFIG_FILE})
        parts.env += [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}, {"name": vllm_auth.STATE_FILE_ENV, "value": ADAPTER_STATE_FILE}]
    # The fetch always runs: it downloads what the object store holds and checks the spec against the
    # model (context length, attention heads, adapter ranks) before vLLM would refuse it.
    fetch = fetch_config(spec, [] if runtime_lora_loading else adapters, config)
    fetch_mounts = [{"name": "config", "mountPath": common.CONFIG_MOUNT, "readOnly": True}, *parts.scratch_mounts, *data_mounts]
    if fetch.items or runtime_lora_loading:
        parts.volumes.append(storage_vol)
    if fetch.items:
        fetch_mounts.append(storage_mount)
    fetch_mounts += [m for m in parts.mounts if m["name"] in ("base-model-token", "base-model-pvc")]
    parts.init_containers.append(
        {
            "name": FETCH_CONTAINER,
            "image": config.trainer_image,
            "imagePullPolicy": config.image_pull_policy,
            "command": ["finetune-trainer", "fetch", "--config", f"{common.CONFIG_MOUNT}/{FETCH_CONFIG_FILE}"],
            "env": common.base_env(),
            "resources": common.resources(config, 0, spec.resources.cpu, spec.resources.memory),
            "securityContext": common.container_security_context(),
            "volumeMounts": fetch_mounts,
            "terminationMessagePath": common.TERMINATION_LOG,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )
    parts.mounts += data_mounts
    if runtime_lora_loading:
        # The adapter list lives in the ConfigMap only: a change restarts no pod (no spare GPUs needed).
        parts.sidecars.append(_adapters_sidecar(spec, config, storage_mount, parts.scratch_mounts, parts.mounts))
    else:
        parts.annotations[ADAPTERS_HASH_ANNOTATION] = adapters_hash(adapters)
    return {
        "name": CONTAINER,
        "image": config.vllm_image,
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_args(name, spec, adapters, config, runtime_lora_loading),
        "readinessProbe": _probe("/health", period=5, failure_threshold=2),
        "livenessProbe": _probe("/health", period=10, failure_threshold=3, timeout=5),
        # Loading weights onto GPUs takes minutes: liveness starts once /health first answers (30 min at most).
        "startupProbe": _probe("/health", period=10, failure_threshold=180, timeout=5),
    }


def build_deployment(
    owner_ref: dict, name: str, namespace: str, spec: InferenceEndpointSpec, adapters: list[ServedAdapter],
    config: OperatorConfig, labels: dict[str, str], runtime: str, runtime_lora_loading: bool = False,
) -> dict:  # fmt: skip
    child = child_name(name)
    parts = _pod_parts(child, spec, config)
    if runtime == "builtin":
        container = _builtin_container(parts, config)
    else:
        container = _vllm_container(parts, name, spec, adapters, config, runtime_lora_loading)
    container.update(
        {
            "imagePullPolicy": config.image_pull_policy,
            "env": parts.env,
            "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
            "resources": common.resources(config, spec.resources.gpus, spec.resources.cpu, spec.resources.memory),
            "securityContext": common.container_security_context(),
            "volumeMounts": parts.mounts,
            "terminationMessagePath": common.TERMINATION_LOG,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": common.pod_security_context(),
        "terminationGracePeriodSeconds": DRAIN_SECONDS + 5,
        "containers": [container, *parts.sidecars],
        "volumes": parts.volumes,
        **common.gpu_placement(config, spec.resources.gpu_type, spec.resources.gpus),
    }
    if parts.init_containers:
        pod_spec["initContainers"] = parts.init_containers
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(name)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {"metadata": {"labels": labels, "annotations": parts.annotations}, "spec": pod_spec},
    }
    if spec.replicas.min == spec.replicas.max:
        deployment_spec["replicas"] = spec.replicas.min  # with an HPA, the HPA owns spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": child, "namespace": namespace, "labels": labels, "ownerReferences": [owner_ref]},
        "spec": deployment_spec,
    }


def _adapters_sidecar(spec: InferenceEndpointSpec, config: OperatorConfig, storage_mount: dict, scratch_mounts: list[dict], mounts: list[dict]) -> dict:
    """``finetune-trainer vllm-adapters`` beside vLLM: it downloads, checks, loads and unloads the adapters."""
    shared = [m for m in mounts if m["name"] in ("config", "adapters", "api-key")]
    return {
        "name": ADAPTERS_CONTAINER,
        "image": config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["finetune-trainer", "vllm-adapters", "--config", f"{common.CONFIG_MOUNT}/{ADAPTERS_CONFIG_FILE}"],
        "env": common.base_env(),
        "resources": common.resources(config, 0, "500m", "1Gi"),
        "securityContext": common.container_security_context(),
        "volumeMounts": [*shared, storage_mount, *[m for m in scratch_mounts if m["name"] != "dshm"]],
        "terminationMessagePath": common.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def build_service(owner_ref: dict, name: str, namespace: str, labels: dict[str, str]) -> dict:
    """Only the API port: the cluster reaches the server through it and nothing else."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": child_name(name), "namespace": namespace, "labels": labels, "ownerReferences": [owner_ref]},
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def ingress_namespaces(namespace: str, spec: InferenceEndpointSpec, config: OperatorConfig) -> list[str]:
    """The namespaces whose pods may reach the endpoint's API: its own, the admin's, the spec's."""
    return sorted({namespace, *config.server_ingress_namespaces, *spec.network.allow_from_namespaces})


def build_network_policy(owner_ref: dict, name: str, namespace: str, spec: InferenceEndpointSpec, labels: dict[str, str], config: OperatorConfig) -> dict:
    """Only pods of ``ingress_namespaces`` reach the server pods, and only on the API port. Namespaces are
    matched by ``kubernetes.io/metadata.name``, the label the API server sets on every namespace and no one
    else can change. Egress is left alone: the pods fetch from the store (and vLLM's sidecar from its pod)."""
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}} for ns in ingress_namespaces(namespace, spec, config)]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": child_name(name), "namespace": namespace, "labels": labels, "ownerReferences": [owner_ref]},
        "spec": {
            "podSelector": {"matchLabels": selector_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"port": PORT_NAME, "protocol": "TCP"}]}],
        },
    }


def build_hpa(owner_ref: dict, child: str, namespace: str, spec: InferenceEndpointSpec, labels: dict[str, str], metric: str) -> dict:
    """autoscaling/v2 between replicas.min and replicas.max.

    ``in-flight-requests``: the Pods metric ``finetune_inflight_requests`` (requests running or waiting per
    pod, served by a custom metrics adapter; docs/serving.md has the Prometheus Adapter rule) aimed at
    ``replicas.targetConcurrency``. ``cpu`` (the default, works with metrics-server alone): CPU utilisation.
    """
    if metric == "in-flight-requests":
        metrics = [{"type": "Pods", "pods": {"metric": {"name": INFLIGHT_METRIC}, "target": {"type": "AverageValue", "averageValue": str(spec.replicas.target_concurrency)}}}]
    else:
        metrics = [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": CPU_TARGET_UTILIZATION}}}]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": child, "namespace": namespace, "labels": labels, "ownerReferences": [owner_ref]},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": child},
            "minReplicas": max(1, spec.replicas.min),
            "maxReplicas": spec.replicas.max,
            "metrics": metrics,
        },
    }
