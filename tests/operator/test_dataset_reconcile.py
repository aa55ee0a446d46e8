"""The Dataset lifecycle decided by the pure reconcile function, step by step, and the Job it builds.

These tests feed the reconciler the world as the API and the object store would show it (the validation
Job, its pods, the check report) and check what it decides; test_dataset_integration.py tells the same
stories through a real API server, the local runner and the real validator.
"""

from __future__ import annotations

import json

from finetune_operator.config import OperatorConfig
from finetune_operator.handlers.dataset import users_of
from finetune_operator.reconcile.conditions import now, rfc3339
from finetune_operator.naming import dataset_report_uri as report_uri
from finetune_operator.naming import validation_job_name as job_name
from finetune_operator.reconcile.dataset import Observed, reconcile
from finetune_trainer import contract

CONFIG = OperatorConfig(trainer_image="registry.example/finetune-trainer:1", storage_endpoint="minio:9000", storage_bucket="ft")
UID = "0123abcd-ffff-4444-8888-000000000000"
SPEC = {"source": {"uri": "s3://ft/uploads/team-a/support-chats.jsonl"}, "format": "chat", "validation": {"fraction": 0.1, "seed": 7}}
SHA = "ab" * 32
FOLDER = f"s3://ft/datasets/team-a/support-chats/{SHA}"


def owner(generation: int = 1) -> dict:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "support-chats", "namespace": "team-a", "uid": UID, "generation": generation}}


def run(spec=SPEC, status=None, observed=None, generation=1, retry_failed=False, config=CONFIG):
    return reconcile({**owner(generation), "spec": spec, "status": status}, observed or Observed(), config, retry_failed=retry_failed)


def job(*conditions: str, failed: int = 0, generation: int = 1) -> dict:
    return {
        "metadata": {"name": job_name("support-chats", generation), "uid": "job-uid"},
        "spec": {"backoffLimit": 2},
        "status": {"failed": failed, "conditions": [{"type": c, "status": "True", "message": f"job {c}"} for c in conditions]},
    }


def pod(waiting: tuple[str, str] | None = None, exit_code: int | None = None, message: str = "") -> dict:
    state: dict = {}
    if waiting:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    elif exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": "2026-01-01T00:00:00Z"}}
    else:
        state = {"running": {}}
    return {"metadata": {"ownerReferences": [{"uid": "job-uid"}]}, "status": {"containerStatuses": [{"name": "validator", "state": state}]}}


def passed_report(**overrides) -> contract.DatasetCheckReport:
    fields = dict(
        is_check_passed=True, message="Checks passed: 1234 chat examples", file_size=99_000, filetype="jsonl", utf8=True,
        line_type=True, key_value=True, has_min_samples=True, num_samples=1234, format="chat", sha256=SHA,
        train_samples=1111, validation_samples=123, train_uri=f"{FOLDER}/train.jsonl", validation_uri=f"{FOLDER}/validation.jsonl",
        manifest_uri=f"{FOLDER}/manifest.json", message_stats=contract.TokenStats(min=2, mean=3.5, max=9, total=4319),
    )
    fields.update(overrides)
    return contract.DatasetCheckReport(**fields)


def failed_report(**overrides) -> contract.DatasetCheckReport:
    fields = dict(
        is_check_passed=False, message="line 7: unknown role 'bot' [unknown_role]", filetype="jsonl", utf8=True, line_type=True,
        key_value=False, has_min_samples=True, num_samples=40, format="chat", sha256=SHA, error_count=3,
        errors=[
            contract.CheckError(line=7, rule="unknown_role", message="unknown role 'bot'"),
            contract.CheckError(line=9, rule="not_json", message="not a JSON object"),
        ],
    )
    fields.update(overrides)
    return contract.DatasetCheckReport(**fields)


def conditions(plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}


def validating_status() -> dict:
    return run().status


# -- The Job ----------------------------------------------------------------------------------------


