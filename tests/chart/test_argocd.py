"""Argo CD: the Application installs the chart with CRDs first, and the Lua health checks show each kind's
phase the way a platform team expects (run under Lua 5.1, the dialect of Argo CD's gopher-lua)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from lupa import lua51

from tests.chart.conftest import CHART_DIR, DEPLOY_DIR, REPO_ROOT, render_chart

HEALTH_DIR = DEPLOY_DIR / "argocd" / "health"
KINDS = {"Dataset": "dataset", "FineTuneJob": "finetunejob", "Evaluation": "evaluation", "InferenceEndpoint": "inferenceendpoint"}


def run_health_check(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run deploy/argocd/health/<kind>.lua as Argo CD does: the object as global `obj`, a table returned."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    script = (HEALTH_DIR / f"{KINDS[kind]}.lua").read_text()
    result = lua.execute(script)
    assert result is not None, f"{kind}.lua returned nothing"
    health = dict(result.items())
    assert set(health) == {"status", "message"}, health
    assert health["status"] in {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
    return health


def resource(kind: str, generation: int = 1, status: dict[str, Any] | None = None, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "sample", "namespace": "team-a", "generation": generation},
        "spec": spec or {},
    }
    if status is not None:
        obj["status"] = {"observedGeneration": generation, "message": "", "conditions": [], **status}
    return obj


def condition(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


# ------------------------------------------------------------------------------------------------
# FineTuneJob


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Pending", "Progressing"),
        ("Queued", "Progressing"),
        ("Running", "Progressing"),
        ("Uploading", "Progressing"),
        ("Completed", "Healthy"),
        ("Failed", "Degraded"),
        ("Suspended", "Suspended"),
    ],
)
def test_finetunejob_health_follows_its_phase(phase: str, expected: str) -> None:
    assert run_health_check("FineTuneJob", resource("FineTuneJob", status={"phase": phase}))["status"] == expected


def test_a_training_job_shows_its_progress_in_argo_cd() -> None:
    job = resource(
        "FineTuneJob",
        status={
            "phase": "Running",
            "message": "training",
            "progress": {"step": 21, "totalSteps": 50, "percent": 42, "summary": "42% (21/50)", "trainLoss": 1.23},
            "conditions": [condition("Running", "True", "Training")],
        },
    )
    assert run_health_check("FineTuneJob", job) == {"status": "Progressing", "message": "Running: training [42% (21/50)]"}


def test_a_failed_job_is_degraded_with_the_trainers_reason() -> None:
    job = resource("FineTuneJob", status={"phase": "Failed", "conditions": [condition("Failed", "True", "OutOfMemory")]})
    assert run_health_check("FineTuneJob", job) == {"status": "Degraded", "message": "Failed: OutOfMemory"}


def test_a_cancelled_job_is_healthy_only_when_the_spec_asked_for_it() -> None:
    cancelled = {"phase": "Cancelled", "conditions": [condition("Failed", "True", "Cancelled")]}
    asked = resource("FineTuneJob", status=cancelled, spec={"cancel": True})
    not_asked = resource("FineTuneJob", status=copy.deepcopy(cancelled))
    assert run_health_check("FineTuneJob", asked)["status"] == "Healthy"
    assert run_health_check("FineTuneJob", not_asked)["status"] == "Degraded"


def test_a_status_older_than_the_spec_is_progressing() -> None:
    for kind, done in (("FineTuneJob", "Completed"), ("Dataset", "Ready"), ("Evaluation", "Completed"), ("InferenceEndpoint", "Ready")):
        obj = resource(kind, generation=3, status={"phase": done})
        obj["status"]["observedGeneration"] = 2
        health = run_health_check(kind, obj)
        assert health == {"status": "Progressing", "message": "Waiting for the operator to observe generation 3"}, kind


def test_an_object_without_status_waits_for_the_operator() -> None:
    for kind in KINDS:
        health = run_health_check(kind, resource(kind))
        assert health["status"] == "Progressing", kind
        assert kind in health["message"]


def test_an_unknown_phase_is_reported_not_guessed() -> None:
    health = run_health_check("FineTuneJob", resource("FineTuneJob", status={"phase": "Exploded"}))
    assert health == {"status": "Unknown", "message": "Unknown phase Exploded"}


# ------------------------------------------------------------------------------------------------
# Dataset, InferenceEndpoint, Evaluation


@pytest.mark.parametrize(
    ("phase", "expected"), [("Pending", "Progressing"), ("Validating", "Progressing"), ("Ready", "Healthy"), ("Invalid", "Degraded")]
)
def test_dataset_health_follows_its_phase(phase: str, expected: str) -> None:
    assert run_health_check("Dataset", resource("Dataset", status={"phase": phase}))["status"] == expected


def test_an_invalid_dataset_says_why() -> None:
    dataset = resource("Dataset", status={"phase": "Invalid", "message": "line 7: missing field messages"})
    assert run_health_check("Dataset", dataset) == {"status": "Degraded", "message": "Invalid: line 7: missing field messages"}


@pytest.mark.parametrize(
    ("phase", "expected"), [("Pending", "Progressing"), ("Deploying", "Progressing"), ("Ready", "Healthy"), ("Failed", "Degraded")]
)
def test_inferenceendpoint_health_follows_its_phase(phase: str, expected: str) -> None:
    assert run_health_check("InferenceEndpoint", resource("InferenceEndpoint", status={"phase": phase}))["status"] == expected


def test_an_endpoint_still_waiting_for_an_adapter_is_progressing() -> None:
    endpoint = resource(
        "InferenceEndpoint",
        status={
            "phase": "Ready",
            "conditions": [
                condition("Ready", "True", "Ready"),
                condition("AdaptersReady", "False", "AdapterNotReady", "support-bot: FineTuneJob support-v2 is Running"),
            ],
        },
    )
    assert run_health_check("InferenceEndpoint", endpoint) == {
        "status": "Progressing",
        "message": "Ready, but not every adapter is served: support-bot: FineTuneJob support-v2 is Running",
    }


@pytest.mark.parametrize(
    ("phase", "expected"), [("Pending", "Progressing"), ("Running", "Progressing"), ("Completed", "Healthy"), ("Failed", "Degraded")]
)
def test_evaluation_health_follows_its_phase(phase: str, expected: str) -> None:
    assert run_health_check("Evaluation", resource("Evaluation", status={"phase": phase}))["status"] == expected


def test_an_evaluation_that_misses_its_pass_criterion_is_degraded() -> None:
    failed_gate = resource(
        "Evaluation",
        status={"phase": "Completed", "conditions": [condition("Passed", "False", "CriterionNotMet", "exact_match 0.41 < 0.50")]},
    )
    passed_gate = resource("Evaluation", status={"phase": "Completed", "conditions": [condition("Passed", "True", "CriterionMet")]})
    assert run_health_check("Evaluation", failed_gate) == {
        "status": "Degraded",
        "message": "Completed, but the pass criterion is not met: exact_match 0.41 < 0.50",
    }
    assert run_health_check("Evaluation", passed_gate)["status"] == "Healthy"


# ------------------------------------------------------------------------------------------------
# Wiring


def test_argocd_cm_snippet_carries_exactly_the_health_scripts() -> None:
    patch = yaml.safe_load((DEPLOY_DIR / "argocd" / "argocd-cm-health.yaml").read_text())
    expected = {
        f"resource.customizations.health.finetune.dev_{kind}": (HEALTH_DIR / f"{name}.lua").read_text()
        for kind, name in KINDS.items()
    }
    assert patch == {"data": expected}


def test_application_installs_the_chart_with_crds_in_the_first_wave() -> None:
    app = yaml.safe_load((DEPLOY_DIR / "argocd" / "application.yaml").read_text())
    assert app["kind"] == "Application" and app["apiVersion"] == "argoproj.io/v1alpha1"
    source = app["spec"]["source"]
    assert (REPO_ROOT / source["path"]).resolve() == CHART_DIR.resolve()
    assert "CreateNamespace=true" in app["spec"]["syncPolicy"]["syncOptions"]

    rendered = render_chart(source["helm"]["valuesObject"], namespace=app["spec"]["destination"]["namespace"])
    waves = {
        (obj["kind"], obj["metadata"]["name"]): int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))
        for obj in rendered.objects
    }
    crd_waves = {name: wave for (kind, name), wave in waves.items() if kind == "CustomResourceDefinition"}
    other_waves = {key: wave for key, wave in waves.items() if key[0] != "CustomResourceDefinition"}
    assert set(crd_waves.values()) == {-1}
    assert len(crd_waves) == 4
    assert min(other_waves.values()) > max(crd_waves.values())


def test_health_scripts_exist_for_exactly_the_four_kinds() -> None:
    assert sorted(p.name for p in HEALTH_DIR.glob("*.lua")) == sorted(f"{name}.lua" for name in KINDS.values())
