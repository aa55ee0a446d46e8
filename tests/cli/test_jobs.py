"""``finetune jobs ...`` against the session's real pipeline: a job trained by the real trainer on the tiny
model, read, followed, downloaded (and loaded with peft), suspended, resumed, cancelled and deleted."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import BIN, HELD_STEP
from tests.cli.helpers import as_json, as_yaml, fails, ok, rows
from tests.conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

JOB = "ticket-router"
SMALL = ["--model", "s3://finetune/models/cli-tiny", "--dataset", "support-tickets", "--epochs", "1", "--batch-size", "8",
         "--max-seq-length", "256", "--no-packing", "--gpus", "0", "--cpu", "1", "--memory", "2Gi", "--n-checkpoints", "1"]  # fmt: skip


def curve(pipeline, job: dict) -> list[dict]:
    bucket, key = job["status"]["artifactsUri"].removeprefix("s3://").split("/", 1)
    body = pipeline.store_client().get_object(bucket, f"{key}/metrics.jsonl").read().decode()
    return [json.loads(line) for line in body.splitlines()]


# ------------------------------------------------------------------------------------------------ reads


def test_list_shows_phase_progress_and_model_in_every_output_format(pipeline):
    table = rows(ok(pipeline.finetune("jobs", "list")))
    assert table[0] == ["NAME", "PHASE", "PROGRESS", "MODEL", "AGE"]
    row = next(r for r in table if r[0] == JOB)
    assert row[1:4] == ["Completed", "100% (26/26)", f"{pipeline.namespace}/cli-tiny:router:{JOB}"]

    wide = rows(ok(pipeline.finetune("jobs", "list", "-o", "wide")))
    assert wide[0][:6] == ["NAME", "PHASE", "PROGRESS", "MODEL", "METHOD", "BASE MODEL"] and "EVAL LOSS" in wide[0]
    assert next(r for r in wide if r[0] == JOB)[4:7] == ["lora", "s3://finetune/models/cli-tiny", "support-tickets"]

    listed = as_json(pipeline.finetune("jobs", "list", "-o", "json"))
    assert listed["kind"] == "List" and JOB in [i["metadata"]["name"] for i in listed["items"]]
    assert JOB in [i["metadata"]["name"] for i in as_yaml(pipeline.finetune("jobs", "ls", "-o", "yaml"))["items"]]

    everywhere = rows(ok(pipeline.finetune("jobs", "list", "-A")))
    assert everywhere[0][0] == "NAMESPACE" and [pipeline.namespace, JOB] in [r[:2] for r in everywhere]


def test_the_kubectl_plugin_and_the_singular_alias_are_the_same_program(pipeline):
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "KUBECONFIG": str(pipeline.kubeconfig)}
    done = subprocess.run(["kubectl", "finetune", "jobs", "list"], capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert JOB in ok(done) and "Completed" in done.stdout
    assert JOB in ok(pipeline.finetune("job", "get", JOB))


def test_get_describes_the_job_and_prints_the_object_as_json_or_yaml(pipeline):
    text = ok(pipeline.finetune("jobs", "get", JOB))
    assert re.search(r"Phase:\s+Completed", text) and re.search(rf"Output model:\s+{pipeline.namespace}/cli-tiny:router:{JOB}", text)
    assert re.search(r"Checkpoints:\s+13, 26", text) and "eval loss" in text
    wide = ok(pipeline.finetune("jobs", "get", JOB, "-o", "wide"))
    assert "Conditions:" in wide and re.search(r"Succeeded\s+True\s+ModelUploaded", wide)
    obj = as_json(pipeline.finetune("jobs", "get", JOB, "-o", "json"))
    assert obj == pipeline.get("finetunejobs", JOB) | {"metadata": obj["metadata"]} and obj["status"]["phase"] == "Completed"
    assert as_yaml(pipeline.finetune("jobs", "get", JOB, "-o", "yaml"))["spec"]["dataset"] == "support-tickets"


def test_events_merge_the_trainers_log_with_the_kubernetes_events_oldest_first(pipeline):
    listed = as_json(pipeline.finetune("jobs", "events", JOB, "-o", "json"))
    sources = {e["source"] for e in listed}
    assert sources == {"trainer", "operator"}
    times = [e["time"] for e in listed]
    assert [t[:19] for t in times] == sorted(t[:19] for t in times), "oldest first"
    reasons = [e["reason"] for e in listed if e["source"] == "trainer"]
    assert reasons[0] == "JobStarted" and reasons[-1] == "JobCompleted"
    assert reasons.index("TrainingStarted") < reasons.index("CheckpointSaved") < reasons.index("UploadComplete")
    assert [e for e in listed if e["source"] == "operator" and e["reason"] == "Completed"], "the operator's Completed Event"
    assert [e["message"].rsplit(" ", 1)[1] for e in listed if e["reason"] == "Evaluated"] == ["13", "26"]

    table = ok(pipeline.finetune("jobs", "events", JOB))
    assert table.splitlines()[0].split() == ["TIME", "TYPE", "REASON", "MESSAGE"]
    assert table.index("Fine-tuning job started") < table.index("Checkpoint saved at step 13") < table.index("Fine-tuning job completed:")
    wide = rows(ok(pipeline.finetune("jobs", "events", JOB, "-o", "wide")))
    assert wide[0] == ["TIME", "SOURCE", "TYPE", "REASON", "MESSAGE"] and {r[1] for r in wide[1:]} == {"trainer", "operator"}


def test_checkpoints_list_each_checkpoint_and_the_final_adapter(pipeline):
    table = rows(ok(pipeline.finetune("jobs", "checkpoints", JOB)))
    assert table[0] == ["TYPE", "STEP", "DOWNLOAD"]
    assert table[1:] == [["checkpoint", "13", f"finetune jobs download {JOB} --checkpoint 13"],
                         ["checkpoint", "26", f"finetune jobs download {JOB} --checkpoint 26"],
                         ["adapter", "26", f"finetune jobs download {JOB}"]]  # fmt: skip
    listed = as_json(pipeline.finetune("jobs", "checkpoints", JOB, "-o", "json"))
    assert [(c["type"], c["step"]) for c in listed] == [("checkpoint", 13), ("checkpoint", 26), ("adapter", None)]
    assert listed[-1]["uri"] == pipeline.get("finetunejobs", JOB)["status"]["outputModel"]["uri"]


def test_watch_of_an_ended_job_prints_its_last_line_with_the_loss_sparkline_and_exits_0(pipeline):
    out = ok(pipeline.finetune("jobs", "watch", JOB))
    line = out.splitlines()[0]
    assert line.startswith(f"{JOB}  Completed") and "100% (26/26)" in line and "eval loss" in line
    assert re.search(r"loss [▁▂▃▄▅▆▇█]{20,}$", line), line
    assert "Fine-tuning job completed" in out


# ------------------------------------------------------------------------------------------------ downloads


def test_download_verifies_every_file_and_the_adapter_loads_in_transformers_and_peft(pipeline, tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    done = pipeline.finetune("jobs", "download", JOB, "-d", str(tmp_path / "adapter"))
    out = ok(done)
    assert "each sha256 verified" in out and "PeftModel.from_pretrained" in out
    assert "100%" in done.stderr, "a progress bar"
    folder = tmp_path / "adapter"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {f["path"] for f in manifest["files"]} >= {"adapter_config.json", "adapter_model.safetensors"}
    base = AutoModelForCausalLM.from_pretrained(pipeline.tiny_model)
    model = PeftModel.from_pretrained(base, folder)
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and any(torch.count_nonzero(p) for p in trained), "the adapter's weights were learned"


def test_download_of_a_checkpoint_goes_to_its_own_folder(pipeline):
    out = ok(pipeline.finetune("jobs", "download", JOB, "--checkpoint", "26", "--no-progress"))
    assert "checkpoint at step 26" in out and f"'{JOB}-step-26/adapter'" in out
    folder = pipeline.work / f"{JOB}-step-26"
    assert (folder / "manifest.json").is_file() and json.loads((folder / "manifest.json").read_text())["step"] == 26


def test_a_corrupt_file_in_the_store_fails_the_download_on_its_sha256(pipeline, tmp_path: Path):
    job = pipeline.get("finetunejobs", JOB)
    checkpoint = next(c["uri"] for c in job["status"]["checkpoints"] if c["step"] == 13)
    bucket, key = checkpoint.removeprefix("s3://").split("/", 1)
    client = pipeline.store_client()
    target = f"{key}/adapter/adapter_model.safetensors"  # a checkpoint keeps its adapter in adapter/
    original = client.get_object(bucket, target).read()
    tampered = bytes([original[0] ^ 0xFF]) + original[1:]  # same size, one byte changed
    client.put_object(bucket, target, io.BytesIO(tampered), len(tampered))
    try:
        line = fails(pipeline.finetune("jobs", "download", JOB, "--checkpoint", "13", "-d", str(tmp_path / "c")), 6,
                     "adapter/adapter_model.safetensors does not match its manifest", "sha256")  # fmt: skip
        assert "removed" in line
        assert not (tmp_path / "c" / "adapter" / "adapter_model.safetensors").exists() and not (tmp_path / "c" / "manifest.json").exists()
    finally:
        client.put_object(bucket, target, io.BytesIO(original), len(original))


# ------------------------------------------------------------------------------------------------ bad input


def test_unknown_names_and_wrong_namespaces_are_one_line_errors_with_their_exit_codes(pipeline):
    fails(pipeline.finetune("jobs", "get", "no-such-job"), 3, f"finetunejob no-such-job not found in namespace {pipeline.namespace}")
    fails(pipeline.finetune("jobs", "events", JOB, "-n", "default"), 3, f"finetunejob {JOB} not found in namespace default")
    fails(pipeline.finetune("jobs", "download", "no-such-job"), 3, "finetunejob no-such-job not found")
    fails(pipeline.finetune("jobs", "download", JOB, "--checkpoint", "7"), 3, "no checkpoint at step 7", "13, 26")
    fails(pipeline.finetune("jobs", "get", JOB, "--context", "nope"), 3, "--context nope: no such context")
    fails(pipeline.finetune("jobs", "list", "--kubeconfig", "/no/such/kubeconfig"), 3, "--kubeconfig /no/such/kubeconfig: no such file")
    assert "No fine-tuning jobs found in namespace no-such-namespace" in ok_or_stderr(pipeline.finetune("jobs", "list", "-n", "no-such-namespace"))


def ok_or_stderr(done: subprocess.CompletedProcess) -> str:
    ok(done)
    return done.stderr


def test_create_refuses_bad_flags_missing_inputs_and_existing_names(pipeline):
    fails(pipeline.finetune("jobs", "create", "x", *SMALL, "--epochs", "0"), 2, "spec.hyperparameters.epochs", "greater than or equal to 1")
    fails(pipeline.finetune("jobs", "create", "Bad_Name", *SMALL), 2, "name 'Bad_Name'")
    fails(pipeline.finetune("jobs", "create", "x", "--model", "ftp://x", "--dataset", "support-tickets"), 2, "spec.baseModel.uri")
    fails(pipeline.finetune("jobs", "create", "x", "--model", "s3://finetune/models/cli-tiny", "--dataset", "nope"), 3, "dataset nope not found")
    fails(pipeline.finetune("jobs", "create", "x", *SMALL, "--from-checkpoint", f"{JOB}:5"), 3, f"--from-checkpoint {JOB}:5", "13, 26")
    fails(pipeline.finetune("jobs", "create", JOB, *SMALL), 1, f"finetunejob {JOB} already exists")
    fails(pipeline.finetune("jobs", "cancel", JOB), 5, "has already ended (Completed)")


def test_an_unreachable_api_server_is_one_line(pipeline, tmp_path: Path):
    import socket

    import yaml

    config = yaml.safe_load(pipeline.kubeconfig.read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    broken = tmp_path / "kubeconfig"
    broken.write_text(yaml.safe_dump(config))
    fails(pipeline.finetune("jobs", "list", env={"KUBECONFIG": str(broken)}, timeout=120), 7, "cannot reach the Kubernetes API", str(port))


# ------------------------------------------------------------------------------------------------ writes


def test_a_job_created_from_the_cli_is_the_job_a_user_would_apply_and_is_watched_until_it_ends(pipeline):
    planned = as_yaml(pipeline.finetune("jobs", "create", "quick", *SMALL, "--suffix", "quick", "--dry-run"))
    assert planned["spec"] == {
        "baseModel": {"uri": "s3://finetune/models/cli-tiny"}, "dataset": "support-tickets", "suffix": "quick",
        "hyperparameters": {"epochs": 1, "batchSize": 8, "maxSeqLength": 256, "nCheckpoints": 1, "packing": False},
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
    }  # fmt: skip
    assert planned["metadata"] == {"name": "quick", "namespace": pipeline.namespace}

    watched = ok(pipeline.finetune("jobs", "create", "quick", *SMALL, "--suffix", "quick", "--watch", timeout=300))
    lines = watched.splitlines()
    assert lines[0] == "finetunejob.finetune.dev/quick created"
    assert any(" Running " in line for line in lines), "the watch saw the job run"
    assert lines[-2].startswith("quick  Completed") and "100% (13/13)" in lines[-2]
    assert re.search(r"loss [▁▂▃▄▅▆▇█]+$", lines[-2])
    created = pipeline.get("finetunejobs", "quick")
    assert subset(planned["spec"], created["spec"]), "the server added only its defaults"

    artifacts = created["status"]["artifactsUri"]
    bucket, prefix = artifacts.removeprefix("s3://").split("/", 1)
    out = ok(pipeline.finetune("jobs", "delete", "quick", "--artifacts"))
    assert "finetunejob.finetune.dev/quick deleted" in out and re.search(rf"deleted \d+ objects under {re.escape(artifacts)}", out)
    assert list(pipeline.store_client().list_objects(bucket, prefix=prefix + "/", recursive=True)) == []
    wait_until(lambda: "quick" not in ok(pipeline.finetune("jobs", "list")), "quick to be gone", timeout=60)


def subset(small: object, big: object) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and subset(v, big[k]) for k, v in small.items())
    return small == big


def wait_step(pipeline, name: str, step: int) -> dict:
    return pipeline.wait_for("finetunejobs", name, lambda o: ((o.get("status") or {}).get("progress") or {}).get("step") == step,
                             240, f"to reach step {step}")  # fmt: skip


def test_a_running_job_cannot_be_downloaded_and_is_suspended_then_resumed_to_completion(pipeline):
    ok(pipeline.finetune("jobs", "create", "held-suspend", *SMALL))
    wait_step(pipeline, "held-suspend", HELD_STEP)  # the trainer holds here until it is stopped

    fails(pipeline.finetune("jobs", "download", "held-suspend"), 5, "finetunejob held-suspend is Running, not Completed", "--checkpoint")

    assert "suspended" in ok(pipeline.finetune("jobs", "suspend", "held-suspend"))
    pipeline.phase("finetunejobs", "held-suspend", "Suspended")
    assert "already suspended" in ok(pipeline.finetune("jobs", "suspend", "held-suspend"))

    assert "resumed" in ok(pipeline.finetune("jobs", "resume", "held-suspend"))
    done = pipeline.phase("finetunejobs", "held-suspend", "Completed")
    steps = [m["step"] for m in curve(pipeline, done) if "trainLoss" in m]
    assert steps == list(range(1, done["status"]["progress"]["totalSteps"] + 1)), "one point per step, across the restart"
    events = ok(pipeline.finetune("jobs", "events", "held-suspend"))
    assert events.index("Holding at step 2") < events.index(f"Resuming from checkpoint at step {HELD_STEP}")


def test_cancel_stops_a_running_job_for_good(pipeline):
    ok(pipeline.finetune("jobs", "create", "held-cancel", *SMALL))
    wait_step(pipeline, "held-cancel", HELD_STEP)
    assert "finetunejob.finetune.dev/held-cancel cancelled" in ok(pipeline.finetune("jobs", "cancel", "held-cancel"))
    pipeline.phase("finetunejobs", "held-cancel", "Cancelled")
    watched = pipeline.finetune("jobs", "watch", "held-cancel")
    assert watched.returncode == 1 and "Cancelled" in watched.stdout
    fails(pipeline.finetune("jobs", "resume", "held-cancel"), 5, "has ended (Cancelled)")
