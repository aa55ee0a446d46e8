"""A Dataset's life through the Kubernetes API: the operator runs as in production, the local runner
runs its validation Jobs, and the validator is the real ``finetune-trainer validate`` reading from
SeaweedFS or from an HTTPS server started here, and writing the normalised files back to SeaweedFS."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.tls import LoopbackServer, self_signed_certificate

pytestmark = pytest.mark.timeout(180)

TOKEN = "a-bearer-token-for-the-file-server"


def chat_lines(n: int, bad_line: int | None = None, topic: str = "billing") -> bytes:
    """``n`` chat examples as JSONL; line ``bad_line`` (1-based) gets an assistant named 'bot'."""
    lines = []
    for i in range(1, n + 1):
        role = "bot" if i == bad_line else "assistant"
        example = {"messages": [{"role": "user", "content": f"{topic} question {i}?"}, {"role": role, "content": f"{topic} answer {i}."}]}
        lines.append(json.dumps(example))
    return ("\n".join(lines) + "\n").encode()


def byte_tokenizer_json() -> bytes:
    """A byte-level tokenizer.json without merges: one token per UTF-8 byte."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return tokenizer.to_str().encode()


def upload(object_store, key: str, data: bytes) -> str:
    object_store.client().put_object(object_store.bucket, key, io.BytesIO(data), len(data))
    return f"s3://{object_store.bucket}/{key}"


def object_exists(object_store, uri: str) -> bool:
    bucket, _, key = uri[len("s3://") :].partition("/")
    try:
        object_store.client().stat_object(bucket, key)
        return True
    except Exception:
        return False


def dataset_yaml(name: str, source: str, *extra: str) -> str:
    lines = ["apiVersion: finetune.dev/v1alpha1", "kind: Dataset", "metadata:", f"  name: {name}", "spec:", "  source:", *(f"    {s}" for s in source.splitlines())]
    return "\n".join([*lines, *(f"  {e}" for e in extra)]) + "\n"


def make_ready_dataset(cluster, object_store, name: str = "support-chats", examples: int = 24) -> dict:
    """A Dataset validated for real, for stories that start after it: a chat file uploaded, the Dataset
    applied, Ready awaited. Needs the object store Secret (``cluster.storage_secret``) in the namespace."""
    source = upload(object_store, f"uploads/{cluster.namespace}/{name}.jsonl", chat_lines(examples))
    cluster.apply(dataset_yaml(name, f"uri: {source}", "format: chat"))
    return cluster.wait_phase("datasets", name, "Ready")


def event_messages(cluster, name: str, type_: str | None = None) -> list[str]:
    return [e["message"] or "" for e in cluster.events_for(name) if type_ is None or e["type"] == type_]