def test_a_new_dataset_gets_a_validation_job_named_after_its_generation():
    plan = run()
    assert [c["kind"] for c in plan.create] == ["ConfigMap", "Job"]
    configmap, validation_job = plan.create
    assert configmap["metadata"]["name"] == validation_job["metadata"]["name"] == "support-chats-validate-g1"
    assert plan.new_phase == "Validating" and plan.status["validationJobName"] == "support-chats-validate-g1"
    assert conditions(plan) == {"Validated": ("Unknown", "Validating"), "Ready": ("False", "Validating")}
    assert [(e.type, e.message) for e in plan.events] == [("Normal", "Dataset validation started")]
    for result in ("trainUri", "validationUri", "sha256", "report"):
        assert plan.status[result] is None


def test_the_validator_config_names_the_source_split_and_where_to_write():
    configmap = run().create[0]
    config = contract.ValidateConfig.model_validate_json(configmap["data"]["config.json"])
    assert config.source == "s3://ft/uploads/team-a/support-chats.jsonl" and config.source_credentials_dir is None
    assert config.format == "chat" and config.validation_split == 0.1 and config.split_seed == 7
    assert config.min_samples == 10 and config.max_bytes == 1 << 30
    assert config.output_uri == "s3://ft/datasets/team-a/support-chats"
    assert config.report_uri == "s3://ft/datasets/team-a/support-chats/reports/1-0123abcd.json"
    assert config.storage.endpoint == "minio:9000" and config.storage.credentials_dir == "/var/run/secrets/finetune/storage"
    assert "secretKey" not in configmap["data"]["config.json"]


def test_validation_job_runs_the_trainer_image_restricted_with_credentials_as_files():
    from tests.chart.pod_security import check_restricted

    validation_job = run(spec={**SPEC, "source": {"uri": "s3://ft/uploads/team-a/a.jsonl", "secretRef": {"name": "uploads-creds"}}}).create[1]
    meta = validation_job["metadata"]
    assert meta["ownerReferences"][0]["uid"] == UID and meta["ownerReferences"][0]["controller"] is True
    assert meta["labels"]["finetune.dev/dataset"] == "support-chats" and meta["labels"]["finetune.dev/generation"] == "1"
    spec = validation_job["spec"]
    assert spec["backoffLimit"] <= 3
    assert spec["podFailurePolicy"]["rules"][0] == {"action": "FailJob", "onExitCodes": {"containerName": "validator", "operator": "In", "values": [42]}}
    pod_spec = spec["template"]["spec"]
    assert check_restricted(pod_spec) == []
    assert pod_spec["automountServiceAccountToken"] is False and pod_spec["restartPolicy"] == "Never"
    [container] = pod_spec["containers"]
    assert container["image"] == "registry.example/finetune-trainer:1"
    assert container["command"] == ["finetune-trainer", "validate", "--config", "/etc/finetune/config.json"]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["storage-credentials"]["secret"]["secretName"] == "finetune-storage"
    assert volumes["source-credentials"]["secret"]["secretName"] == "uploads-creds"
    assert mounts["source-credentials"]["mountPath"] == "/var/run/secrets/finetune/source" and mounts["source-credentials"]["readOnly"]
    assert volumes["config"]["configMap"]["name"] == "support-chats-validate-g1"
    assert {"tmp", "cache"} <= set(mounts)
    assert not any("KEY" in e["name"] or "SECRET" in e["name"] for e in container["env"]), "credentials are files, never env values"
    config = contract.ValidateConfig.model_validate_json(run(spec={**SPEC, "source": {"uri": "s3://ft/uploads/team-a/a.jsonl", "secretRef": {"name": "uploads-creds"}}}).create[0]["data"]["config.json"])
    assert config.source_credentials_dir == "/var/run/secrets/finetune/source"


def test_the_validator_learns_whether_the_admin_allows_private_addresses():
    """The pod checks the addresses a source resolves to itself (the operator cannot see DNS answers)."""
    def allowed(config: OperatorConfig) -> bool:
        return contract.ValidateConfig.model_validate_json(run(config=config).create[0]["data"]["config.json"]).allow_private_urls

    assert allowed(CONFIG) is False
    assert allowed(CONFIG.model_copy(update={"allow_private_urls": True})) is True


def test_an_https_token_under_another_key_is_mounted_as_the_file_token():
    spec = {"source": {"uri": "https://files.example/chats.jsonl", "secretRef": {"name": "files-token", "key": "bearer"}}}
    pod_spec = run(spec=spec).create[1]["spec"]["template"]["spec"]
    volume = next(v for v in pod_spec["volumes"] if v["name"] == "source-credentials")
    assert volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]


