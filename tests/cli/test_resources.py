"""``finetune datasets|endpoints|chat|evaluations|completion`` against the session's real pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.helpers import as_json, as_yaml, fails, ok, rows
from tests.conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TICKET = "Hello, the courier left my parcel at the wrong door yesterday."
SYSTEM = "Route the ticket to one team: billing, shipping, technical or account. Answer with the team only."


# ------------------------------------------------------------------------------------------------ datasets


def test_datasets_list_and_get_show_the_check_report_and_its_statistics(pipeline):
    table = rows(ok(pipeline.finetune("datasets", "list")))
    assert table[0] == ["NAME", "PHASE", "SAMPLES", "FORMAT", "AGE"]
    assert table[1][:4] == ["support-tickets", "Ready", "120", "chat"]
    wide = rows(ok(pipeline.finetune("datasets", "list", "-o", "wide")))
    assert wide[1][3:5] == ["98", "22"], "train and validation samples"

    text = ok(pipeline.finetune("datasets", "get", "support-tickets"))
    assert re.search(r"Samples:\s+120 \(98 train, 22 validation\)", text)
    assert "Check report:" in text and "PASSED: Checks passed: 120 chat examples" in text
    assert "messages per example  min 3 · mean 3 · max 3 · total 360" in text
    assert as_json(pipeline.finetune("dataset", "get", "support-tickets", "-o", "json"))["status"]["report"]["isCheckPassed"] is True


def test_datasets_download_fetches_the_normalised_files_verified(pipeline, tmp_path: Path):
    out = ok(pipeline.finetune("datasets", "download", "support-tickets", "-d", str(tmp_path / "data"), "--no-progress"))
    assert "each sha256 verified" in out
    folder = tmp_path / "data"
    assert len((folder / "train.jsonl").read_text().splitlines()) == 98
    assert len((folder / "validation.jsonl").read_text().splitlines()) == 22
    assert json.loads((folder / "manifest.json").read_text())["kind"] == "dataset"


def test_datasets_delete_and_its_errors(pipeline, tmp_path: Path):
    fails(pipeline.finetune("datasets", "get", "nope"), 3, f"dataset nope not found in namespace {pipeline.namespace}")
    fails(pipeline.finetune("datasets", "download", "nope"), 3, "dataset nope not found")
    pipeline.apply(f"""
apiVersion: finetune.dev/v1alpha1
kind: Dataset
metadata: {{name: scratch}}
spec:
  source: {{uri: "s3://finetune/uploads/{pipeline.namespace}/no-such-file.jsonl"}}