def condition(obj: dict, type_: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


# -- An HTTPS file server with a certificate the validator is told to trust -------------------------


class FileServer:
    def __init__(self, certificate: tuple[Path, Path]):
        files = {"/chats.jsonl": chat_lines(20, topic="shipping")}
        self.release = threading.Event()
        """Set it to answer the requests for /held/... (they wait until then)."""
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                path = self.path
                if path.startswith("/held/"):  # answered once the test releases it: Validating lasts until then
                    server.release.wait(120)
                    path = path[len("/held") :]
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_error(401)
                    return
                body = files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.loopback = LoopbackServer(Handler, certificate)
        self.url = self.loopback.url

    def stop(self) -> None:
        self.release.set()
        self.loopback.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def file_server(certificate) -> Iterator[FileServer]:
    server = FileServer(certificate)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def trusting_runner(kube_api, contract_trainer_bin, certificate, namespace, tmp_path) -> Iterator:
    """The local runner for this test's namespace; `finetune-trainer` is the contract trainer's shim,
    with the file server's certificate trusted (as a cluster would mount a CA bundle)."""
    from finetune_local.runner import LocalRunner

    folder = tmp_path / "bin"
    folder.mkdir()
    shim = folder / "finetune-trainer"
    shim.write_text(f'#!/bin/sh\nexport SSL_CERT_FILE="{certificate[0]}"\nexec "{contract_trainer_bin}/finetune-trainer" "$@"\n')
    shim.chmod(0o755)
    runner = LocalRunner(kube_api.kubeconfig, namespace=namespace, work_dir=tmp_path / "runner", grace_period_cap=10, extra_path=[str(folder)],
                         kubelet_only=kube_api.real)
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


# -- The stories --------------------------------------------------------------------------------------


def test_a_good_chat_file_becomes_ready_and_a_new_source_is_validated_again(cluster, object_store, start_operator, trusting_runner):
    operator = start_operator()
    cluster.storage_secret(object_store)
    data = chat_lines(40)
    source = upload(object_store, f"uploads/{cluster.namespace}/support-chats.jsonl", data)
    tokenizer = upload(object_store, "models/bytes/tokenizer.json", byte_tokenizer_json())
    cluster.apply(
        dataset_yaml("support-chats", f"uri: {source}", "format: chat", "validation:", "  fraction: 0.25", "  seed: 7", f"tokenizer: {tokenizer.rsplit('/', 1)[0]}")
    )

    ready = cluster.wait_phase("datasets", "support-chats", "Ready")
    status = ready["status"]
    sha = hashlib.sha256(data).hexdigest()
    assert status["sha256"] == sha and status["format"] == "chat" and status["numSamples"] == 40
    assert status["trainSamples"] + status["validationSamples"] == 40 and status["validationSamples"] > 0
    folder = f"s3://{object_store.bucket}/datasets/{cluster.namespace}/support-chats/{sha}"
    assert status["trainUri"] == f"{folder}/train.jsonl" and status["validationUri"] == f"{folder}/validation.jsonl"
    assert object_exists(object_store, f"{folder}/manifest.json")
    report = status["report"]
    assert report["isCheckPassed"] is True and report["utf8"] and report["lineType"] and report["keyValue"] and report["hasMinSamples"]
    assert report["numSamples"] == 40 and report["errors"] == [] and report["errorCount"] == 0
    assert status["messageStats"] == {"min": 2, "mean": 2.0, "max": 2, "total": 80}
    tokens = status["tokenStats"]
    assert 0 < tokens["min"] <= tokens["mean"] <= tokens["max"] and abs(tokens["total"] - 40 * tokens["mean"]) < 1
    assert tokens["min"] >= len("billing question 1?billing answer 1."), "a byte-level tokenizer: at least one token per byte"
    assert status["observedGeneration"] == ready["metadata"]["generation"] == 1
    assert (condition(ready, "Validated")["reason"], condition(ready, "Ready")["reason"]) == ("CheckPassed", "Ready")
    assert ready["metadata"]["finalizers"] == ["finetune.dev/finalizer"]

    [job] = cluster.jobs()
    assert job.metadata.name == "support-chats-validate-g1" and job.metadata.owner_references[0].name == "support-chats"
    assert job.spec.template.spec.automount_service_account_token is False
    assert job.spec.template.spec.containers[0].command[:2] == ["finetune-trainer", "validate"]
    train, validation = status["trainSamples"], status["validationSamples"]
    ready_message = f"Dataset ready: 40 examples ({train} train / {validation} validation)"
    messages = wait_until(lambda: (m := event_messages(cluster, "support-chats")) and ready_message in m and m, "the Ready event", timeout=20)
    assert "Dataset validation started" in messages
    table = cluster.kubectl("get", "datasets").stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "PHASE", "SAMPLES", "FORMAT"] and table[1].split()[:4] == ["support-chats", "Ready", "40", "chat"]
    operator.metrics_once('finetune_objects{kind="Dataset",phase="Ready"} 1.0',
                          'finetune_phase_transitions_total{from_phase="Validating",kind="Dataset",to_phase="Ready"}')

    # A new source: generation 2 is validated by its own Job into its own sha256 folder, and until it
    # passes, the status shows none of generation 1's files.
    new_data = chat_lines(30, topic="returns")
    new_source = upload(object_store, f"uploads/{cluster.namespace}/support-chats-v2.jsonl", new_data)
    cluster.patch_spec("datasets", "support-chats", {"source": {"uri": new_source}})
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        s = cluster.get("datasets", "support-chats")["status"]
        seen.append((s.get("observedGeneration"), s.get("phase"), s.get("trainUri")))
        if s.get("observedGeneration") == 2 and s.get("phase") == "Ready":
            break
        time.sleep(0.05)
    new_sha = hashlib.sha256(new_data).hexdigest()
    assert seen[-1] == (2, "Ready", f"s3://{object_store.bucket}/datasets/{cluster.namespace}/support-chats/{new_sha}/train.jsonl"), seen
    assert all(uri is None for generation, phase, uri in seen if generation == 2 and phase != "Ready"), seen
    assert sorted(j.metadata.name for j in cluster.jobs()) == ["support-chats-validate-g1", "support-chats-validate-g2"]
    assert object_exists(object_store, f"{folder}/train.jsonl"), "generation 1's files stay for the jobs that use them"
    assert cluster.get("datasets", "support-chats")["status"]["numSamples"] == 30