def test_a_configmap_source_is_mounted_as_a_file_the_validator_reads():
    spec = {"source": {"configMapRef": {"name": "tiny-data", "key": "chats.jsonl"}}}
    configmap, validation_job = run(spec=spec).create
    config = contract.ValidateConfig.model_validate_json(configmap["data"]["config.json"])
    assert config.source == "/var/run/finetune/source/chats.jsonl" and config.validation_split == 0.0
    pod_spec = validation_job["spec"]["template"]["spec"]
    volume = next(v for v in pod_spec["volumes"] if v["name"] == "source")
    assert volume["configMap"] == {"name": "tiny-data", "items": [{"key": "chats.jsonl", "path": "chats.jsonl"}]}
    mount = next(m for m in pod_spec["containers"][0]["volumeMounts"] if m["name"] == "source")
    assert mount["mountPath"] == "/var/run/finetune/source"


def test_long_names_still_give_job_names_of_at_most_63_characters():
    long = "a" * 52
    assert len(job_name(long, 123456)) <= 63
    assert job_name(long, 7) != job_name("a" * 51 + "b", 7)
    assert job_name(long, 7).endswith("-validate-g7")


def test_spec_the_api_server_should_have_refused_ends_invalid_without_a_job():
    plan = run(spec={"source": {"uri": "s3://ft/uploads/team-a/b.jsonl", "configMapRef": {"name": "x", "key": "y"}}})
    assert plan.new_phase == "Invalid" and plan.create == []
    assert conditions(plan)["Validated"] == ("False", "InvalidSpec")
    assert "set exactly one of uri and configMapRef" in plan.status["message"]
    plan = run(spec={"source": {"uri": "ftp://a/b"}})
    assert plan.new_phase == "Invalid" and "spec.source.uri" in plan.status["message"]


# -- Reading the result -----------------------------------------------------------------------------


def test_running_job_keeps_validating_without_reading_anything():
    plan = run(status=validating_status(), observed=Observed(job=job(), pods=[pod()]))
    assert plan.new_phase == "Validating" and plan.create == [] and plan.events == []


def test_complete_job_with_a_passed_report_and_its_manifest_is_ready_with_counts_and_uris():
    plan = run(status=validating_status(), observed=Observed(job=job("Complete"), pods=[pod(exit_code=0)], report=passed_report(), manifest_exists=True))
    status = plan.status
    assert plan.new_phase == "Ready"
    assert status["message"] == "Dataset ready: 1,234 examples (1,111 train / 123 validation)"
    assert status["sha256"] == SHA and status["format"] == "chat" and status["numSamples"] == 1234
    assert status["trainSamples"] == 1111 and status["validationSamples"] == 123
    assert status["trainUri"] == f"{FOLDER}/train.jsonl" and status["validationUri"] == f"{FOLDER}/validation.jsonl"
    assert status["messageStats"] == {"min": 2, "mean": 3.5, "max": 9, "total": 4319} and status["tokenStats"] is None
    report = status["report"]
    assert report["isCheckPassed"] is True and report["numSamples"] == 1234 and report["utf8"] is True and report["errors"] == []
    assert "trainUri" not in report, "status.report keeps the shape of check_file"
    assert conditions(plan) == {"Validated": ("True", "CheckPassed"), "Ready": ("True", "Ready")}
    assert [(e.type, e.reason, e.message) for e in plan.events] == [("Normal", "Ready", status["message"])]


def test_ready_is_final_for_the_generation():
    ready = run(status=validating_status(), observed=Observed(job=job("Complete"), report=passed_report(), manifest_exists=True)).status
    plan = run(status=ready, observed=Observed())
    assert plan.new_phase == "Ready" and plan.create == [] and plan.events == [] and plan.status["trainUri"] == ready["trainUri"]


def test_a_passed_report_without_the_manifest_is_not_ready():
    plan = run(status=validating_status(), observed=Observed(job=job("Complete"), report=passed_report(), manifest_exists=False))
    assert plan.new_phase == "Pending" and plan.status["trainUri"] is None
    assert conditions(plan)["Ready"] == ("False", "ValidatorFailed")
    assert f"{FOLDER}/manifest.json is missing" in plan.status["message"]


