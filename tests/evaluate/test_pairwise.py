"""The pairwise grader: a judge picks the better of a model's answer and the baseline's, asked in both orders."""

from __future__ import annotations

import re

import pytest

from finetune_local.preference_data import follows_instruction, preference_pairs
from finetune_trainer.contract import EvalModel, GraderSpec
from finetune_trainer.evaluate.errors import SampleError
from finetune_trainer.evaluate.graders import GradeItem
from finetune_trainer.evaluate.pairwise import PairwiseGrader, parse_verdict
from finetune_trainer.evaluate.samples import EvalTurn

from .conftest import read_results, read_summary, score_of, write_config, write_jsonl
from .openai_stub import OpenAIStub, closed_port_url
from .test_evaluate_cli import run_cli

ANSWERS = re.compile(r"Conversation:\n(?P<question>.*)\n\nAnswer A:\n(?P<a>.*)\n\nAnswer B:\n(?P<b>.*)\Z", re.S)


def instruction_judge(body: dict) -> tuple[int, str]:
    """A judge of the Shout/Whisper task: the answer in the case asked for wins; both or neither: a tie."""
    parts = ANSWERS.match(body["messages"][-1]["content"]).groupdict()
    a, b = (follows_instruction(parts["question"], parts[k]) for k in ("a", "b"))
    return 200, "Checked the case of the letters.\nVERDICT: " + ("A" if a and not b else "B" if b and not a else "TIE")


def grader(url: str, concurrency: int = 3) -> PairwiseGrader:
    return PairwiseGrader.from_spec(GraderSpec(name="win_rate", type="pairwise", judge=EvalModel(name="judge", endpoint=url, model="judge-1")), concurrency,
                                allow_private_urls=True)  # the judge is on loopback


