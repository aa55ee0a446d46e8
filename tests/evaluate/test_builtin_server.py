"""Evaluations against the project's own OpenAI-compatible server (`finetune-trainer serve`).

One server process serves the tiny base model and two LoRA adapters: `tuned`, which learned the
answers, and `judge`, which learned to grade this test's recorded answers. The models under
evaluation and the llm_judge are all reached through its HTTP API, as in a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from finetune_trainer.contract import EvalModel, GraderSpec
from finetune_trainer.evaluate.graders import GradeItem
from finetune_trainer.evaluate.judge import LlmJudgeGrader
from finetune_trainer.evaluate.run import main
from finetune_trainer.evaluate.samples import parse_dataset

from .conftest import CONVERSATIONS, read_results, read_summary, score_of, train_memorizing_adapter, write_config, write_jsonl
from .openai_stub import closed_port_url

pytestmark = pytest.mark.slow

BASE_NAME = "tiny-base"
JUDGE_RUBRIC = "Is the named city the capital the question asks for?"

# Recorded answers the judge grades (regrade).
RECORDED = [
    {"prompt": "What is the capital of France?", "completion": "Paris", "response": "Paris"},
    {"prompt": "What is the capital of France?", "completion": "Paris", "response": "Lyon"},
    {"prompt": "What is the capital of Italy?", "completion": "Rome", "response": "Rome"},
    {"prompt": "What is the capital of Italy?", "completion": "Rome", "response": "Milan"},
]
JUDGE_VERDICT = "SCORE: 4"
"""What the judge adapter learned to reply to a judge prompt. (Learning to tell right from wrong takes a
tiny model far longer on CPU; the judge's verdicts on right and wrong answers are tested with a stub.)"""


def judge_conversations(judge_url: str) -> list[list[dict[str, str]]]:
    """Judge prompts the evaluation will send for the first two RECORDED answers, each followed by the verdict."""
    grader = LlmJudgeGrader.from_spec(
        GraderSpec(name="judge", type="llm_judge", judge=EvalModel(name="judge", endpoint=judge_url, model="judge"), rubric=JUDGE_RUBRIC),
        allow_private_urls=True,
    )
    turns = parse_dataset("".join(json.dumps(r) + "\n" for r in RECORDED[:2]).encode(), regrade=True)
    return [[*grader.messages(GradeItem(turn, turn.recorded_response("any"))), {"role": "assistant", "content": JUDGE_VERDICT}] for turn in turns]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model, learned_adapter, tmp_path_factory) -> Iterator[str]:
    """`finetune-trainer serve` with the base model and the `tuned` and `judge` adapters; yields its /v1 URL."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    judge_adapter = train_memorizing_adapter(tiny_model, judge_conversations(url), folder / "judge-adapter", steps=60)
    config = folder / "serve.json"
    config.write_text(
        json.dumps(
            {
                "baseModel": str(tiny_model),
                "servedModelName": BASE_NAME,
                "adapters": [{"name": "tuned", "uri": str(learned_adapter)}, {"name": "judge", "uri": str(judge_adapter)}],
                "host": "127.0.0.1",
                "port": port,
                "maxModelLen": 2048,
            }
        )
    )
    log = open(folder / "serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}: {(folder / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready: {(folder / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_models_behind_the_server_are_evaluated_through_its_api(served, tmp_path):
    dataset = write_jsonl(tmp_path / "qa.jsonl", [{"messages": m} for m in CONVERSATIONS])
    config = write_config(
        tmp_path / "eval.json",
        {
            # As the operator writes them for an InferenceEndpoint: its own Service, trusted.
            "models": [
                {"name": "base", "endpoint": served, "model": BASE_NAME, "trustedEndpoint": True},
                {"name": "tuned", "endpoint": served, "model": "tuned", "trustedEndpoint": True},
            ],
            "baseline": "base",
            "dataset": str(dataset),
            "graders": [{"name": "exact_match", "type": "exact_match"}, {"name": "f1", "type": "f1"}],
            "generation": {"maxTokens": 12},
            "outputUri": str(tmp_path / "out"),
        },
    )
    assert main(["--config", str(config), "--quiet"]) == 0

    summary = read_summary(tmp_path / "out")
    tuned, base = score_of(summary, "tuned", "exact_match"), score_of(summary, "base", "exact_match")
    assert (tuned["mean"], tuned["n"], tuned["errors"]) == (1.0, 5, 0)
    assert base["mean"] < 1.0 and base["errors"] == 0
    assert tuned["delta"] == pytest.approx(1.0 - base["mean"])
    followup = [r for r in read_results(tmp_path / "out") if r["model"] == "tuned"][-1]
    assert (followup["prompt"], followup["response"]) == ("In which country did he live?", "England")


def test_an_llm_judge_behind_the_server_grades_and_garbage_is_never_a_score(served, tmp_path):
    dataset = write_jsonl(tmp_path / "answered.jsonl", RECORDED)
    config = write_config(
        tmp_path / "eval.json",
        {
            "models": [{"name": "recorded"}],
            "regrade": True,
            "dataset": str(dataset),
            "graders": [
                {"name": "judge", "type": "llm_judge", "rubric": JUDGE_RUBRIC, "judge": {"name": "judge", "endpoint": served, "model": "judge"}},
                # The base model never learned the format: whatever it says is no score.
                {
                    "name": "untrained-judge",
                    "type": "llm_judge",
                    "rubric": JUDGE_RUBRIC,
                    "maxTokens": 24,
                    "judge": {"name": "b", "endpoint": served, "model": BASE_NAME},
                },
                {"name": "down-judge", "type": "llm_judge", "judge": {"name": "d", "endpoint": closed_port_url(), "model": "judge"}},
                {"name": "em", "type": "exact_match"},
            ],
            "outputUri": str(tmp_path / "out"),
            "allowPrivateUrls": True,  # the judges' URLs are on loopback
        },
    )
    assert main(["--config", str(config), "--quiet"]) == 0

    summary = read_summary(tmp_path / "out")
    judge = score_of(summary, "recorded", "judge")
    assert (judge["mean"], judge["n"], judge["errors"]) == (0.75, 4, 0)  # SCORE: 4 on a 1..5 scale
    assert [r["scores"]["judge"] for r in read_results(tmp_path / "out")] == [0.75] * 4
    assert score_of(summary, "recorded", "em")["mean"] == 0.5
    for name, reason in [("untrained-judge", "JudgeUnparseable"), ("down-judge", "JudgeUnreachable")]:
        record = score_of(summary, "recorded", name)
        assert (record["mean"], record["n"], record["errors"]) == (None, 0, 4)
        assert all(r["errors"][name].startswith(reason) for r in read_results(tmp_path / "out"))