def test_failed_job_with_a_report_is_invalid_with_the_first_errors_and_lines():
    plan = run(status=validating_status(), observed=Observed(job=job("Failed"), pods=[pod(exit_code=42)], report=failed_report()))
    status = plan.status
    assert plan.new_phase == "Invalid"
    assert status["message"] == "line 7: unknown role 'bot' (unknown_role); 2 more errors"
    assert status["report"]["errors"][0] == {"line": 7, "rule": "unknown_role", "message": "unknown role 'bot'"}
    assert status["report"]["errorCount"] == 3 and status["report"]["isCheckPassed"] is False
    assert status["trainUri"] is None and status["validationUri"] is None
    assert conditions(plan) == {"Validated": ("False", "CheckFailed"), "Ready": ("False", "Invalid")}
    [event] = plan.events
    assert (event.type, event.reason) == ("Warning", "Invalid")
    assert event.message == "Dataset invalid: line 7: unknown role 'bot' (unknown_role); 2 more errors"


def test_a_source_that_does_not_exist_is_invalid_not_retried():
    report = contract.DatasetCheckReport(
        is_check_passed=False, found=False, message="https://files.example/x.jsonl: HTTP 404 (not found) [not_found]",
        errors=[contract.CheckError(rule="not_found", message="https://files.example/x.jsonl: HTTP 404 (not found)")], error_count=1,
    )
    plan = run(status=validating_status(), observed=Observed(job=job("Failed"), report=report), retry_failed=True)
    assert plan.new_phase == "Invalid" and plan.delete_jobs == []
    assert conditions(plan)["Validated"] == ("False", "SourceNotFound")
    assert plan.status["report"]["found"] is False


def test_an_unreachable_source_stays_pending_and_the_retry_timer_validates_again():
    report = contract.DatasetCheckReport(
        is_check_passed=False, found=False, retryable=True, message="cannot connect to https://files.example/x.jsonl: refused [source_unreachable]",
        errors=[contract.CheckError(rule="source_unreachable", message="cannot connect")], error_count=1,
    )
    status = validating_status()
    # While the Job's own retries run, the reason shows at once.
    plan = run(status=status, observed=Observed(job=job(failed=1), pods=[pod()], report=report))
    assert plan.new_phase == "Pending" and conditions(plan)["Validated"] == ("Unknown", "SourceUnavailable")
    # The Job gave up: still Pending, and nothing is deleted until the slow timer comes by.
    plan = run(status=plan.status, observed=Observed(job=job("Failed", failed=3), report=report))
    assert plan.new_phase == "Pending" and plan.delete_jobs == [] and "will retry" in plan.status["message"]
    plan = run(status=plan.status, observed=Observed(job=job("Failed", failed=3), report=report), retry_failed=True)
    assert plan.delete_jobs == ["support-chats-validate-g1"]
    # The Job is gone: the next reconcile makes it again under the same name.
    plan = run(status=plan.status, observed=Observed())
    assert [c["metadata"]["name"] for c in plan.create] == ["support-chats-validate-g1"] * 2
    assert plan.new_phase == "Validating" and plan.status["message"] == "Validating the file again"


def test_retries_of_a_source_that_stays_away_wait_longer_each_time_with_jitter():
    import datetime as dt

    from finetune_operator.reconcile.common import backoff_seconds

    report = contract.DatasetCheckReport(is_check_passed=False, found=False, retryable=True, message="cannot connect [source_unreachable]",
                                         errors=[contract.CheckError(rule="source_unreachable", message="refused")], error_count=1)  # fmt: skip
    failed = Observed(job=job("Failed", failed=3), report=report)
    before = dt.datetime.now(dt.UTC)
    first = run(status=validating_status(), observed=failed, retry_failed=True)
    after = dt.datetime.now(dt.UTC)
    assert first.delete_jobs == ["support-chats-validate-g1"] and first.status["retries"] == 1
    due = dt.datetime.fromisoformat(first.status["nextRetryAt"].replace("Z", "+00:00"))
    # 30 s give or take a fifth, from the moment of the decision (written to the second)
    assert (due - before).total_seconds() >= 23 and (due - after).total_seconds() <= 36
    # The timer comes by again before that time: nothing is deleted, the status says when.
    early = run(status={**first.status}, observed=failed, retry_failed=True)
    assert early.delete_jobs == [] and early.status["retries"] == 1 and f"will retry at {first.status['nextRetryAt']}" in early.status["message"]
    # Later retries wait longer, up to an hour, and two Datasets do not wait alike.
    waits = [backoff_seconds(UID, n, 30, 3600) for n in range(1, 10)]
    assert all(b > a for a, b in zip(waits[:6], waits[1:7])) and max(waits) <= 3600 * 1.2
    assert backoff_seconds(UID, 3, 30, 3600) != backoff_seconds("another-uid", 3, 30, 3600)


