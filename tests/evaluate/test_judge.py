"""The llm_judge grader: a strict parse of the judge's score, and judges that misbehave."""

from __future__ import annotations

import pytest

from finetune_trainer.contract import EvalModel, GraderSpec
from finetune_trainer.evaluate.errors import SampleError
from finetune_trainer.evaluate.graders import GradeItem
from finetune_trainer.evaluate.judge import LlmJudgeGrader, parse_judge_score
from finetune_trainer.evaluate.samples import EvalTurn

from .openai_stub import OpenAIStub, closed_port_url


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("The answer names the right city.\nSCORE: 5", 1.0),
        ("SCORE: 1", 0.0),
        ("Partly right.\n\nSCORE: 3\n\n", 0.5),
        ("  SCORE:4  ", 0.75),
        ("SCORE: 2.5", 0.375),
    ],
)
def test_a_well_formed_score_is_mapped_to_zero_one(reply, score):
    assert parse_judge_score(reply, 1, 5) == pytest.approx(score)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "JudgeUnparseable"),
        (None, "JudgeUnparseable"),
        ("   \n\n", "JudgeUnparseable"),
        ("I think this deserves a 4.", "JudgeUnparseable"),
        ("SCORE: 4\nThat is my verdict.", "JudgeUnparseable"),  # the score must be the last line
        ("score: 4", "JudgeUnparseable"),
        ("SCORE: four", "JudgeUnparseable"),
        ("**SCORE: 4**", "JudgeUnparseable"),
        ("SCORE: 4/5", "JudgeUnparseable"),
        ("SCORE: 6", "JudgeOutOfRange"),
        ("SCORE: 0", "JudgeOutOfRange"),
        ("SCORE: -1", "JudgeOutOfRange"),
    ],
)
def test_anything_else_is_an_error_never_a_score(reply, reason):
    result = parse_judge_score(reply, 1, 5)
    assert isinstance(result, SampleError)
    assert result.reason == reason


def turn(question: str, reference: str) -> EvalTurn:
    return EvalTurn(example=0, turn=0, messages=({"role": "user", "content": question},), references=(reference,))


def test_a_judge_that_answers_garbage_or_fails_gives_per_sample_errors(tmp_path):
    """The stub judge scores by the answer it sees: right, wrong, garbage, out of range, an HTTP error."""

    def judge(body):
        graded = body["messages"][-1]["content"].rsplit("Answer to grade:\n", 1)[1]
        return {
            "Paris": (200, "Correct city.\nSCORE: 5"),
            "Lyon": (200, "Wrong city.\nSCORE: 1"),
            "ramble": (200, "I'd rather not say."),
            "overflow": (200, "SCORE: 11"),
            "crash": (500, "judge crashed"),
        }[graded]

    key_file = tmp_path / "judge-key"
    key_file.write_text("sk-judge-secret\n")
    with OpenAIStub(judge) as stub:
        spec = GraderSpec(
            name="judge",
            type="llm_judge",
            # A judge behind an InferenceEndpoint: a cluster Service (plain http) the operator resolved.
            judge=EvalModel(name="judge", endpoint=stub.url, model="judge-model", api_key_file=str(key_file), trusted_endpoint=True),
            rubric="Is the city right?",
        )
        grader = LlmJudgeGrader.from_spec(spec, concurrency=3)
        answers = ["Paris", "Lyon", "ramble", "overflow", "crash"]
        scores = grader.grade([GradeItem(turn("Capital of France?", "Paris"), a) for a in answers])

    assert scores[:2] == [1.0, 0.0]
    assert [s.reason for s in scores[2:]] == ["JudgeUnparseable", "JudgeOutOfRange", "JudgeFailed"]
    # The judge saw the rubric, the question, the reference and the answer, and the key from the file.
    first = next(r for r in stub.requests if r["messages"][-1]["content"].endswith("Paris") and "Lyon" not in r["messages"][-1]["content"])
    assert "Is the city right?" in first["messages"][0]["content"]
    assert "SCORE: <n>" in first["messages"][0]["content"]
    assert "Capital of France?" in first["messages"][1]["content"]
    assert first["model"] == "judge-model" and first["temperature"] == 0
    assert first["auth"] == "Bearer sk-judge-secret"
    assert all(r["path"] == "/v1/chat/completions" for r in stub.requests)


def test_a_judge_that_is_down_gives_per_sample_errors():
    spec = GraderSpec(name="judge", type="llm_judge", judge=EvalModel(name="judge", endpoint=closed_port_url(), model="m"))
    grader = LlmJudgeGrader.from_spec(spec, concurrency=2, allow_private_urls=True)
    scores = grader.grade([GradeItem(turn("Capital of France?", "Paris"), "Paris") for _ in range(2)])
    assert [s.reason for s in scores] == ["JudgeUnreachable", "JudgeUnreachable"]