def test_a_malformed_file_is_invalid_with_the_line_and_rule(cluster, object_store, start_operator, trusting_runner):
    start_operator()
    cluster.storage_secret(object_store)
    source = upload(object_store, f"uploads/{cluster.namespace}/bad-roles.jsonl", chat_lines(20, bad_line=7))
    cluster.apply(dataset_yaml("bad-roles", f"uri: {source}"))
    invalid = cluster.wait_phase("datasets", "bad-roles", "Invalid")
    status = invalid["status"]
    first = status["report"]["errors"][0]
    assert (first["line"], first["rule"]) == (7, "unknown_role") and "'bot'" in first["message"]
    assert status["report"]["isCheckPassed"] is False and status["report"]["keyValue"] is False
    assert status["message"].startswith("line 7: ") and status["message"].endswith("(unknown_role)")
    assert "trainUri" not in status
    assert (condition(invalid, "Validated")["status"], condition(invalid, "Validated")["reason"]) == ("False", "CheckFailed")
    wait_until(lambda: f"Dataset invalid: {status['message']}" in event_messages(cluster, "bad-roles", "Warning"), "the Invalid event", timeout=20)
    [job] = cluster.jobs()
    assert wait_until(lambda: cluster.batch.read_namespaced_job(job.metadata.name, cluster.namespace).status.failed, "the Job to fail", timeout=20) == 1, "bad input is not retried"
    prefix = f"datasets/{cluster.namespace}/bad-roles/"
    stored = [o.object_name for o in object_store.client().list_objects(object_store.bucket, prefix=prefix, recursive=True)]
    assert stored and all("/reports/" in name for name in stored), "an invalid file leaves only its report"


def test_an_https_source_that_is_not_there_is_invalid_and_one_behind_a_token_is_ready(cluster, object_store, start_operator, trusting_runner, file_server):
    start_operator(FINETUNE_ALLOW_PRIVATE_URLS="true")  # the test's file server is on loopback
    cluster.storage_secret(object_store)
    cluster.core.create_namespaced_secret(cluster.namespace, {"metadata": {"name": "file-server", "labels": {"finetune.dev/allow-use": "true"}}, "stringData": {"bearer": TOKEN}})
    cluster.apply(dataset_yaml("gone", f"uri: {file_server.url}/gone.jsonl\nsecretRef:\n  name: file-server\n  key: bearer"))
    cluster.apply(dataset_yaml("shipping", f"uri: {file_server.url}/chats.jsonl\nsecretRef:\n  name: file-server\n  key: bearer"))
    gone = cluster.wait_phase("datasets", "gone", "Invalid")
    assert gone["status"]["report"]["found"] is False
    assert condition(gone, "Validated")["reason"] == "SourceNotFound"
    assert "HTTP 404" in gone["status"]["message"] and "(not_found)" in gone["status"]["message"]
    wait_until(lambda: any("HTTP 404" in m for m in event_messages(cluster, "gone", "Warning")), "the Invalid event", timeout=20)
    shipping = cluster.wait_phase("datasets", "shipping", "Ready")
    assert shipping["status"]["numSamples"] == 20
    assert TOKEN not in json.dumps(shipping) and all(TOKEN not in (e["message"] or "") for e in cluster.events_for("shipping"))


def test_a_missing_source_secret_keeps_the_dataset_pending_until_it_exists(cluster, object_store, start_operator, trusting_runner):
    start_operator()
    cluster.storage_secret(object_store)
    source = upload(object_store, f"uploads/{cluster.namespace}/private.jsonl", chat_lines(12))
    cluster.apply(dataset_yaml("private", f"uri: {source}\nsecretRef:\n  name: uploads-credentials"))
    pending = cluster.wait_for("datasets", "private", lambda o: o.get("status", {}).get("phase") == "Pending", what="to be Pending")
    assert pending["status"]["message"] == "Secret uploads-credentials does not exist in this namespace (spec.source.secretRef)"
    assert condition(pending, "Ready")["reason"] == "SecretNotFound"
    wait_until(lambda: any("uploads-credentials" in m for m in event_messages(cluster, "private", "Warning")), "the Pending event", timeout=20)
    # The Secret appears, but its owner has not allowed specs to name it: still Pending, no pod mounts it.
    cluster.storage_secret(object_store, name="uploads-credentials")
    refused = cluster.wait_for("datasets", "private", lambda o: "may not be used yet" in o.get("status", {}).get("message", ""),
                               timeout=90, what="to wait for the Secret's consent")  # fmt: skip
    assert refused["status"]["phase"] == "Pending" and condition(refused, "Ready")["reason"] == "SecretNotAllowed"
    assert cluster.jobs() == [], "no validation pod may mount a Secret its owner did not allow"
    cluster.core.patch_namespaced_secret("uploads-credentials", cluster.namespace, {"metadata": {"labels": {"finetune.dev/allow-use": "true"}}})
    ready = cluster.wait_phase("datasets", "private", "Ready", timeout=90)
    assert ready["status"]["numSamples"] == 12