def test_a_missing_source_secret_keeps_the_dataset_pending_with_the_reason():
    spec = {**SPEC, "source": {"uri": "s3://ft/uploads/team-a/a.jsonl", "secretRef": {"name": "uploads-creds"}}}
    waiting = pod(waiting=("ContainerCreating", 'MountVolume.SetUp failed: secret "uploads-creds" not found'))
    plan = run(spec=spec, status=validating_status(), observed=Observed(job=job(), pods=[waiting]))
    assert plan.new_phase == "Pending"
    assert plan.status["message"] == "Secret uploads-creds does not exist in this namespace (spec.source.secretRef)"
    assert conditions(plan) == {"Validated": ("Unknown", "SecretNotFound"), "Ready": ("False", "SecretNotFound")}
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Pending")]
    # The Secret appears; the pod starts: Validating again.
    plan = run(spec=spec, status=plan.status, observed=Observed(job=job(), pods=[pod()]))
    assert plan.new_phase == "Validating" and plan.events[0].message == "Dataset validation started"


def test_a_missing_storage_secret_or_source_configmap_is_named():
    storage = pod(waiting=("CreateContainerConfigError", 'secret "finetune-storage" not found'))
    plan = run(status=validating_status(), observed=Observed(job=job(), pods=[storage]))
    assert plan.new_phase == "Pending" and "Secret finetune-storage does not exist" in plan.status["message"]
    spec = {"source": {"configMapRef": {"name": "tiny-data", "key": "chats.jsonl"}}}
    missing = pod(waiting=("ContainerCreating", 'MountVolume.SetUp failed: configmap "tiny-data" not found'))
    plan = run(spec=spec, status=validating_status(), observed=Observed(job=job(), pods=[missing]))
    assert plan.new_phase == "Pending" and conditions(plan)["Validated"] == ("Unknown", "SourceUnavailable")
    assert plan.status["message"] == "ConfigMap tiny-data does not exist in this namespace (spec.source.configMapRef)"


def test_a_pod_slow_to_create_its_container_gets_a_hint_naming_what_it_mounts():
    spec = {"source": {"uri": "s3://ft/uploads/team-a/b.jsonl", "secretRef": {"name": "uploads-creds"}}}
    creating = pod(waiting=("ContainerCreating", ""))
    creating["metadata"].update(name="support-chats-validate-g1-x7k2p", creationTimestamp="2020-01-01T00:00:00Z")
    plan = run(spec=spec, status=validating_status(), observed=Observed(job=job(), pods=[creating]))
    assert plan.new_phase == "Validating" and plan.events == []
    message = plan.status["message"]
    assert "support-chats-validate-g1-x7k2p has been creating its container" in message
    assert "Secret finetune-storage, Secret uploads-creds exist" in message
    fresh = pod(waiting=("ContainerCreating", ""))
    fresh["metadata"]["creationTimestamp"] = rfc3339(now())
    plan = run(spec=spec, status=validating_status(), observed=Observed(job=job(), pods=[fresh]))
    assert plan.status["message"] == "Validating the file"


