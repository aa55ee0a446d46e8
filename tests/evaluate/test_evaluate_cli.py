"""`finetune-trainer evaluate --config eval.json`, as an Evaluation's Job runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from finetune_trainer.evaluate.run import main

from .conftest import CONVERSATIONS, read_results, read_summary, score_of, write_config, write_jsonl
from .openai_stub import OpenAIStub, closed_port_url


def run_cli(config_path, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "finetune_trainer", "evaluate", "--config", str(config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_a_lora_adapter_that_learned_the_answers_beats_its_base_model(tmp_path, tiny_model, learned_adapter, offline_and_termination_log):
    dataset = write_jsonl(tmp_path / "qa.jsonl", [{"messages": m} for m in CONVERSATIONS])
    output = tmp_path / "evaluation"
    config = write_config(
        tmp_path / "eval.json",
        {
            "models": [
                {"name": "base", "modelUri": str(tiny_model)},
                {"name": "tuned", "modelUri": str(tiny_model), "adapterUri": str(learned_adapter)},
            ],
            "baseline": "base",
            "dataset": str(dataset),
            "graders": [
                {"name": "exact_match", "type": "exact_match"},
                {"name": "f1", "type": "f1"},
                {"name": "mentions", "type": "contains"},
            ],
            "generation": {"maxTokens": 12, "batchSize": 4},
            "outputUri": str(output),
        },
    )

    done = run_cli(config)

    assert done.returncode == 0, done.stderr
    summary = read_summary(output)
    assert summary["samples"] == 5 and summary["baseline"] == "base"
    tuned, base = score_of(summary, "tuned", "exact_match"), score_of(summary, "base", "exact_match")
    assert tuned["mean"] == 1.0 and tuned["n"] == 5 and tuned["errors"] == 0
    assert base["mean"] < 1.0
    assert tuned["delta"] == pytest.approx(1.0 - base["mean"]) and base["delta"] is None
    assert base["ciLow"] <= base["mean"] <= base["ciHigh"]
    assert score_of(summary, "tuned", "f1")["mean"] == 1.0

    results = read_results(output)
    assert [(r["model"], r["example"], r["turn"]) for r in results] == [
        (m, e, t) for m in ("base", "tuned") for e, t in [(0, 0), (1, 0), (2, 0), (3, 0), (3, 1)]
    ]
    followup = results[-1]  # answered in the context of the conversation so far
    assert followup["prompt"] == "In which country did he live?"
    assert (followup["reference"], followup["response"], followup["scores"]["exact_match"]) == ("England", "England", 1.0)

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["kind"] == "evaluation"
    assert sorted(f["path"] for f in manifest["files"]) == ["results.jsonl", "summary.json"]
    progress = json.loads((output / "progress.json").read_text())
    assert (progress["phase"], progress["step"], progress["totalSteps"]) == ("done", 10, 10)
    assert "tuned " in done.stdout and "+" in done.stdout  # the table, with the delta
    assert not offline_and_termination_log.exists()


def test_an_endpoint_that_fails_some_requests_is_counted_not_fatal(tmp_path, capsys):
    """Empty answers are graded (0); an HTTP error is a per-sample error; each turn sees the earlier references."""

    def model(body):
        if "prompt" in body:  # instruction examples go to /completions
            return {"2+2=": (200, " 4"), "3+3=": (200, "")}[body["prompt"]]
        question = body["messages"][-1]["content"]
        return {"Who wrote Hamlet?": (200, "Shakespeare"), "In which country did he live?": (503, "overloaded")}[question]

    dataset = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}, {"messages": CONVERSATIONS[3]}])
    key = tmp_path / "api-key"
    key.write_text("sk-model-key")
    with OpenAIStub(model) as stub:
        config = write_config(
            tmp_path / "eval.json",
            {
                "models": [{"name": "remote", "endpoint": stub.url, "model": "tiny:ft:job", "apiKeyFile": str(key), "trustedEndpoint": True}],
                "dataset": str(dataset),
                "graders": [{"name": "em", "type": "exact_match"}],
                "generation": {"concurrency": 2},
                "outputUri": str(tmp_path / "out"),
            },
        )
        assert main(["--config", str(config)]) == 0

    record = score_of(read_summary(tmp_path / "out"), "remote", "em")
    assert (record["mean"], record["n"], record["errors"]) == (pytest.approx(2 / 3), 3, 1)
    by_prompt = {r["prompt"]: r for r in read_results(tmp_path / "out")}
    assert by_prompt["3+3="]["response"] == "" and by_prompt["3+3="]["scores"] == {"em": 0.0}
    failed = by_prompt["In which country did he live?"]
    assert failed["response"] is None and failed["error"].startswith("GenerationFailed: HTTP 503") and failed["errors"] == {"em": "GenerationFailed"}

    followup = next(r for r in stub.requests if r.get("messages", [{}])[-1].get("content") == "In which country did he live?")
    assert followup["messages"][1] == {"role": "assistant", "content": "Shakespeare"}  # the reference, not the model's answer
    assert followup["model"] == "tiny:ft:job" and followup["temperature"] == 0 and followup["max_tokens"] == 64
    assert all(r["auth"] == "Bearer sk-model-key" for r in stub.requests)
    assert "sk-model-key" not in capsys.readouterr().err


def test_regrade_grades_the_recorded_responses_without_contacting_any_model(tmp_path):
    def must_not_be_called(body):
        raise AssertionError("regrade contacted a model")

    dataset = write_jsonl(
        tmp_path / "answered.jsonl",
        [
            {"prompt": "Capital of France?", "completion": "Paris", "response": {"base": "Lyon", "tuned": "Paris"}},
            {"messages": [{"role": "user", "content": "Color of the sky?"}, {"role": "assistant", "content": "blue", "response": {"base": "blue", "tuned": "Blue."}}]},
            {"prompt": "Capital of Italy?", "completion": "Rome", "response": {"tuned": "Rome"}},  # no answer recorded for base
        ],
    )
    with OpenAIStub(must_not_be_called) as stub:
        config = write_config(
            tmp_path / "eval.json",
            {
                "models": [{"name": "base", "endpoint": stub.url, "model": "m", "trustedEndpoint": True}, {"name": "tuned", "modelUri": str(tmp_path / "no-such-model")}],
                "baseline": "base",
                "regrade": True,
                "dataset": str(dataset),
                "graders": [{"name": "em", "type": "exact_match"}],
                "outputUri": str(tmp_path / "out"),
            },
        )
        assert main(["--config", str(config), "--quiet"]) == 0
        assert stub.requests == []

    summary = read_summary(tmp_path / "out")
    assert (score_of(summary, "base", "em")["mean"], score_of(summary, "base", "em")["errors"]) == (0.5, 1)
    assert (score_of(summary, "tuned", "em")["mean"], score_of(summary, "tuned", "em")["delta"]) == (1.0, 0.5)
    missing = next(r for r in read_results(tmp_path / "out") if r["model"] == "base" and r["example"] == 2)
    assert missing["error"].startswith("NoResponse")


def test_a_judge_that_is_down_leaves_its_column_empty_and_the_run_completes(tmp_path):
    dataset = write_jsonl(tmp_path / "answered.jsonl", [{"prompt": "Capital of France?", "completion": "Paris", "response": "Paris"}] * 3)
    config = write_config(
        tmp_path / "eval.json",
        {
            "models": [{"name": "recorded"}],
            "regrade": True,
            "dataset": str(dataset),
            "graders": [
                {"name": "em", "type": "exact_match"},
                {"name": "judge", "type": "llm_judge", "judge": {"name": "judge", "endpoint": closed_port_url(), "model": "judge"}},
            ],
            "outputUri": str(tmp_path / "out"),
            "allowPrivateUrls": True,  # the judge's URL is on loopback
        },
    )
    assert main(["--config", str(config), "--quiet"]) == 0
    summary = read_summary(tmp_path / "out")
    assert score_of(summary, "recorded", "em")["mean"] == 1.0
    judge = score_of(summary, "recorded", "judge")
    assert (judge["mean"], judge["n"], judge["errors"]) == (None, 0, 3)
    assert "no successful sample for judge" in summary["message"]
    assert all(r["errors"]["judge"].startswith("JudgeUnreachable") for r in read_results(tmp_path / "out"))


GOOD_DATASET = [{"prompt": "Capital of France?", "completion": "Paris"}]


@pytest.mark.parametrize(
    ("graders", "rows", "extra", "reason", "words"),
    [
        ([{"name": "vibes", "type": "vibe_check"}], GOOD_DATASET, {}, "UnknownGrader", ["'vibes'", "vibe_check"]),
        ([{"name": "year", "type": "regex", "pattern": "(19"}], GOOD_DATASET, {}, "InvalidRegex", ["'year'", "does not compile"]),
        ([{"name": "em", "type": "exact_match"}], [{"text": "no answer here"}], {}, "NoReferences", []),
        ([{"name": "em", "type": "exact_match"}], [], {}, "EmptyDataset", []),
        ([{"name": "em", "type": "exact_match"}], GOOD_DATASET, {"baseline": "nobody"}, "UnknownBaseline", ["'nobody'"]),
        ([{"name": "em", "type": "exact_match"}], GOOD_DATASET, {"generation": {"maxTokens": 0}}, "InvalidConfig", ["generation.maxTokens"]),
        ([{"name": "em", "type": "exact_match"}], GOOD_DATASET, {"dataset": "missing.jsonl"}, "DatasetNotFound", []),
        ([{"name": "em", "type": "exact_match"}], GOOD_DATASET, {}, "ModelNotFound", ["'base'", "never-loaded"]),
        ([{"name": "em", "type": "exact_match"}], GOOD_DATASET, {"outputUri": "s3://results/e"}, "InvalidConfig", ["outputUri", "no storage"]),
    ],
)
def test_bad_input_exits_42_with_the_reason(tmp_path, capsys, offline_and_termination_log, graders, rows, extra, reason, words):
    dataset = write_jsonl(tmp_path / "data.jsonl", rows)
    config = {
        "models": [{"name": "base", "modelUri": str(tmp_path / "never-loaded")}],
        "dataset": str(dataset),
        "graders": graders,
        "outputUri": str(tmp_path / "out"),
        **extra,
    }
    if extra.get("dataset"):
        config["dataset"] = str(tmp_path / extra["dataset"])

    assert main(["--config", str(write_config(tmp_path / "eval.json", config))]) == 42

    message = offline_and_termination_log.read_text()
    assert message.startswith(f"{reason}: ")
    for word in words:
        assert word in message
    stderr = [line for line in capsys.readouterr().err.splitlines() if line.startswith("finetune-trainer evaluate:")]
    assert stderr == [f"finetune-trainer evaluate: {message}"]
    assert not (tmp_path / "out" / "manifest.json").exists()
    progress_file = tmp_path / "out" / "progress.json"
    if progress_file.exists():  # written once the config was readable
        progress = json.loads(progress_file.read_text())
        assert (progress["phase"], progress["reason"], progress["exitCode"]) == ("failed", reason, 42)


def test_the_cli_process_exits_42_for_an_unknown_grader(tmp_path, offline_and_termination_log):
    config = write_config(
        tmp_path / "eval.json",
        {
            "models": [{"name": "base", "modelUri": "s3://models/base"}],
            "dataset": str(write_jsonl(tmp_path / "data.jsonl", GOOD_DATASET)),
            "graders": [{"name": "bleu", "type": "bleu"}],
            "outputUri": str(tmp_path / "out"),
        },
    )
    done = run_cli(config)
    assert done.returncode == 42
    assert done.stderr.strip().splitlines()[-1].startswith("finetune-trainer evaluate: UnknownGrader: grader 'bleu'")
    assert offline_and_termination_log.read_text().startswith("UnknownGrader: ")