def test_a_finetunejob_waits_for_a_validating_dataset_and_holds_its_deletion(cluster, object_store, start_operator, trusting_runner, file_server):
    from tests.operator.test_operator_integration import finetunejob_yaml

    start_operator(FINETUNE_ALLOW_PRIVATE_URLS="true")  # the test's file server is on loopback
    cluster.storage_secret(object_store)
    cluster.core.create_namespaced_secret(cluster.namespace, {"metadata": {"name": "file-server", "labels": {"finetune.dev/allow-use": "true"}}, "stringData": {"token": TOKEN}})
    cluster.apply(dataset_yaml("support-chats", f"uri: {file_server.url}/held/chats.jsonl\nsecretRef:\n  name: file-server"))
    cluster.wait_phase("datasets", "support-chats", "Validating")
    cluster.apply(finetunejob_yaml(name="support-bot", base="s3://finetune/models/hold"))
    waiting = cluster.wait_for("finetunejobs", "support-bot", lambda o: "it is Validating" in o.get("status", {}).get("message", ""), what="to wait")
    assert waiting["status"]["phase"] == "Pending" and cluster.get("datasets", "support-chats")["status"]["phase"] == "Validating"
    file_server.release.set()

    running = cluster.wait_for("finetunejobs", "support-bot", lambda o: (o.get("status", {}).get("checkpoints") or []) != [],
                               timeout=60, what="to train and hold")  # fmt: skip
    dataset = cluster.get("datasets", "support-chats")
    assert dataset["status"]["phase"] == "Ready" and running["status"]["datasetSha256"] == dataset["status"]["sha256"]

    # Deleting the Dataset while the job trains: held by the finalizer until the job ends.
    cluster.kubectl("delete", "dataset", "support-chats", "--wait=false")
    held = cluster.wait_for("datasets", "support-chats", lambda o: "deletionTimestamp" in o["metadata"], what="to be marked for deletion")
    assert held["metadata"]["finalizers"] == ["finetune.dev/finalizer"]
    blocked = wait_until(lambda: [e for e in cluster.events_for("support-chats") if e["reason"] == "DeletionBlocked"], "DeletionBlocked", timeout=20)
    assert "FineTuneJob support-bot" in blocked[0]["message"]
    release = running["status"]["artifactsUri"].split("/", 3)[3] + "/release"
    object_store.client().put_object(object_store.bucket, release, io.BytesIO(b"go"), 2)  # the trainer goes on
    cluster.wait_phase("finetunejobs", "support-bot", "Completed", timeout=60)
    def gone() -> bool:
        return not cluster.custom.list_namespaced_custom_object("finetune.dev", "v1alpha1", cluster.namespace, "datasets")["items"]

    wait_until(gone, "the Dataset to be deleted after the job ended", timeout=30)
    sha = dataset["status"]["sha256"]
    assert object_exists(object_store, f"s3://{object_store.bucket}/datasets/{cluster.namespace}/support-chats/{sha}/manifest.json"), "data is never deleted"


def test_an_operator_killed_mid_validation_finds_its_own_job(cluster, object_store, start_operator, trusting_runner, file_server):
    operator = start_operator(FINETUNE_ALLOW_PRIVATE_URLS="true")  # the test's file server is on loopback
    cluster.storage_secret(object_store)
    cluster.core.create_namespaced_secret(cluster.namespace, {"metadata": {"name": "file-server", "labels": {"finetune.dev/allow-use": "true"}}, "stringData": {"token": TOKEN}})
    cluster.apply(dataset_yaml("shipping", f"uri: {file_server.url}/held/chats.jsonl\nsecretRef:\n  name: file-server"))
    cluster.wait_phase("datasets", "shipping", "Validating")
    operator.kill()
    start_operator(FINETUNE_ALLOW_PRIVATE_URLS="true")  # the test's file server is on loopback
    file_server.release.set()
    ready = cluster.wait_phase("datasets", "shipping", "Ready")
    assert [j.metadata.name for j in cluster.jobs()] == ["shipping-validate-g1"]
    assert ready["status"]["validationJobName"] == "shipping-validate-g1" and ready["status"]["numSamples"] == 20
