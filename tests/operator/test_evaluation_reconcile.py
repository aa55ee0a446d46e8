"""The Evaluation lifecycle decided by the pure reconcile function, step by step, and the Job it builds.

These tests feed the reconciler the world as the API and the object store would show it and check what
it decides; test_evaluation_integration.py tells the same story through a real API server, the local
runner and the real evaluator.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from finetune_operator.config import GpuType, OperatorConfig
from finetune_operator.reconcile.evaluation import Observed, reconcile
from finetune_trainer import contract
from tests.chart.pod_security import check_restricted

CONFIG = OperatorConfig(
    trainer_image="registry.example/finetune-trainer:1",
    storage_endpoint="minio:9000",
    storage_bucket="ft",
    gpu_types={"a100": GpuType(nodeSelector={"gpu": "a100"})},
    shared_prefixes=["s3://ft/models"],
)
OWNER = {"apiVersion": "finetune.dev/v1alpha1", "kind": "Evaluation", "metadata": {"name": "qa", "namespace": "team-a", "uid": "u-1", "generation": 1}}
OUTPUT = "s3://ft/evaluations/team-a/qa-u-1"
SPEC = {
    "models": [
        {"name": "base", "baseModel": "hf://meta-llama/Llama-3.2-1B-Instruct"},
        {"name": "tuned", "fineTuneJob": "support-bot"},
    ],
    "baseline": "base",
    "dataset": "support-chats",
    "graders": [{"name": "f1", "type": "f1"}, {"name": "em", "type": "exact_match"}],
}
READY_DATASET = {
    "metadata": {"name": "support-chats"},
    "status": {"phase": "Ready", "trainUri": "s3://ft/datasets/team-a/support-chats/abc/train.jsonl", "validationUri": "s3://ft/datasets/team-a/support-chats/abc/validation.jsonl"},
}
COMPLETED_FTJ = {
    "metadata": {"name": "support-bot"},
    "spec": {"baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct", "secretRef": {"name": "hf-token"}}},
    "status": {"phase": "Completed", "outputModel": {"name": "team-a/Llama-3.2-1B-Instruct:support-bot", "uri": "s3://ft/jobs/team-a/support-bot-u9/model", "adapter": True}},
}
READY_ENDPOINT = {
    "metadata": {"name": "chat"},
    "spec": {"baseModel": {"uri": "s3://ft/models/tiny"}, "servedModelName": "tiny", "apiKeySecretRef": {"name": "chat-key"}},
    "status": {"phase": "Ready", "url": "http://chat.team-a.svc:8000/v1", "models": ["tiny", "support"]},
}
INPUTS_READY = dict(dataset=READY_DATASET, finetunejobs={"support-bot": COMPLETED_FTJ})


def run(spec=SPEC, status=None, observed=None, config=CONFIG):
    return reconcile({**OWNER, "spec": spec, "status": status}, observed or Observed(), config)


def conditions(plan) -> dict[str, dict]:
    return {c["type"]: c for c in plan.status["conditions"]}


def job_of(plan) -> dict:
    return next(c for c in plan.create if c["kind"] == "Job")


def config_of(plan) -> contract.EvaluateConfig:
    configmap = next(c for c in plan.create if c["kind"] == "ConfigMap")
    return contract.EvaluateConfig.model_validate_json(configmap["data"]["config.json"])


def job(*conditions_true: str, failed: int = 0) -> dict:
    return {"metadata": {"name": "qa-eval", "uid": "j-1"}, "spec": {}, "status": {"failed": failed, "conditions": [{"type": t, "status": "True"} for t in conditions_true]}}


def running_pod() -> dict:
    return {"metadata": {"name": "qa-eval-x"}, "status": {"phase": "Running", "containerStatuses": [{"name": "evaluator", "state": {"running": {}}}]}}


def failed_pod(message: str, exit_code: int = 42) -> dict:
    terminated = {"exitCode": exit_code, "message": message, "finishedAt": "2026-01-01T00:00:00Z"}
    return {"metadata": {"name": "qa-eval-x"}, "status": {"phase": "Failed", "containerStatuses": [{"name": "evaluator", "state": {"terminated": terminated}}]}}


def summary(tuned_f1: float | None = 0.62, base_f1: float | None = 0.21) -> contract.EvaluationSummary:
    def delta(value):
        return None if value is None or base_f1 is None else value - base_f1

    return contract.EvaluationSummary(
        baseline="base",
        samples=40,
        results_uri=f"{OUTPUT}/results.jsonl",
        scores=[
            contract.ScoreRecord(model="base", grader="f1", mean=base_f1, ci_low=None if base_f1 is None else 0.1, ci_high=None if base_f1 is None else 0.3, n=40),
            contract.ScoreRecord(model="base", grader="em", mean=0.1, ci_low=0.0, ci_high=0.2, n=40),
            contract.ScoreRecord(model="tuned", grader="f1", mean=tuned_f1, ci_low=None if tuned_f1 is None else 0.5, ci_high=None if tuned_f1 is None else 0.7, n=38 if tuned_f1 is not None else 0, errors=2 if tuned_f1 is not None else 40, delta=delta(tuned_f1)),
            contract.ScoreRecord(model="tuned", grader="em", mean=0.4, ci_low=0.25, ci_high=0.55, n=40, delta=0.3),
        ],
    )


def started(spec=SPEC):
    """The status after the Job was created."""
    return run(spec=spec, observed=Observed(**INPUTS_READY)).status


def completed(spec=SPEC, **summary_args):
    return run(spec=spec, status=started(spec), observed=Observed(job=job("Complete"), summary=summary(**summary_args), results_complete=True))


# ----------------------------------------------------------------------------------------------
# Pending until every input is ready


def test_pending_with_the_reason_until_the_dataset_is_ready():
    plan = run()
    assert plan.new_phase == "Pending" and plan.create == [] and plan.retry_after
    assert plan.status["message"] == "Dataset support-chats does not exist"
    assert conditions(plan)["Validated"]["reason"] == "DatasetNotFound"
    invalid = {"status": {"phase": "Invalid", "message": "line 3: not_json"}}
    plan = run(status=plan.status, observed=Observed(dataset=invalid))
    assert plan.new_phase == "Pending" and "to be Ready (it is Invalid: line 3: not_json)" in plan.status["message"]
    assert conditions(plan)["Validated"]["reason"] == "DatasetNotReady"
    assert [e.reason for e in plan.events] == []  # still Pending: no new transition event


def test_pending_until_the_finetunejob_completes():
    running = {"metadata": {"name": "support-bot"}, "spec": {}, "status": {"phase": "Running"}}
    plan = run(observed=Observed(dataset=READY_DATASET, finetunejobs={"support-bot": running}))
    assert plan.new_phase == "Pending" and plan.create == []
    assert plan.status["message"] == "model tuned: waiting for FineTuneJob support-bot to complete (it is Running)"
    assert conditions(plan)["Validated"]["reason"] == "ModelNotReady"
    failed = {"metadata": {"name": "support-bot"}, "spec": {}, "status": {"phase": "Failed"}}
    plan = run(observed=Observed(dataset=READY_DATASET, finetunejobs={"support-bot": failed}))
    assert "ended Failed without a model" in plan.status["message"]
    plan = run(observed=Observed(dataset=READY_DATASET, finetunejobs={"support-bot": None}))
    assert conditions(plan)["Validated"]["reason"] == "ModelNotFound"
    assert plan.events[0].reason == "Pending" and "does not exist" in plan.events[0].message


def test_pending_until_the_inference_endpoint_is_ready_and_serves_the_model():
    spec = {**SPEC, "models": [{"name": "served", "inferenceEndpoint": "chat", "model": "support"}], "baseline": "served"}
    deploying = {**READY_ENDPOINT, "status": {"phase": "Deploying"}}
    plan = run(spec=spec, observed=Observed(dataset=READY_DATASET, endpoints={"chat": deploying}))
    assert plan.status["message"] == "model served: waiting for InferenceEndpoint chat to be Ready (it is Deploying)"
    not_yet = copy.deepcopy(READY_ENDPOINT)
    not_yet["status"]["models"] = ["tiny"]
    plan = run(spec=spec, observed=Observed(dataset=READY_DATASET, endpoints={"chat": not_yet}))
    assert plan.new_phase == "Pending" and "does not serve 'support' (yet); it serves tiny" in plan.status["message"]


# ----------------------------------------------------------------------------------------------
# The models, the dataset and the Job


def test_inputs_ready_create_the_config_and_the_job():
    plan = run(observed=Observed(**INPUTS_READY))
    assert [c["kind"] for c in plan.create] == ["ConfigMap", "Job"]
    assert plan.new_phase == "Pending" and plan.status["jobName"] == "qa-eval"
    assert conditions(plan)["Validated"]["reason"] == "InputsReady"
    config = config_of(plan)
    assert config.dataset == READY_DATASET["status"]["validationUri"], "the validation split by default"
    assert config.output_uri == OUTPUT and config.baseline == "base"
    base, tuned = config.models
    assert (base.name, base.model_uri, base.adapter_uri) == ("base", "hf://meta-llama/Llama-3.2-1B-Instruct", None)
    # A LoRA FineTuneJob: its base model loaded directly, its adapter applied on top.
    assert (tuned.name, tuned.model_uri, tuned.adapter_uri) == ("tuned", "hf://meta-llama/Llama-3.2-1B-Instruct", "s3://ft/jobs/team-a/support-bot-u9/model")
    assert [(g.name, g.type) for g in config.graders] == [("f1", "f1"), ("em", "exact_match")]
    assert config.generation.max_tokens == 128 and config.generation.temperature == 0
    assert config.storage.endpoint == "minio:9000" and config.storage.credentials_dir == "/var/run/secrets/finetune/storage"


def test_a_full_finetunejob_model_is_loaded_as_it_is():
    full = copy.deepcopy(COMPLETED_FTJ)
    full["status"]["outputModel"]["adapter"] = False
    plan = run(observed=Observed(dataset=READY_DATASET, finetunejobs={"support-bot": full}))
    tuned = config_of(plan).models[1]
    assert (tuned.model_uri, tuned.adapter_uri) == ("s3://ft/jobs/team-a/support-bot-u9/model", None)


def test_the_train_split_and_the_fallback_when_there_is_no_validation_file():
    plan = run(spec={**SPEC, "split": "train"}, observed=Observed(**INPUTS_READY))
    assert config_of(plan).dataset.endswith("/train.jsonl")
    no_validation = copy.deepcopy(READY_DATASET)
    del no_validation["status"]["validationUri"]
    plan = run(observed=Observed(dataset=no_validation, finetunejobs={"support-bot": COMPLETED_FTJ}))
    assert config_of(plan).dataset.endswith("/train.jsonl")


def test_an_endpoint_model_gets_its_url_its_model_and_its_api_key_as_a_file():
    spec = {
        **SPEC,
        "models": [{"name": "served", "inferenceEndpoint": "chat"}, {"name": "adapter", "inferenceEndpoint": "chat", "model": "support"}],
        "baseline": "served",
    }
    plan = run(spec=spec, observed=Observed(dataset=READY_DATASET, endpoints={"chat": READY_ENDPOINT}))
    served, adapter = config_of(plan).models
    assert (served.endpoint, served.model) == ("http://chat.team-a.svc:8000/v1", "tiny"), "the endpoint's own served name by default"
    assert adapter.model == "support"
    assert served.api_key_file == adapter.api_key_file == "/var/run/secrets/finetune/api-keys/0/apiKey"
    pod = job_of(plan)["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "api-key-0"]
    assert volume["secret"]["secretName"] == "chat-key" and volume["secret"]["items"] == [{"key": "apiKey", "path": "apiKey"}]
    assert "chat-key" not in next(c for c in plan.create if c["kind"] == "ConfigMap")["data"]["config.json"]


def test_an_llm_judge_behind_an_endpoint_gets_its_key_file():
    spec = {
        **SPEC,
        "graders": [{"name": "judge", "type": "llm_judge", "rubric": "Is it right?", "judge": {"url": "https://llm.example/v1", "model": "big", "apiKeySecretRef": {"name": "judge-key", "key": "token"}}}],
    }
    plan = run(spec=spec, observed=Observed(**INPUTS_READY))
    [grader] = config_of(plan).graders
    assert (grader.judge.endpoint, grader.judge.model, grader.judge.api_key_file) == ("https://llm.example/v1", "big", "/var/run/secrets/finetune/api-keys/0/apiKey")
    pod = job_of(plan)["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "api-key-0")["secret"]["items"] == [{"key": "token", "path": "apiKey"}]


def test_only_a_judge_url_the_tenant_wrote_is_held_to_the_rules_for_tenants_urls():
    """Endpoints the operator resolved from InferenceEndpoints are its own Services (plain http in the cluster);
    a judge's `url` is the tenant's, which the pod checks (https for a key, no private addresses unless allowed)."""
    spec = {
        **SPEC,
        "models": [{"name": "served", "inferenceEndpoint": "chat"}, {"name": "tuned", "fineTuneJob": "support-bot"}],
        "baseline": "served",
        "graders": [
            {"name": "outside", "type": "llm_judge", "rubric": "Right?", "judge": {"url": "https://llm.example/v1", "model": "big"}},
            {"name": "inside", "type": "llm_judge", "rubric": "Right?", "judge": {"inferenceEndpoint": "chat", "model": "tiny"}},
        ],
    }
    observed = Observed(**INPUTS_READY, endpoints={"chat": READY_ENDPOINT})
    config = config_of(run(spec=spec, observed=observed))
    assert [m.trusted_endpoint for m in config.models] == [True, False]
    assert [g.judge.trusted_endpoint for g in config.graders] == [False, True]
    assert config.allow_private_urls is False
    allowing = CONFIG.model_copy(update={"allow_private_urls": True})
    assert config_of(run(spec=spec, observed=observed, config=allowing)).allow_private_urls is True


def test_a_pairwise_grader_reaches_the_evaluator_with_its_judge_and_criteria():
    grader = {"name": "win_rate", "type": "pairwise", "rubric": "The politer answer wins.", "judge": {"url": "https://llm.example/v1", "model": "big"}}
    plan = run(spec={**SPEC, "graders": [grader], "passCriterion": {"grader": "win_rate", "minScore": 0.5}}, observed=Observed(**INPUTS_READY))
    [configured] = config_of(plan).graders
    assert (configured.type, configured.rubric, configured.judge.endpoint, configured.judge.model) == ("pairwise", "The politer answer wins.", "https://llm.example/v1", "big")
    assert config_of(plan).baseline == "base"


def test_the_job_is_restricted_has_no_api_access_and_fails_at_once_on_bad_input():
    plan = run(observed=Observed(**INPUTS_READY))
    job_ = job_of(plan)
    assert job_["metadata"]["name"] == "qa-eval"
    assert job_["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    pod = job_["spec"]["template"]["spec"]
    assert check_restricted(pod) == []
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["image"] == "registry.example/finetune-trainer:1"
    assert container["command"] == ["finetune-trainer", "evaluate", "--config", "/etc/finetune/config.json"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    rules = job_["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "evaluator", "operator": "In", "values": [42]}}
    storage = next(v for v in pod["volumes"] if v["name"] == "storage-credentials")
    assert storage["secret"]["secretName"] == "finetune-storage"
    # The FineTuneJob's hf:// base model needs its Hugging Face token: a file the hub client reads.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_TOKEN_PATH"] == "/var/run/secrets/finetune/hf-token/token"
    assert next(v for v in pod["volumes"] if v["name"] == "hf-token")["secret"]["secretName"] == "hf-token"
    assert not any("valueFrom" in e for e in container["env"]), "no secret in the environment"


def test_gpus_and_a_gpu_type_place_the_pod():
    plan = run(spec={**SPEC, "resources": {"gpus": 1, "gpuType": "a100"}}, observed=Observed(**INPUTS_READY))
    pod = job_of(plan)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"gpu": "a100"}


def test_pvc_models_are_mounted_where_the_evaluator_looks():
    spec = {**SPEC, "models": [{"name": "base", "baseModel": "pvc://models/llama"}], "baseline": None, "passCriterion": None}
    spec = {k: v for k, v in spec.items() if v is not None}
    plan = run(spec=spec, observed=Observed(dataset=READY_DATASET))
    pod = job_of(plan)["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "model-pvc-0")["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert {"name": "model-pvc-0", "mountPath": "/models/models", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert {"name": "FINETUNE_PVC_ROOT", "value": "/models"} in pod["containers"][0]["env"]


# ----------------------------------------------------------------------------------------------
# Running, Failed, Completed


def test_running_shows_the_samples_done():
    status = started()
    plan = run(status=status, observed=Observed(job=job(), pods=[running_pod()]))
    assert plan.new_phase == "Running" and plan.status["startTime"]
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Running")]
    progress = contract.Progress(phase="evaluating", step=12, total_steps=80)
    plan = run(status=plan.status, observed=Observed(job=job(), pods=[running_pod()], progress=progress))
    assert plan.status["message"] == "Evaluating: 12/80 samples answered and graded"
    assert plan.events == []


def test_running_holds_while_the_job_controller_has_not_recorded_the_ended_pod():
    status = started()
    running = run(status=status, observed=Observed(job=job(), pods=[running_pod()]))
    assert running.new_phase == "Running"
    ended = {"metadata": {"name": "qa-eval-x"}, "status": {"phase": "Succeeded"}}
    held = run(status=running.status, observed=Observed(job=job(), pods=[ended]))
    assert held.new_phase == "Running" and held.events == [], (held.new_phase, held.events)
    done = run(status=held.status, observed=Observed(job=job("Complete"), pods=[ended], summary=summary(), results_complete=True))
    assert done.new_phase == "Completed"


def test_a_missing_api_key_secret_keeps_it_pending_with_the_reason():
    waiting = {"status": {"phase": "Pending", "containerStatuses": [{"name": "evaluator", "state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "chat-key" not found'}}}]}}
    plan = run(status=started(), observed=Observed(job=job(), pods=[waiting]))
    assert plan.new_phase == "Pending" and plan.status["message"] == "Secret chat-key does not exist in this namespace"
    assert conditions(plan)["Validated"]["reason"] == "SecretNotFound"


@pytest.mark.parametrize(
    "reason,message",
    [
        ("InvalidRegex", "grader 'digits': pattern '([0-9' does not compile: missing ), unterminated subpattern at position 0"),
        ("UnknownGrader", "grader 'bleu' has type 'bleu'; known types: exact_match, f1"),
        ("NoReferences", "none of the 12 examples has a reference answer"),
    ],
)
def test_a_failed_job_fails_with_the_evaluators_reason(reason, message):
    plan = run(status=started(), observed=Observed(job=job("Failed"), pods=[failed_pod(f"{reason}: {message}")]))
    assert plan.new_phase == "Failed"
    failed = conditions(plan)["Failed"]
    assert (failed["reason"], failed["message"]) == (reason, message)
    assert plan.status["message"] == f"Evaluation failed: {reason}: {message}"
    assert plan.status["completionTime"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Failed")]


def test_progress_json_names_the_reason_when_the_termination_message_is_gone():
    progress = contract.Progress(phase="failed", reason="ModelNotFound", message="model s3://ft/models/x: the prefix holds no objects")
    plan = run(status=started(), observed=Observed(job=job("Failed"), progress=progress))
    assert conditions(plan)["Failed"]["reason"] == "ModelNotFound"
    plan = run(status=started(), observed=Observed(job={**job(), "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}))
    assert conditions(plan)["Failed"]["reason"] == "BackoffLimitExceeded"


def test_completed_puts_the_score_table_the_deltas_and_the_headline_in_status():
    plan = completed()
    assert plan.new_phase == "Completed"
    status = plan.status
    assert status["headline"] == "f1 0.62 (+0.41)"
    assert status["message"] == "Evaluation completed: f1 0.62 (+0.41)"
    assert (status["samples"], status["resultsUri"]) == (40, f"{OUTPUT}/results.jsonl")
    rows = {(r["model"], r["grader"]): r for r in status["scores"]}
    assert rows[("tuned", "f1")] == {"model": "tuned", "grader": "f1", "mean": 0.62, "ciLow": 0.5, "ciHigh": 0.7, "n": 38, "errors": 2, "delta": pytest.approx(0.41)}
    assert "delta" not in rows[("base", "f1")], "the baseline has no delta"
    assert conditions(plan)["Succeeded"]["reason"] == "Scored"
    assert "Passed" not in conditions(plan), "no passCriterion, no verdict"
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Completed")]


def test_a_grader_that_scored_nothing_has_no_mean_and_no_delta():
    plan = completed(tuned_f1=None)
    row = next(r for r in plan.status["scores"] if (r["model"], r["grader"]) == ("tuned", "f1"))
    assert row == {"model": "tuned", "grader": "f1", "n": 0, "errors": 40}
    assert plan.status["headline"] == "f1 n/a"


def test_a_complete_job_without_the_manifest_is_not_reported_as_scores():
    plan = run(status=started(), observed=Observed(job=job("Complete"), summary=summary(), results_complete=False))
    assert plan.new_phase == "Failed" and conditions(plan)["Failed"]["reason"] == "IncompleteResults"
    assert "scores" not in plan.status


def test_final_phases_are_sticky():
    done = completed().status
    plan = run(status=done, observed=Observed())
    assert plan.new_phase == "Completed" and plan.events == [] and plan.create == []


# ----------------------------------------------------------------------------------------------
# The pass criterion


@pytest.mark.parametrize(
    "criterion,summary_args,expected",
    [
        ({"grader": "f1", "minDelta": 0.3}, {}, ("True", "CriterionMet")),
        ({"grader": "f1", "minDelta": 0.5}, {}, ("False", "CriterionNotMet")),
        ({"grader": "f1", "minScore": 0.6}, {}, ("True", "CriterionMet")),
        ({"grader": "f1", "minScore": 0.7, "minDelta": 0.1}, {}, ("False", "CriterionNotMet")),
        ({"grader": "f1", "minScore": 0.1}, {"tuned_f1": None}, ("False", "ScoreMissing")),
        ({"grader": "f1", "minDelta": 0.1}, {"base_f1": None}, ("False", "ScoreMissing")),
    ],
)
def test_the_pass_criterion_sets_the_passed_condition(criterion, summary_args, expected):
    plan = completed(spec={**SPEC, "passCriterion": criterion}, **summary_args)
    passed = conditions(plan)["Passed"]
    assert (passed["status"], passed["reason"]) == expected
    verdict = plan.events[-1]
    assert verdict.reason == ("Passed" if expected[0] == "True" else "NotPassed")
    assert verdict.type == ("Normal" if expected[0] == "True" else "Warning")


def test_the_verdict_message_says_what_was_measured_and_what_was_needed():
    plan = completed(spec={**SPEC, "passCriterion": {"grader": "f1", "minDelta": 0.5}})
    assert conditions(plan)["Passed"]["message"] == "tuned: f1 0.620 (+0.410) (needs delta >= +0.5)"


def test_a_failed_evaluation_has_no_passing_verdict():
    spec = {**SPEC, "passCriterion": {"grader": "f1", "minScore": 0.1}}
    plan = run(spec=spec, status=started(spec), observed=Observed(job=job("Failed"), pods=[failed_pod("NoReferences: none")]))
    assert (conditions(plan)["Passed"]["status"], conditions(plan)["Passed"]["reason"]) == ("False", "ScoreMissing")


# ----------------------------------------------------------------------------------------------
# Invalid specs


@pytest.mark.parametrize(
    "patch,words",
    [
        ({"passCriterion": {"grader": "bleu", "minScore": 0.5}}, "spec.passCriterion.grader: 'bleu' is not one of the graders"),
        ({"baseline": None, "passCriterion": {"grader": "f1", "minDelta": 0.1}}, "spec.passCriterion.minDelta: a delta needs a baseline"),
        ({"baseline": "nobody"}, "spec.baseline: 'nobody' is not one of the models"),
        ({"graders": [{"name": "r", "type": "regex"}]}, "spec.graders[0].pattern: a regex grader needs a pattern"),
        ({"resources": {"gpus": 1, "gpuType": "tpu-v9"}}, "spec.resources.gpuType: unknown GPU type 'tpu-v9'"),
        ({"models": [{"name": "a", "baseModel": "s3://ft/m", "fineTuneJob": "x"}], "baseline": None}, "spec.models[0]: set exactly one of"),
        ({"graders": [{"name": "f1", "type": "bleu"}]}, "spec.graders.0.type"),
        ({"graders": [{"name": "win", "type": "pairwise"}]}, "spec.graders[0].judge: a pairwise grader needs a judge"),
        ({"baseline": None, "graders": [{"name": "win", "type": "pairwise", "judge": {"url": "https://llm.example/v1", "model": "big"}}]},
         "spec.baseline: grader win (pairwise) compares each model with the baseline: set baseline"),
    ],
)
def test_invalid_specs_fail_with_the_field_and_never_get_a_job(patch, words):
    spec = {k: v for k, v in {**SPEC, **patch}.items() if v is not None}
    plan = run(spec=spec, observed=Observed(**INPUTS_READY))
    assert plan.new_phase == "Failed" and plan.create == []
    assert words in plan.status["message"]
    assert conditions(plan)["Failed"]["reason"] == "InvalidSpec"


# ----------------------------------------------------------------------------------------------
# The examples


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "deploy" / "examples").glob("evaluation*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_are_valid_evaluations(path):
    from finetune_operator.api.evaluation import EvaluationSpec
    from finetune_operator.api.evaluation import spec_problems as operator_side_problems

    [doc] = list(yaml.safe_load_all(path.read_text()))
    assert (doc["apiVersion"], doc["kind"]) == ("finetune.dev/v1alpha1", "Evaluation")
    spec = EvaluationSpec.model_validate(doc["spec"])
    assert operator_side_problems(spec, OperatorConfig()) == []
    plan = run(spec=doc["spec"], observed=Observed())
    assert plan.new_phase == "Pending", plan.status["message"]


def test_there_are_examples():
    assert len(EXAMPLES) >= 2


# ----------------------------------------------------------------------------------------------
# `finetune evaluation show` prints what status holds


def test_show_prints_the_table_with_n_a_for_what_was_not_computed():
    from finetune_operator.cli import format_evaluation

    evaluation = {"metadata": {"name": "qa", "namespace": "team-a"}, "spec": SPEC, "status": completed(tuned_f1=None).status}
    text = format_evaluation(evaluation)
    assert text.splitlines()[0] == "Evaluation team-a/qa: Completed"
    assert "model           | f1" in text
    tuned = next(line for line in text.splitlines() if line.startswith("tuned "))
    assert tuned.split("|")[1].strip() == "n/a (40 errors)"
    assert "Per-sample results: s3://ft/evaluations/team-a/qa-u-1/results.jsonl" in text


def test_show_of_a_pending_evaluation_says_why_and_prints_no_table():
    from finetune_operator.cli import format_evaluation

    text = format_evaluation({"metadata": {"name": "qa", "namespace": "team-a"}, "spec": SPEC, "status": run().status})
    assert text == "Evaluation team-a/qa: Pending\nDataset support-chats does not exist"
