"""End to end, preference fine-tuning: deploy/examples/preference/ applied to the demo's cluster (API server,
SeaweedFS, the runner, the operator in its own process) with the REAL validator, trainer and evaluator.

Dataset (chat) and Dataset (preference) → SFT FineTuneJob → DPO FineTuneJob from its checkpoint → Evaluation
of the DPO model against its SFT parent with the pairwise grader. The judge is the one stand-in: an
OpenAI-compatible server in this process that applies the task's rule (the answer in the case asked for
wins), as a hosted judge model would be asked to."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from finetune_local import demo
from finetune_local import preference_data as task
from finetune_local.controlplane import assets_from_environment
from finetune_local.tiny_model import make_tiny_model
from tests.evaluate.openai_stub import OpenAIStub

from .test_pipeline import NS, artifact_text, assert_nothing_left, get, jobs, phase, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLES = demo.REPO_ROOT / "deploy" / "examples" / "preference"
BASE_MODEL = f"s3://{demo.BUCKET}/models/tiny-case"
ANSWERS = re.compile(r"Conversation:\n(?P<question>.*)\n\nAnswer A:\n(?P<a>.*)\n\nAnswer B:\n(?P<b>.*)\Z", re.S)


def judge(body: dict) -> tuple[int, str]:
    """The answer in the case the user asked for wins; both or neither: a tie."""
    parts = ANSWERS.match(body["messages"][-1]["content"]).groupdict()
    a, b = (task.follows_instruction(parts["question"], parts[k]) for k in ("a", "b"))
    return 200, "VERDICT: " + ("A" if a and not b else "B" if b and not a else "TIE")


def documents(judge_url: str) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            doc = copy.deepcopy(doc)
            if doc["kind"] == "Evaluation":
                doc["spec"]["graders"][0]["judge"]["url"] = judge_url
            out.append((path.name, doc))
    return out


def upload(cluster: demo.LocalCluster, work: Path) -> None:
    """The tiny base model (its vocabulary learned from the task's words) and the two files the Datasets name."""
    model = make_tiny_model(work / "tiny-case", seed=0, init_std=0.2, tokenizer_corpus=task.corpus() * 50, vocab_size=400)
    demo.object_store_client(cluster).upload_artifact(model, BASE_MODEL, kind="model")
    for name, rows in (("case-chats", task.conversations(400, seed=1, follow=0.25)), ("case-pairs", task.preference_pairs(200, seed=2))):
        path = demo.write_jsonl(work / f"{name}.jsonl", rows)
        cluster.store.client().fput_object(demo.BUCKET, f"uploads/{NS}/{name}.jsonl", str(path))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[demo.LocalCluster]:
    # The judge listens on loopback: the operator must let a spec name a private address.
    local = demo.start_cluster(tmp_path / "cluster", assets_from_environment(), operator_env={"FINETUNE_ALLOW_PRIVATE_URLS": "true"})
    with local.stack:
        yield local
    assert_nothing_left(local, [local.store.secret_key])


def test_sft_then_dpo_from_its_checkpoint_then_the_dpo_model_wins_against_its_sft_parent(cluster: demo.LocalCluster, tmp_path: Path) -> None:
    upload(cluster, tmp_path)
    with OpenAIStub(judge) as stub:
        demo.apply(cluster, documents(stub.url))
        # An SFT job on the preference pairs is refused by name while the others run.
        wrong = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "case-wrong"},
                 "spec": {"baseModel": {"uri": BASE_MODEL}, "dataset": "case-pairs", "resources": {"gpus": 0}}}  # fmt: skip
        demo.apply(cluster, [("inline", wrong)])

        dpo_waits = wait(cluster, "finetunejobs", "case-dpo", lambda o: "waiting for case-sft to complete" in (o.get("status") or {}).get("message", ""),
                         300, "to wait for its SFT parent")  # fmt: skip
        assert dpo_waits["status"]["phase"] == "Pending"
        refused = wait(cluster, "finetunejobs", "case-wrong", lambda o: "DatasetWrongFormat" in str((o.get("status") or {}).get("conditions")),
                       120, "to be refused for its Dataset's format")  # fmt: skip
        assert refused["status"]["phase"] == "Pending"
        assert "spec.dataset: Dataset case-pairs holds preference pairs, which train with objective dpo" in refused["status"]["message"]

        evaluation = wait(cluster, "evaluations", "dpo-vs-sft", phase("Completed"), 780, "to complete")["status"]
        requests = len(stub.requests)

    sft, dpo = get(cluster, "finetunejobs", "case-sft")["status"], get(cluster, "finetunejobs", "case-dpo")["status"]
    assert sft["phase"] == dpo["phase"] == "Completed"
    assert dpo["outputModel"]["name"] == f"{NS}/tiny-case:chat:case-sft:dpo:case-dpo", "the name records the chain"
    progress = dpo["progress"]
    # After an SFT model that answers in the wrong case 3 times in 4, a few phrases' held-out pairs stay ranked
    # wrong on this tiny model (0.85-0.93 across batch layouts and seeds; chance is 0.5). The trainer's own test
    # holds DPO from the base model to 90 % (tests/trainer/test_dpo.py).
    assert progress["evalRewardAccuracy"] >= 0.8 and progress["evalRewardMargin"] > 0 and progress["rewardAccuracy"] >= 0.75
    assert "DPO loss" in dpo["message"] and "reward accuracy" in dpo["message"]
    events = artifact_text(cluster, dpo["artifactsUri"] + "/events.jsonl")
    assert "Continuing from s3://" in events and "/jobs/finetune-demo/case-sft-" in events, "DPO started from the SFT job's adapter"
    assert "Validation DPO loss" in events and "Reference log-probabilities of" in events

    pairs = get(cluster, "datasets", "case-pairs")["status"]
    held_out = pairs["validationSamples"]
    assert pairs["format"] == "preference" and held_out == evaluation["samples"] >= 20
    scores = {(s["model"], s["grader"]): s for s in evaluation["scores"]}
    win = scores[("dpo", "win_rate")]
    assert (win["n"], win["errors"]) == (held_out, 0) and ("sft", "win_rate") not in scores
    assert win["mean"] >= 0.65, f"the DPO model should beat its SFT parent on the instruction it was taught: {win}"
    assert requests == 2 * held_out, "each answer judged twice, the order swapped"
    assert {c["type"]: c["status"] for c in evaluation["conditions"]}["Passed"] == "True"
    assert evaluation["headline"].startswith("win_rate ")
    assert sorted(jobs(cluster)) == ["case-chats-validate-g1", "case-dpo-train", "case-pairs-validate-g1", "case-sft-train", "dpo-vs-sft-eval"]
