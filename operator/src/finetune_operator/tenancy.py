"""One namespace is one tenant. Everything a tenant's objects name or produce lives under that namespace's own
prefixes of the object store, or under prefixes the cluster admin declares shared (and read-only); anything
else is refused before a pod runs, with the field, the URI and the rule. What the operator reads back from a
tenant-writable place (a trainer's progress.json, a validator's report, an evaluator's summary) is held to the
same rule: a path in it must lie under the object's own prefix.

A namespace's own prefixes, in the operator's bucket: ``datasets/<ns>/``, ``jobs/<ns>/``, ``evaluations/<ns>/``,
``uploads/<ns>/`` (where ``finetune dataset create`` puts files, and a tenant its own base models). A
catalogue of base models every tenant may use is a shared prefix (``FINETUNE_SHARED_PREFIXES``, e.g. ``models/``).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable

from finetune_operator.config import OperatorConfig
from finetune_trainer import contract

AREAS = ("datasets", "jobs", "evaluations", "uploads")
"""The top-level folders of the bucket; under each, one folder per namespace."""
CONSENT_LABEL = "finetune.dev/allow-use"
"""A Secret may be named in a spec only when it carries this label with the value "true": its owner's consent to
the operator mounting it into the tenant's pods (and, for a token, sending it where the spec says)."""


class Refused(ValueError):
    """A URI a tenant may not use; the message names the rule."""


def s3_parts(uri: str) -> tuple[str, list[str]]:
    """(bucket, key segments) of an ``s3://`` URI, refusing keys that could mean another place once joined to a
    folder or a URL: ``.`` and ``..`` segments, empty segments, backslashes, control characters."""
    try:
        bucket, key = contract.parse_s3_uri(uri)
    except ValueError as e:
        raise Refused(str(e)) from None
    if not key:
        return bucket, []
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise Refused(f"{uri}: a path segment may not be empty, '.' or '..'")
        if "\\" in segment or any(ord(ch) < 32 for ch in segment):
            raise Refused(f"{uri}: backslashes and control characters are not allowed in a path")
    return bucket, segments


def own_prefixes(config: OperatorConfig, namespace: str) -> list[str]:
    return [f"s3://{config.storage_bucket}/{area}/{namespace}" for area in AREAS]


def _under(uri: str, prefix: str) -> bool:
    bucket, segments = s3_parts(uri)
    pbucket, psegments = s3_parts(prefix)
    return bucket == pbucket and segments[: len(psegments)] == psegments


def _own_words(config: OperatorConfig, namespace: str) -> str:
    return f"s3://{config.storage_bucket}/{{{','.join(AREAS)}}}/{namespace}/"


def check_read(uri: str, field: str, namespace: str, config: OperatorConfig) -> str | None:
    """None when a tenant of ``namespace`` may read ``uri``; else the problem, naming the field and the rule."""
    try:
        if uri.startswith("s3://"):
            if any(_under(uri, p) for p in own_prefixes(config, namespace)):
                return None
            if any(_under(uri, p) for p in config.shared_prefixes):
                return None
            shared = f" or a shared prefix ({', '.join(config.shared_prefixes)})" if config.shared_prefixes else ""
            return f"{field}: {uri} is outside this namespace's storage ({_own_words(config, namespace)}){shared}"
        if uri.startswith("pvc://"):
            claim, _, path = uri[len("pvc://") :].partition("/")
            if not claim or any(s in (".", "..") for s in path.split("/")):
                return f"{field}: {uri}: a pvc:// path names a claim of this namespace and a path inside it, without '.' or '..'"
            return None
        if uri.startswith("https://") or uri.startswith("http://"):
            return check_url(uri, field, config)
        return None  # hf:// (public models; a token only by its Secret's consent)
    except Refused as e:
        return f"{field}: {e}"


def check_write(uri: str, field: str, namespace: str, config: OperatorConfig) -> str | None:
    """None when a tenant of ``namespace`` may write under ``uri`` (its own prefixes only, never a shared one)."""
    try:
        if uri.startswith("s3://") and any(_under(uri, p) for p in own_prefixes(config, namespace)):
            return None
    except Refused as e:
        return f"{field}: {e}"
    return f"{field}: {uri} is outside this namespace's storage ({_own_words(config, namespace)}); output is written there only"