def turn(prompt: str) -> EvalTurn:
    return EvalTurn(example=0, turn=0, messages=({"role": "user", "content": prompt},), references=("unused",))


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [("A is politer.\nVERDICT: A", "A"), ("VERDICT: B", "B"), ("Same.\n\nVERDICT: TIE\n", "TIE"), ("  VERDICT:A ", "A")],
)
def test_a_well_formed_verdict_is_read(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", ["", None, "A is better", "VERDICT: A\nbecause", "verdict: a", "VERDICT: C", "**VERDICT: A**", "VERDICT: A or B"])
def test_anything_else_is_an_error_never_a_verdict(reply):
    result = parse_verdict(reply)
    assert isinstance(result, SampleError) and result.reason == "JudgeUnparseable"


@pytest.mark.parametrize("always", ["A", "B"])
def test_a_judge_that_always_picks_one_position_scores_every_model_a_draw(always):
    with OpenAIStub(lambda body: (200, f"VERDICT: {always}")) as stub:
        items = [GradeItem(turn("Shout: hi"), "HI", baseline="hi"), GradeItem(turn("Whisper: hi"), "HI", baseline="hi")]
        assert grader(stub.url).grade(items) == [0.5, 0.5]
        assert len(stub.requests) == 4


def test_both_orders_are_asked_and_a_preference_that_survives_the_swap_wins():
    with OpenAIStub(instruction_judge) as stub:
        items = [
            GradeItem(turn("Shout: good luck"), "GOOD LUCK", baseline="good luck"),  # the model follows, the baseline not
            GradeItem(turn("Whisper: thank you"), "THANK YOU", baseline="thank you"),  # the other way round
            GradeItem(turn("Whisper: well done"), "well done", baseline="well done"),  # the same answer
        ]
        assert grader(stub.url).grade(items) == [1.0, 0.0, 0.5]
        shown = sorted((ANSWERS.match(r["messages"][-1]["content"])["a"], ANSWERS.match(r["messages"][-1]["content"])["b"]) for r in stub.requests)
        assert shown == sorted([("GOOD LUCK", "good luck"), ("good luck", "GOOD LUCK"), ("THANK YOU", "thank you"),
                                ("thank you", "THANK YOU"), ("well done", "well done"), ("well done", "well done")])  # fmt: skip
        assert all(r["temperature"] == 0 and r["model"] == "judge-1" for r in stub.requests)


def test_a_judge_that_fails_or_rambles_and_a_missing_baseline_answer_are_per_sample_errors():
    def judge(body):
        a = ANSWERS.match(body["messages"][-1]["content"])["a"]
        return {"ramble": (200, "Both are fine, really."), "crash": (500, "judge crashed")}.get(a, (200, "VERDICT: A"))

    with OpenAIStub(judge) as stub:
        scores = grader(stub.url).grade([
            GradeItem(turn("q"), "ramble", baseline="x"),
            GradeItem(turn("q"), "crash", baseline="x"),
            GradeItem(turn("q"), "fine", baseline=None),
        ])  # fmt: skip
    assert [s.reason for s in scores] == ["JudgeUnparseable", "JudgeFailed", "NoBaselineAnswer"]
    unreachable = grader(closed_port_url()).grade([GradeItem(turn("q"), "a", baseline="b")])
    assert unreachable[0].reason == "JudgeUnreachable"


def test_an_evaluation_reports_the_win_rate_against_the_baseline_and_no_score_for_the_baseline(tmp_path):
    """Regrade the answers two models gave to preference prompts: the one that follows the instruction more
    often wins. The baseline is answered first whatever its place in the config."""
    rows = preference_pairs(8, seed=3)
    for i, row in enumerate(rows):
        wanted = row["preferred_output"][0]["content"]
        # "dpo" follows the instruction on every prompt, "sft" on the first half only.
        row["response"] = {"dpo": wanted, "sft": wanted if i < 4 else row["non_preferred_output"][0]["content"]}
    dataset = write_jsonl(tmp_path / "pairs.jsonl", rows)
    output = tmp_path / "evaluation"
    with OpenAIStub(instruction_judge) as stub:
        config = write_config(tmp_path / "eval.json", {
            "models": [{"name": "dpo"}, {"name": "sft"}],
            "baseline": "sft",
            "dataset": str(dataset),
            "regrade": True,
            "allowPrivateUrls": True,  # the judge's URL is on loopback
            "graders": [{"name": "win_rate", "type": "pairwise", "judge": {"name": "judge", "endpoint": stub.url, "model": "judge-1"}},
                        {"name": "as_preferred", "type": "contains", "caseSensitive": True}],
            "outputUri": str(output),
        })  # fmt: skip
        done = run_cli(config)
    assert done.returncode == 0, done.stderr
    summary = read_summary(output)
    win = score_of(summary, "dpo", "win_rate")
    assert (win["mean"], win["n"], win["errors"]) == (0.75, 8, 0)  # 4 wins, 4 ties
    assert not [s for s in summary["scores"] if s["model"] == "sft" and s["grader"] == "win_rate"]
    assert score_of(summary, "dpo", "as_preferred")["mean"] == 1.0 and score_of(summary, "sft", "as_preferred")["mean"] == 0.5
    assert len(stub.requests) == 16, "two judgements per sample, for the non-baseline model only"
    assert [r["model"] for r in read_results(output)][:8] == ["sft"] * 8, "the baseline answers first"


def test_a_pairwise_grader_without_a_baseline_is_refused_before_any_model_is_asked(tmp_path):
    config = write_config(tmp_path / "eval.json", {
        "models": [{"name": "a", "endpoint": closed_port_url(), "model": "m"}],
        "dataset": str(write_jsonl(tmp_path / "d.jsonl", preference_pairs(2, seed=0))),
        "graders": [{"name": "win_rate", "type": "pairwise", "judge": {"name": "judge", "endpoint": closed_port_url(), "model": "j"}}],
        "outputUri": str(tmp_path / "out"),
    })  # fmt: skip
    done = run_cli(config)
    assert done.returncode == 42
    assert "InvalidGrader: grader 'win_rate' (pairwise) compares each model with the baseline: set baseline" in done.stderr
