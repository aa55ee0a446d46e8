"""One namespace is one tenant: what a spec names and what the operator reads back stays under the namespace's own
prefixes of the store, or under a prefix the admin declared shared (read-only). Decided by the pure reconcilers,
before any pod runs, with the field, the URI and the rule."""

from __future__ import annotations

import pytest

from finetune_operator import tenancy
from finetune_operator.config import OperatorConfig
from finetune_operator.reconcile import dataset, evaluation, finetunejob, inferenceendpoint
from finetune_trainer import contract

CONFIG = OperatorConfig(trainer_image="t:1", storage_endpoint="s3:9000", storage_bucket="fts", shared_prefixes=["s3://fts/models"])
NS = "team-a"


def obj(kind: str, spec: dict, name: str = "x", status: dict | None = None) -> dict:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": NS, "uid": "u-1", "generation": 1},
            "spec": spec, "status": status}  # fmt: skip


@pytest.mark.parametrize("uri, allowed", [
    ("s3://fts/uploads/team-a/chats.jsonl", True),
    ("s3://fts/jobs/team-a/bot-1/model", True),
    ("s3://fts/models/llama-3.2-1b", True),  # shared
    ("s3://fts/uploads/team-b/chats.jsonl", False),  # another tenant
    ("s3://fts/uploads/team-ab/chats.jsonl", False),  # a prefix of the name is not the name
    ("s3://fts/uploads/team-a/../team-b/chats.jsonl", False),
    ("s3://fts/uploads/team-a//chats.jsonl", False),
    ("s3://other-bucket/uploads/team-a/x", False),
    ("s3://fts/models2/x", False),
    ("pvc://claim/models/llama", True),
    ("pvc://claim/../../etc", False),
    ("hf://meta-llama/Llama-3.2-1B", True),
])  # fmt: skip
def test_what_a_namespace_may_read(uri: str, allowed: bool) -> None:
    assert (tenancy.check_read(uri, "spec.f", NS, CONFIG) is None) == allowed


def test_a_shared_prefix_is_never_written_to_and_a_whole_bucket_cannot_be_shared() -> None:
    assert tenancy.check_write("s3://fts/jobs/team-a/out", "spec.output.uri", NS, CONFIG) is None
    assert "output is written there only" in tenancy.check_write("s3://fts/models/x", "spec.output.uri", NS, CONFIG)
    with pytest.raises(ValueError, match="never a whole bucket"):
        OperatorConfig(shared_prefixes=["s3://ft"])


@pytest.mark.parametrize("url", ["https://169.254.169.254/latest/meta-data", "https://127.0.0.1:8000/x", "https://10.1.2.3/x",
                                 "https://[::1]/x", "http://localhost/x", "https://api.team-b.svc/x", "https://x.cluster.local/v1"])  # fmt: skip
def test_fetches_from_internal_addresses_are_refused_unless_the_admin_allows_them(url: str) -> None:
    assert "private addresses (FINETUNE_ALLOW_PRIVATE_URLS)" in tenancy.check_url(url, "spec.source.uri", CONFIG)
    assert tenancy.check_url(url, "spec.source.uri", CONFIG.model_copy(update={"allow_private_urls": True})) is None
    assert tenancy.check_url("https://datasets.example.com/x.jsonl", "spec.source.uri", CONFIG) is None


def test_a_dataset_naming_another_namespaces_file_is_invalid_and_gets_no_job() -> None:
    plan = dataset.reconcile(obj("Dataset", {"source": {"uri": "s3://fts/uploads/team-b/secret.jsonl"}}), dataset.Observed(), CONFIG)
    assert plan.new_phase == "Invalid" and plan.create == []
    assert "spec.source.uri: s3://fts/uploads/team-b/secret.jsonl is outside this namespace's storage" in plan.status["message"]
    assert plan.events and plan.events[0].type == "Warning"
    metadata = dataset.reconcile(obj("Dataset", {"source": {"uri": "https://169.254.169.254/latest/meta-data/iam"}}), dataset.Observed(), CONFIG)
    assert metadata.new_phase == "Invalid" and "169.254.169.254 is a loopback, link-local or private address" in metadata.status["message"]


def test_a_finetunejob_may_not_read_another_tenants_model_or_write_into_its_prefix() -> None:
    reads = finetunejob.reconcile(obj("FineTuneJob", {"baseModel": {"uri": "s3://fts/jobs/team-b/their-job-1/model"}, "dataset": "d"}),
                                  finetunejob.Observed(), CONFIG)  # fmt: skip
    assert reads.new_phase == "Failed" and reads.create == []
    assert "spec.baseModel.uri: s3://fts/jobs/team-b/their-job-1/model is outside" in reads.status["message"]
    writes = finetunejob.reconcile(obj("FineTuneJob", {"baseModel": {"uri": "hf://org/m"}, "dataset": "d", "output": {"uri": "s3://fts/jobs/team-b"}}),
                                   finetunejob.Observed(), CONFIG)  # fmt: skip
    assert writes.new_phase == "Failed" and "spec.output.uri: s3://fts/jobs/team-b is outside" in writes.status["message"]


def test_an_endpoint_and_an_evaluation_are_held_to_the_same_rule() -> None:
    spec = {"baseModel": {"uri": "s3://fts/models/tiny"}, "adapters": [{"name": "stolen", "uri": "s3://fts/jobs/team-b/bot-1/model"}]}
    plan = inferenceendpoint.reconcile(obj("InferenceEndpoint", spec, name="chat"), inferenceendpoint.Observed(), CONFIG)
    assert plan.new_phase == "Failed" and plan.apply == [] and "spec.adapters[0].uri" in plan.status["message"]
    spec = {"dataset": "qa", "models": [{"name": "theirs", "baseModel": "s3://fts/jobs/team-b/bot-1/model"}],
            "graders": [{"name": "em", "type": "exact_match"}]}  # fmt: skip
    plan = evaluation.reconcile(obj("Evaluation", spec), evaluation.Observed(), CONFIG)
    assert plan.new_phase == "Failed" and plan.create == [] and "spec.models[0].baseModel" in plan.status["message"]


