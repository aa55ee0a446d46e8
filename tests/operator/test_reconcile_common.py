"""The shape every reconcile shares (reconcile/common.py): the status it writes is checked against the kind's
status model, so a misspelt field fails here instead of being dropped by the API server without a word."""

from __future__ import annotations

import pytest

from finetune_operator.api.finetunejob import FineTuneJobStatus
from finetune_operator.reconcile.common import Event, Plan, Reconciliation, check_status, clip
from finetune_operator.reconcile.conditions import Conditions

OBJ = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 2}}


def test_a_status_field_the_model_does_not_have_is_refused():
    check_status(FineTuneJobStatus, {"phase": "Running", "progress": {"step": 3, "trainLoss": 1.5}, "checkpoints": [{"step": 1, "uri": "s3://b/c"}]})
    with pytest.raises(ValueError, match=r"status.jobNmae is not a field of FineTuneJobStatus"):
        check_status(FineTuneJobStatus, {"jobNmae": "j-train"})
    with pytest.raises(ValueError, match=r"status.progress.trainloss is not a field of Progress"):
        check_status(FineTuneJobStatus, {"progress": {"trainloss": 1.5}})
    with pytest.raises(ValueError, match=r"status.checkpoints\[0\].path is not a field"):
        check_status(FineTuneJobStatus, {"checkpoints": [{"step": 1, "path": "x"}]})


def test_finish_derives_the_phase_clips_the_message_and_announces_a_transition_once():
    def derive(conditions: Conditions) -> str:
        return "Running" if conditions.is_true("Running") else "Pending"

    def words(phase: str, message: str, out: dict, old: dict) -> Event:
        return Event("Normal", phase, message)

    r = Reconciliation({**OBJ, "status": {"phase": "Pending"}}, derive, words, FineTuneJobStatus)
    r.conditions.set("Running", True, "Training", "training")
    r.out["message"] = "x" * 5000
    plan = r.finish(Plan(status={}))
    assert plan.new_phase == "Running" and plan.old_phase == "Pending"
    assert len(plan.status["message"]) == 4096 and plan.status["observedGeneration"] == 2
    assert [e.reason for e in plan.events] == ["Running"]
    again = Reconciliation({**OBJ, "status": plan.status}, derive, words, FineTuneJobStatus).finish(Plan(status={}))
    assert again.events == [], "no transition, no Event"
    misspelt = Reconciliation(OBJ, derive, words, FineTuneJobStatus)
    misspelt.out["startedAt"] = "2026-01-01T00:00:00Z"
    with pytest.raises(ValueError, match="startedAt"):
        misspelt.finish(Plan(status={}))


def test_clip_keeps_short_text_and_marks_a_cut():
    assert clip("short", 10) == "short"
    assert clip("a" * 20, 10) == "a" * 9 + "…"


def test_every_status_string_and_list_is_cut_to_what_the_crd_allows():
    status = {"message": "m" * 10_000, "checkpoints": [{"step": i, "uri": "u" * 3000} for i in range(150)],
              "outputModel": {"name": "n" * 600, "uri": "s3://b/m"}}  # fmt: skip
    check_status(FineTuneJobStatus, status)
    assert len(status["message"]) == 4096 and status["message"].endswith("…")
    assert len(status["checkpoints"]) == 100 and len(status["checkpoints"][0]["uri"]) == 2048
    assert len(status["outputModel"]["name"]) == 512