def check_url(url: str, field: str, config: OperatorConfig) -> str | None:
    """A URL a pod may fetch from: not a loopback, link-local or private address (the node's metadata service,
    the cluster's own services) unless the admin allows private addresses."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if config.allow_private_urls:
        return None
    if host in ("localhost",) or host.endswith(".localhost") or host.endswith(".svc") or host.endswith(".cluster.local"):
        return f"{field}: {url}: a cluster-internal or loopback host; the admin may allow private addresses (FINETUNE_ALLOW_PRIVATE_URLS)"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None  # a name: the pod checks the addresses it resolves to before it connects
    if address.is_loopback or address.is_link_local or address.is_private or address.is_reserved or address.is_unspecified or address.is_multicast:
        return f"{field}: {url}: {address} is a loopback, link-local or private address; the admin may allow private addresses (FINETUNE_ALLOW_PRIVATE_URLS)"
    return None


def under_own_prefix(uri: str | None, prefix: str) -> bool:
    """Whether a path read back from the store (a model, a checkpoint, a report's files) lies under ``prefix``:
    the object's own folder, which only its own pods write."""
    if not uri:
        return False
    try:
        return _under(uri, prefix)
    except Refused:
        return False


def problems(checks: Iterable[str | None]) -> list[str]:
    return [p for p in checks if p]


# -- what each kind names ------------------------------------------------------------------------------------


def dataset_problems(spec, namespace: str, config: OperatorConfig) -> list[str]:  # spec: api.dataset.DatasetSpec
    checks = []
    if spec.source.uri:
        checks.append(check_read(spec.source.uri, "spec.source.uri", namespace, config))
    if spec.tokenizer:
        checks.append(check_read(spec.tokenizer, "spec.tokenizer", namespace, config))
    return problems(checks)


def finetunejob_problems(spec, namespace: str, config: OperatorConfig) -> list[str]:  # spec: api.finetunejob.FineTuneJobSpec
    checks = [check_read(spec.base_model.uri, "spec.baseModel.uri", namespace, config)]
    if spec.output.uri:
        checks.append(check_write(spec.output.uri, "spec.output.uri", namespace, config))
    return problems(checks)


def endpoint_problems(spec, namespace: str, config: OperatorConfig) -> list[str]:  # spec: api.inferenceendpoint.InferenceEndpointSpec
    checks = [check_read(spec.base_model.uri, "spec.baseModel.uri", namespace, config)]
    checks += [check_read(a.uri, f"spec.adapters[{i}].uri", namespace, config) for i, a in enumerate(spec.adapters) if a.uri]
    return problems(checks)


def evaluation_problems(spec, namespace: str, config: OperatorConfig) -> list[str]:  # spec: api.evaluation.EvaluationSpec
    checks = [check_read(m.base_model, f"spec.models[{i}].baseModel", namespace, config) for i, m in enumerate(spec.models) if m.base_model]
    checks += [check_url(g.judge.url, f"spec.graders[{i}].judge.url", config) for i, g in enumerate(spec.graders) if g.judge and g.judge.url]
    return problems(checks)


# -- Secrets by consent --------------------------------------------------------------------------------------

SECRET_NOT_FOUND = "SecretNotFound"
SECRET_NOT_ALLOWED = "SecretNotAllowed"
STORAGE_KEY_NOT_SCOPED = "StorageKeyNotScoped"
STORAGE_SCOPE_LABEL = "finetune.dev/storage-namespace"
"""On a namespace's store Secret: the namespace its key is scoped to (``finetune_operator.storage_keys grant``)."""


def named_secrets(spec) -> list[tuple[str, str]]:
    """(field, Secret name) of every Secret a spec of any kind names, in the user's field names."""
    found: list[tuple[str, str]] = []
    source = getattr(spec, "source", None)
    if source is not None and source.secret_ref is not None:
        found.append(("spec.source.secretRef", source.secret_ref.name))
    base = getattr(spec, "base_model", None)
    if base is not None and not isinstance(base, str) and base.secret_ref is not None:
        found.append(("spec.baseModel.secretRef", base.secret_ref.name))
    key = getattr(spec, "api_key_secret_ref", None)
    if key is not None:
        found.append(("spec.apiKeySecretRef", key.name))
    for i, grader in enumerate(getattr(spec, "graders", None) or []):
        if grader.judge is not None and grader.judge.api_key_secret_ref is not None:
            found.append((f"spec.graders[{i}].judge.apiKeySecretRef", grader.judge.api_key_secret_ref.name))
    return found


def secret_problem(spec, labels: dict[str, dict[str, str] | None] | None, namespace: str, config: OperatorConfig) -> tuple[str, str] | None:
    """(reason, message) when a Secret the spec names is missing, or its owner has not allowed its use, or (with
    ``FINETUNE_STORAGE_SCOPED_KEYS``) the namespace's store key is not one scoped to it; ``labels`` are the
    Secrets' labels as read (None for a missing Secret). ``labels`` None: not read, nothing said."""
    if labels is None:
        return None
    if config.storage_scoped_keys and config.storage_secret in labels:
        store = labels[config.storage_secret]
        make = f"an admin makes it with: python -m finetune_operator.storage_keys grant --namespace {namespace}"
        if store is None:
            return SECRET_NOT_FOUND, f"Secret {config.storage_secret} (this namespace's object store key) does not exist; {make}"
        if store.get(STORAGE_SCOPE_LABEL) != namespace:
            return STORAGE_KEY_NOT_SCOPED, (
                f"Secret {config.storage_secret} holds an object store key not scoped to this namespace (its label "
                f"{STORAGE_SCOPE_LABEL} is not {namespace}), and the cluster runs only scoped keys; {make}"
            )
    for field, name in named_secrets(spec):
        if name not in labels:
            continue
        if labels[name] is None:
            return SECRET_NOT_FOUND, f"Secret {name} does not exist in this namespace ({field})"
        if labels[name].get(CONSENT_LABEL) != "true":
            return SECRET_NOT_ALLOWED, (
                f"Secret {name} ({field}) may not be used yet: its owner allows it by labelling it {CONSENT_LABEL}=true "
                f"(kubectl label secret {name} {CONSENT_LABEL}=true)"
            )
    return None