def test_a_validator_refusing_its_config_is_invalid_and_a_crash_is_retried():
    refused = run(status=validating_status(), observed=Observed(job=job("Failed"), pods=[pod(exit_code=42, message="invalid config: source: field required")]))
    assert refused.new_phase == "Invalid" and conditions(refused)["Validated"] == ("False", "ValidatorFailed")
    assert refused.status["message"] == "invalid config: source: field required"
    crashed = run(status=validating_status(), observed=Observed(job=job("Failed", failed=3), pods=[pod(exit_code=1, message="Killed")]))
    assert crashed.new_phase == "Pending" and conditions(crashed)["Validated"] == ("Unknown", "ValidatorFailed")
    assert crashed.status["message"].startswith("Killed")


# -- A new generation -------------------------------------------------------------------------------


def test_a_spec_change_validates_again_in_a_new_job_and_hides_the_old_results():
    ready = run(status=validating_status(), observed=Observed(job=job("Complete"), report=passed_report(), manifest_exists=True)).status
    new_spec = {**SPEC, "source": {"uri": "s3://ft/uploads/team-a/support-chats-v2.jsonl"}}
    plan = run(spec=new_spec, status=ready, generation=2, observed=Observed())
    assert plan.new_phase == "Validating"
    assert [c["metadata"]["name"] for c in plan.create] == ["support-chats-validate-g2"] * 2
    config = contract.ValidateConfig.model_validate_json(plan.create[0]["data"]["config.json"])
    assert config.source == "s3://ft/uploads/team-a/support-chats-v2.jsonl"
    assert config.report_uri == report_uri(CONFIG, "team-a", "support-chats", UID, 2)
    assert plan.status["observedGeneration"] == 2
    for result in ("trainUri", "validationUri", "sha256", "numSamples", "report", "messageStats"):
        assert plan.status[result] is None, f"{result} of generation 1 must not show while generation 2 validates"
    assert conditions(plan)["Ready"] == ("False", "Validating")
    assert [e.message for e in plan.events] == ["Dataset validation started"]
    assert plan.delete_jobs == [], "generation 1's finished Job stays, as history"
    # A generation stuck waiting for a Secret is replaced: its Job would wait forever.
    stuck = run(spec={"source": {"uri": "s3://ft/uploads/team-a/b.jsonl", "secretRef": {"name": "typo"}}}, status=validating_status(),
                observed=Observed(job=job(), pods=[pod(waiting=("ContainerCreating", 'secret "typo" not found'))])).status
    plan = run(spec=new_spec, status=stuck, generation=2)
    assert plan.delete_jobs == ["support-chats-validate-g1"] and plan.new_phase == "Validating"
    # An Invalid generation is left behind the same way.
    invalid = run(status=validating_status(), observed=Observed(job=job("Failed"), report=failed_report())).status
    plan = run(spec=new_spec, status=invalid, generation=2)
    assert plan.new_phase == "Validating" and plan.create


def test_the_status_is_a_valid_merge_patch_of_the_crd_status():
    from finetune_operator.api.dataset import DatasetStatus

    ready = run(status=validating_status(), observed=Observed(job=job("Complete"), report=passed_report(), manifest_exists=True)).status
    DatasetStatus.model_validate({k: v for k, v in ready.items() if v is not None})
    invalid = run(status=validating_status(), observed=Observed(job=job("Failed"), report=failed_report(errors=[contract.CheckError(line=i, rule="not_json", message="x" * 3000) for i in range(80)], error_count=80))).status
    parsed = DatasetStatus.model_validate({k: v for k, v in invalid.items() if v is not None})
    assert len(parsed.report.errors) == 50 and parsed.report.error_count == 80
    json.dumps(ready)


def test_deletion_waits_for_finetunejobs_that_have_not_ended():
    jobs = [
        {"metadata": {"name": "running"}, "spec": {"dataset": "support-chats"}, "status": {"phase": "Running"}},
        {"metadata": {"name": "evaluating-on-it"}, "spec": {"dataset": "other", "validationDataset": "support-chats"}, "status": {"phase": "Queued"}},
        {"metadata": {"name": "done"}, "spec": {"dataset": "support-chats"}, "status": {"phase": "Completed"}},
        {"metadata": {"name": "unrelated"}, "spec": {"dataset": "other"}, "status": {"phase": "Running"}},
    ]
    assert users_of("support-chats", jobs) == ["evaluating-on-it", "running"]
    assert users_of("support-chats", jobs[2:]) == []