""")
    fails(pipeline.finetune("datasets", "download", "scratch"), 5, "dataset scratch is", "not Ready")
    assert "dataset.finetune.dev/scratch deleted" in ok(pipeline.finetune("datasets", "delete", "scratch"))
    wait_until(lambda: pipeline.finetune("datasets", "get", "scratch").returncode == 3, "scratch to be gone", timeout=60)


# ------------------------------------------------------------------------------------------------ endpoints and chat


def test_endpoints_list_and_get_show_the_served_models_and_ready_replicas(pipeline):
    table = rows(ok(pipeline.finetune("endpoints", "list")))
    assert table[0] == ["NAME", "PHASE", "READY", "MODELS", "AGE"]
    assert table[1][:4] == ["support", "Ready", "1/1", "tiny,ticket-router"]
    text = ok(pipeline.finetune("endpoint", "get", "support"))
    assert re.search(r"Models:\s+tiny, ticket-router", text) and re.search(r"Replicas:\s+1 ready of 1", text)
    assert "API key:    Secret support-api-key (key apiKey)" in text or re.search(r"API key:\s+Secret support-api-key", text)
    assert re.search(r"ticket-router\s+yes", text), "the adapter is served"
    assert as_yaml(pipeline.finetune("endpoints", "get", "support", "-o", "yaml"))["status"]["readyReplicas"] == 1


def direct_answer(pipeline, model: str) -> str:
    """What the endpoint answers through its API, with the official client, for the same request."""
    import kubernetes.client
    import openai

    endpoint = pipeline.get("inferenceendpoints", "support")
    with pipeline.client() as api:
        service = kubernetes.client.CoreV1Api(api).read_namespaced_service(endpoint["status"]["serviceName"], pipeline.namespace)
    address = service.metadata.annotations["local.finetune.dev/address"]
    client = openai.OpenAI(base_url=f"http://{address}/v1", api_key=pipeline.api_key, max_retries=0, timeout=60)
    answer = client.chat.completions.create(model=model, temperature=0, max_tokens=8, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": TICKET}])  # fmt: skip
    return answer.choices[0].message.content or ""


def test_chat_streams_the_answer_of_the_chosen_model_with_the_endpoints_key(pipeline):
    expected = direct_answer(pipeline, "ticket-router")
    assert expected.strip(), "the adapter answers"
    out = ok(pipeline.finetune("chat", "support", TICKET, "--model", "ticket-router", "--system", SYSTEM, "--max-tokens", "8"))
    assert out == expected + "\n"
    options_first = pipeline.finetune("chat", "support", "--model", "ticket-router", "--system", SYSTEM, "--max-tokens", "8", TICKET)
    assert ok(options_first) == out, "the prompt after the options, as kubectl users write it"
    piped = ok(pipeline.finetune("chat", "support", "--model", "ticket-router", "--system", SYSTEM, "--max-tokens", "8", input=TICKET))
    assert piped == out, "the prompt from standard input"
    base = ok(pipeline.finetune("chat", "support", "--system", SYSTEM, "--max-tokens", "8", input=TICKET))
    assert base == direct_answer(pipeline, "tiny") + "\n", "the endpoint's base model by default"


def test_chat_errors_name_the_model_the_key_and_the_endpoint(pipeline):
    fails(pipeline.finetune("chat", "support", "hi", "--model", "nope"), 3, "--model nope", "it serves: tiny, ticket-router")
    fails(pipeline.finetune("chat", "support", "hi", "--api-key", "wrong-key"), 4, "the endpoint answered 401")
    fails(pipeline.finetune("chat", "nope", "hi"), 3, "inferenceendpoint nope not found")


def test_endpoints_create_writes_the_endpoint_and_chat_waits_for_it_to_be_ready(pipeline):
    planned = as_yaml(pipeline.finetune("endpoints", "create", "spare", "--model", "s3://finetune/models/cli-tiny", "--adapter",
                                        "ticket-router", "--runtime", "builtin", "--gpus", "0", "--dry-run"))  # fmt: skip
    assert planned["spec"] == {"baseModel": {"uri": "s3://finetune/models/cli-tiny"}, "adapters": [{"name": "ticket-router", "fineTuneJob": "ticket-router"}],
                               "runtime": "builtin", "resources": {"gpus": 0}}  # fmt: skip
    fails(pipeline.finetune("endpoints", "create", "spare", "--model", "s3://x/y", "--runtime", "vllm", "--gpus", "0", "--dry-run"), 2, "runtime vllm needs GPUs")
    assert "inferenceendpoint.finetune.dev/spare created" in ok(pipeline.finetune("endpoints", "create", "spare", "--model",
                                                                                  "s3://finetune/models/cli-tiny", "--runtime", "builtin", "--gpus", "0"))  # fmt: skip
    fails(pipeline.finetune("chat", "spare", "hi"), 5, "inferenceendpoint spare is", "not Ready")
    assert "inferenceendpoint.finetune.dev/spare deleted" in ok(pipeline.finetune("endpoints", "delete", "spare"))
    wait_until(lambda: pipeline.finetune("endpoints", "get", "spare").returncode == 3, "spare to be gone", timeout=60)


# ------------------------------------------------------------------------------------------------ evaluations


def test_evaluations_list_and_show_the_scores(pipeline):
    table = rows(ok(pipeline.finetune("evaluations", "list")))
    assert table[0] == ["NAME", "PHASE", "SCORE", "PASSED", "AGE"]
    assert table[1][:2] == ["router-vs-base", "Completed"] and table[1][2].startswith("exact_match ")
    text = ok(pipeline.finetune("evaluation", "show", "router-vs-base"))
    assert "Evaluation " + pipeline.namespace + "/router-vs-base: Completed" in text
    assert re.search(r"base \(baseline\)\s+\| \d\.\d{3} \[", text) and re.search(r"fine-tuned\s+\| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] [+-]\d\.\d{3}", text)


def test_evaluations_show_samples_puts_the_answers_side_by_side_with_each_graders_score(pipeline):
    evaluation = pipeline.get("evaluations", "router-vs-base")
    bucket, key = evaluation["status"]["resultsUri"].removeprefix("s3://").split("/", 1)
    results = [json.loads(line) for line in pipeline.store_client().get_object(bucket, key).read().decode().splitlines()]
    first = {(r["model"], r["example"]): r for r in results if r["example"] < 5}

    out = ok(pipeline.finetune("evaluations", "show", "router-vs-base", "--samples", "5"))
    blocks = out.split("--- sample ")[1:]
    assert len(blocks) == 5
    for i, block in enumerate(blocks):
        lines = block.splitlines()
        assert lines[0] == str(i + 1)
        assert lines[2] == "reference: " + first[("base", i)]["reference"]
        header = next(line for line in lines if line.startswith("base"))
        assert re.match(r"base\s{3,}fine-tuned$", header), "one column per model, baseline first"
        for model in ("base", "fine-tuned"):
            record = first[(model, i)]
            mark = "✓" if record["scores"]["exact_match"] >= 1 else "✗"
            assert f"{mark} exact_match {record['scores']['exact_match']:.2f}" in block
            assert " ".join(record["response"].split())[:20] in block
    data = as_json(pipeline.finetune("evaluations", "show", "router-vs-base", "--samples", "2", "-o", "json"))
    assert len(data["samples"]) == 2 and set(data["samples"][0]["answers"]) == {"base", "fine-tuned"}


def test_evaluations_create_and_delete(pipeline):
    args = ["evaluations", "create", "quick-eval", "--dataset", "support-tickets", "--model", "base=endpoint:support:tiny",
            "--model", "tuned=endpoint:support:ticket-router", "--baseline", "base", "--grader", "exact_match",
            "--max-samples", "3", "--max-tokens", "8", "--min-delta", "0.1"]  # fmt: skip
    planned = as_yaml(pipeline.finetune(*args, "--dry-run"))
    assert planned["spec"]["models"] == [{"name": "base", "inferenceEndpoint": "support", "model": "tiny"},
                                         {"name": "tuned", "inferenceEndpoint": "support", "model": "ticket-router"}]  # fmt: skip
    assert planned["spec"]["passCriterion"] == {"grader": "exact_match", "minDelta": 0.1}
    fails(pipeline.finetune(*args[:-2], "--min-delta", "0.1", "--baseline", "nobody", "--dry-run"), 2, "spec.baseline")
    fails(pipeline.finetune("evaluations", "create", "x", "--dataset", "d", "--model", "plain"), 2, "--model 'plain'", "ROW=SOURCE")
    assert "evaluation.finetune.dev/quick-eval created" in ok(pipeline.finetune(*args))
    done = pipeline.phase("evaluations", "quick-eval", "Completed")
    assert done["status"]["samples"] == 3
    assert "evaluation.finetune.dev/quick-eval deleted" in ok(pipeline.finetune("evaluations", "delete", "quick-eval"))
    fails(pipeline.finetune("evaluations", "show", "nope"), 3, "evaluation nope not found")


# ------------------------------------------------------------------------------------------------ completion


def test_completion_scripts_and_candidates_come_from_the_program_and_the_cluster(pipeline):
    assert "complete -o default -F _finetune_complete finetune" in ok(pipeline.finetune("completion", "bash"))
    assert "bashcompinit" in ok(pipeline.finetune("completion", "zsh"))
    assert "complete -c finetune" in ok(pipeline.finetune("completion", "fish"))
    assert ok(pipeline.finetune("__complete", "j")).split() == ["jobs"]
    assert "watch" in ok(pipeline.finetune("__complete", "jobs", "")).split()
    assert "--output" in ok(pipeline.finetune("__complete", "jobs", "get", "--o")).split()
    assert "ticket-router" in ok(pipeline.finetune("__complete", "jobs", "download", "")).split()
    assert ok(pipeline.finetune("__complete", "chat", "su")).split() == ["support"]
    assert ok(pipeline.finetune("__complete", "jobs", "get", "-n", "default", "")).split() == []


def test_chat_on_a_terminal_is_a_conversation_until_exit(pipeline):
    """stdin a terminal (a pseudo-terminal): prompts, answers, /reset and /exit."""
    import os
    import subprocess

    from tests.cli.conftest import BIN

    main, child = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    process = subprocess.Popen([str(BIN / "finetune"), "chat", "support", "--model", "ticket-router", "--system", SYSTEM, "--max-tokens", "8"],
                               stdin=child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**env, "KUBECONFIG": str(pipeline.kubeconfig)})  # fmt: skip
    os.close(child)
    try:
        os.write(main, f"{TICKET}\n/reset\n/exit\n".encode())
        out, err = process.communicate(timeout=120)
    finally:
        os.close(main)
    assert process.returncode == 0, err
    assert out.startswith("Chatting with ticket-router on support (http://")
    assert f"> {direct_answer(pipeline, 'ticket-router')}\n> > " in out