def test_a_model_the_trainer_reports_outside_its_own_folder_is_not_trusted() -> None:
    created = finetunejob.reconcile(obj("FineTuneJob", {"baseModel": {"uri": "hf://org/m"}, "dataset": "d"}, name="bot"),
                                    finetunejob.Observed(dataset={"status": {"phase": "Ready", "trainUri": "s3://fts/datasets/team-a/d/1/train.jsonl", "sha256": "1"}}), CONFIG)  # fmt: skip
    job = next(c for c in created.create if c["kind"] == "Job")
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    progress = contract.Progress(phase="done", step=3, total_steps=3, model_uri="s3://fts/jobs/team-b/victim-9/model",
                                 checkpoints=[contract.CheckpointRecord(step=1, uri="s3://fts/jobs/team-b/victim-9/checkpoints/step-1")])  # fmt: skip
    done = finetunejob.reconcile(obj("FineTuneJob", {"baseModel": {"uri": "hf://org/m"}, "dataset": "d"}, name="bot", status=created.status),
                                 finetunejob.Observed(job=job, progress=progress, model_complete=True), CONFIG)  # fmt: skip
    assert done.new_phase == "Failed" and "outputModel" not in done.status
    assert next(c for c in done.status["conditions"] if c["type"] == "Failed")["reason"] == "OutputOutsideItsFolder"
    assert done.status["checkpoints"] == [], "a checkpoint elsewhere is not listed (another job could continue from it)"


def test_a_report_that_names_files_outside_the_datasets_folder_is_not_trusted() -> None:
    spec = {"source": {"uri": "s3://fts/uploads/team-a/chats.jsonl"}}
    created = dataset.reconcile(obj("Dataset", spec, name="chats"), dataset.Observed(), CONFIG)
    job = next(c for c in created.create if c["kind"] == "Job")
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    report = contract.DatasetCheckReport(is_check_passed=True, found=True, sha256="ab" * 32, num_samples=20, message="ok",
                                         train_uri="s3://fts/datasets/team-b/theirs/x/train.jsonl")  # fmt: skip
    plan = dataset.reconcile(obj("Dataset", spec, name="chats", status=created.status), dataset.Observed(job=job, report=report, manifest_exists=True), CONFIG)
    assert plan.new_phase != "Ready" and "outside the Dataset's folder" in plan.status["message"]


def test_a_secret_may_be_named_only_with_its_owners_consent() -> None:
    spec = {"source": {"uri": "https://data.example.com/chats.jsonl", "secretRef": {"name": "their-token"}}}
    unlabelled = dataset.reconcile(obj("Dataset", spec), dataset.Observed(secrets={"their-token": {"team": "b"}}), CONFIG)
    assert unlabelled.new_phase == "Pending" and unlabelled.create == [], "no pod may mount it, nothing is fetched"
    assert "Secret their-token (spec.source.secretRef) may not be used yet" in unlabelled.status["message"]
    assert "kubectl label secret their-token finetune.dev/allow-use=true" in unlabelled.status["message"]
    missing = dataset.reconcile(obj("Dataset", spec), dataset.Observed(secrets={"their-token": None}), CONFIG)
    assert missing.new_phase == "Pending" and "Secret their-token does not exist" in missing.status["message"]
    allowed = dataset.reconcile(obj("Dataset", spec), dataset.Observed(secrets={"their-token": {tenancy.CONSENT_LABEL: "true"}}), CONFIG)
    assert [c["kind"] for c in allowed.create] == ["ConfigMap", "Job"]


def test_every_kind_asks_for_consent_for_every_secret_it_names() -> None:
    judge = {"dataset": "qa", "models": [{"name": "m", "baseModel": "hf://org/m"}],
             "graders": [{"name": "j", "type": "llm_judge", "rubric": "r", "judge": {"url": "https://judge.example.com/v1", "model": "gpt", "apiKeySecretRef": {"name": "k"}}}]}  # fmt: skip
    plan = evaluation.reconcile(obj("Evaluation", judge), evaluation.Observed(secrets={"k": {}}), CONFIG)
    assert plan.new_phase == "Pending" and plan.create == [] and "spec.graders[0].judge.apiKeySecretRef" in plan.status["message"]
    endpoint = {"baseModel": {"uri": "hf://org/m", "secretRef": {"name": "hf"}}, "apiKeySecretRef": {"name": "key"}}
    plan = inferenceendpoint.reconcile(obj("InferenceEndpoint", endpoint, name="chat"),
                                       inferenceendpoint.Observed(secrets={"hf": {tenancy.CONSENT_LABEL: "true"}, "key": {}}), CONFIG)  # fmt: skip
    assert plan.new_phase == "Pending" and plan.apply == [] and "spec.apiKeySecretRef" in plan.status["message"]
    job = {"baseModel": {"uri": "hf://org/m", "secretRef": {"name": "hf"}}, "dataset": "d"}
    ready = {"status": {"phase": "Ready", "trainUri": "s3://fts/datasets/team-a/d/1/train.jsonl", "sha256": "1"}}
    plan = finetunejob.reconcile(obj("FineTuneJob", job), finetunejob.Observed(dataset=ready, secrets={"hf": {"finetune.dev/allow-use": "yes"}}), CONFIG)
    assert plan.new_phase == "Pending" and plan.create == [] and "spec.baseModel.secretRef" in plan.status["message"]
