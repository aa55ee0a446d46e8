"""End to end: the demo's cluster on one machine (API server, SeaweedFS, the runner, the operator in its
own process) with the REAL trainer, server and evaluator: no test doubles. After each test nothing the
runner started may still run, no per-pod folder may remain, and no secret may be in any file it wrote."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from finetune_local import demo
from finetune_local.controlplane import assets_from_environment
from tests.local.test_runner import process_groups_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NS = demo.NAMESPACE


def assert_nothing_left(cluster: demo.LocalCluster, secrets: list[str]) -> None:
    assert process_groups_alive(cluster.runner.started_process_groups) == [], "a container process outlived the runner"
    assert not any((cluster.runner.work_dir / "pods").glob("*")), "per-pod folders (with mounted Secrets) must be removed"
    for path in cluster.work_dir.rglob("*"):
        # the object store's and the API server's own data (etcd holds Secrets, as in any cluster) are not leaks
        stores = ("s3", "controlplane")
        if path.is_file() and not set(stores) & set(path.relative_to(cluster.work_dir).parts[:1]) and path.name not in ("api-key", "accessKey", "secretKey"):
            content = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in content, f"a secret was written to {path}"


@pytest.fixture
def local(tmp_path: Path) -> Iterator[demo.LocalCluster]:
    cluster = demo.start_cluster(tmp_path / "cluster", assets_from_environment())
    with cluster.stack:
        yield cluster
    assert_nothing_left(cluster, [cluster.store.secret_key] + ([cluster.api_key] if cluster.api_key else []))


def custom(cluster: demo.LocalCluster) -> Any:
    return kubernetes.client.CustomObjectsApi(cluster.client())


def get(cluster: demo.LocalCluster, plural: str, name: str) -> dict:
    return custom(cluster).get_namespaced_custom_object(demo.GROUP, demo.VERSION, NS, plural, name)


def wait(cluster: demo.LocalCluster, plural: str, name: str, predicate: Callable[[dict], Any], timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    obj: dict = {}
    while time.monotonic() < deadline:
        obj = get(cluster, plural, name)
        if predicate(obj):
            return obj
        time.sleep(0.5)
    raise AssertionError(f"{plural}/{name} {what}: not within {timeout} s; status {json.dumps(obj.get('status'))[:3000]}\n"
                         f"operator log tail:\n{cluster.operator_log.read_text()[-3000:]}")


def phase(name: str) -> Callable[[dict], bool]:
    return lambda o: (o.get("status") or {}).get("phase") == name


def documents(*kinds: str, **spec_changes: dict) -> list[tuple[str, dict]]:
    """The demo's example documents of these kinds, with spec changes per kind (merged one level deep)."""
    out = []
    for source, doc in demo.example_documents():
        if doc["kind"] not in kinds:
            continue
        doc = copy.deepcopy(doc)
        for key, value in spec_changes.get(doc["kind"], {}).items():
            doc["spec"][key] = {**doc["spec"].get(key, {}), **value} if isinstance(value, dict) else value
        out.append((source, doc))
    return out


def jobs(cluster: demo.LocalCluster) -> list[str]:
    return sorted(j.metadata.name for j in kubernetes.client.BatchV1Api(cluster.client()).list_namespaced_job(NS).items)


def trainer_process_group(cluster: demo.LocalCluster) -> int | None:
    """The process group of the running `finetune-trainer train` started for this cluster."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in cmdline and any(str(cluster.runner.work_dir).encode() in part for part in cmdline):
            return os.getpgid(int(entry.name))
    return None


def artifact_text(cluster: demo.LocalCluster, uri: str) -> str:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return cluster.store.client().get_object(bucket, key).read().decode()


# ------------------------------------------------------------------------------------------- the demo


def test_the_demo_fine_tunes_serves_and_shows_the_tuned_model_clearly_ahead(tmp_path: Path, capsys) -> None:
    result = demo.run(tmp_path / "demo", timeout=400, assets=assets_from_environment())
    out = capsys.readouterr().out
    objects = result.objects

    dataset = objects[("datasets", "support-tickets")]["status"]
    assert dataset["phase"] == "Ready" and dataset["numSamples"] == demo.NUM_EXAMPLES
    assert dataset["trainSamples"] + dataset["validationSamples"] == demo.NUM_EXAMPLES and dataset["validationSamples"] > 100

    job = objects[("finetunejobs", "ticket-router")]["status"]
    assert job["phase"] == "Completed" and job["progress"]["percent"] == 100
    assert job["outputModel"]["name"] == f"{NS}/tiny-support:router:ticket-router" and job["outputModel"]["adapter"] is True
    assert len(job["checkpoints"]) == 2
    assert job["progress"]["evalLoss"] < 0.2, "the held-out loss fell: the adapter learned the task"

    endpoint = objects[("inferenceendpoints", "support")]["status"]
    assert endpoint["phase"] == "Ready" and endpoint["models"] == ["tiny-support", "ticket-router"]

    evaluation = objects[("evaluations", "router-vs-base")]["status"]
    scores = {(s["model"], s["grader"]): s for s in evaluation["scores"]}
    assert evaluation["phase"] == "Completed" and evaluation["samples"] == dataset["validationSamples"]
    assert scores[("base", "exact_match")]["mean"] <= 0.1 and scores[("fine-tuned", "exact_match")]["mean"] >= 0.9
    assert scores[("fine-tuned", "f1")]["delta"] >= 0.8 and all(s["errors"] == 0 for s in evaluation["scores"])
    assert {c["type"]: c["status"] for c in evaluation["conditions"]}["Passed"] == "True"

    # What the user saw: the watch lines, the Events, the table, the openai answers, how to go on.
    assert "finetunejob/ticket-router" in out and "Running" in out and "event  FineTuneJob/ticket-router  Normal  Completed" in out
    assert "fine-tuned      | 1.000" in out or "fine-tuned      | 0.9" in out
    assert "model ticket-router (fine-tuned)  -> 'shipping'" in out and "helm install" in out and "KUBECONFIG=" in out
    assert_nothing_left(result.cluster, [result.cluster.store.secret_key, (tmp_path / "demo" / "api-key").read_text().strip()])


# ------------------------------------------------------------------------------------------- faults


def test_a_bad_dataset_stops_at_invalid_and_its_job_stays_pending_without_a_trainer(local: demo.LocalCluster) -> None:
    good = demo.examples(40, seed=3)
    lines = [json.dumps(r) for r in good]
    lines[4] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    lines[9] = "{not json"
    local.store.client().put_object(demo.BUCKET, demo.DATA_KEY, *_bytes("\n".join(lines) + "\n"))
    demo.apply(local, documents("Dataset", "FineTuneJob"))

    invalid = wait(local, "datasets", "support-tickets", phase("Invalid"), 120, "to be Invalid")["status"]
    errors = invalid["report"]["errors"]
    assert {e["line"] for e in errors} >= {5, 10}, errors
    assert invalid["report"]["isCheckPassed"] is False
    pending = wait(local, "finetunejobs", "ticket-router", lambda o: "Invalid" in (o.get("status") or {}).get("message", ""),
                   60, "to say its Dataset is Invalid")
    assert pending["status"]["phase"] == "Pending"
    # the reconcile that wrote that message is the one that would have made a trainer Job
    assert jobs(local) == ["support-tickets-validate-g1"], "no trainer Job for an Invalid Dataset"


def _bytes(text: str) -> tuple[Any, int]:
    import io

    data = text.encode()
    return io.BytesIO(data), len(data)


def test_a_killed_trainer_is_restarted_and_resumes_from_its_checkpoint(local: demo.LocalCluster) -> None:
    demo.prepare_inputs(local)
    demo.apply(local, documents("Dataset", "FineTuneJob", FineTuneJob={"hyperparameters": {"nCheckpoints": 4}}))
    saved = wait(local, "finetunejobs", "ticket-router", lambda o: (o.get("status") or {}).get("checkpoints"), 150, "to save a checkpoint")
    first = saved["status"]["checkpoints"][0]["step"]
    group = trainer_process_group(local)
    assert group is not None
    os.killpg(group, signal.SIGKILL)  # the node's OOM killer, or a preempted VM

    done = wait(local, "finetunejobs", "ticket-router", phase("Completed"), 240, "to complete")["status"]
    assert done["retries"] == 1 and done["progress"]["percent"] == 100
    events = artifact_text(local, done["artifactsUri"] + "/events.jsonl")
    resumed = [json.loads(line) for line in events.splitlines() if "Resuming from checkpoint" in line]
    assert resumed, events[-2000:]
    step = int(resumed[0]["message"].split("step ")[1].split()[0].rstrip(".:,"))
    assert step >= first, "resumed from a checkpoint, not from the start"
    assert jobs(local) == ["support-tickets-validate-g1", "ticket-router-train"]


def test_the_operator_killed_mid_pipeline_finishes_everything_without_duplicates(local: demo.LocalCluster) -> None:
    demo.prepare_inputs(local)
    demo.apply(local, demo.example_documents())
    wait(local, "finetunejobs", "ticket-router", lambda o: ((o.get("status") or {}).get("progress") or {}).get("step", 0) > 0,
         150, "to be training")
    os.killpg(local.operator.pid, signal.SIGKILL)
    local.operator.wait(10)
    time.sleep(2)
    demo.start_operator(local)

    evaluation = wait(local, "evaluations", "router-vs-base", phase("Completed"), 240, "to complete")
    assert {c["type"]: c["status"] for c in evaluation["status"]["conditions"]}["Passed"] == "True"
    assert jobs(local) == ["router-vs-base-eval", "support-tickets-validate-g1", "ticket-router-train"]
    apps = kubernetes.client.AppsV1Api(local.client())
    assert [d.metadata.name for d in apps.list_namespaced_deployment(NS).items] == ["support-server"]
    events = kubernetes.client.CoreV1Api(local.client()).list_namespaced_event(NS).items
    completed = [e for e in events if e.involved_object.name == "ticket-router" and e.reason == "Completed"]
    assert sum(e.count or 1 for e in completed) == 1, "one completion, reported once"


def test_deleting_a_running_finetunejob_stops_its_trainer_and_removes_its_children(local: demo.LocalCluster) -> None:
    demo.prepare_inputs(local)
    demo.apply(local, documents("Dataset", "FineTuneJob"))
    wait(local, "finetunejobs", "ticket-router", lambda o: ((o.get("status") or {}).get("progress") or {}).get("step", 0) > 0,
         150, "to be training")
    group = trainer_process_group(local)
    assert group is not None
    custom(local).delete_namespaced_custom_object(demo.GROUP, demo.VERSION, NS, "finetunejobs", "ticket-router")

    deadline = time.monotonic() + 60
    core, batch = kubernetes.client.CoreV1Api(local.client()), kubernetes.client.BatchV1Api(local.client())
    while time.monotonic() < deadline:
        left = (process_groups_alive([group]), [j for j in jobs(local) if j.startswith("ticket-router")],
                [c.metadata.name for c in core.list_namespaced_config_map(NS).items if c.metadata.name.startswith("ticket-router")],
                [p.metadata.name for p in core.list_namespaced_pod(NS).items if p.metadata.name.startswith("ticket-router")])
        if left == ([], [], [], []):
            break
        time.sleep(0.5)
    assert left == ([], [], [], []), f"left behind: processes, Jobs, ConfigMaps, pods = {left}"
    with pytest.raises(kubernetes.client.ApiException) as gone:
        get(local, "finetunejobs", "ticket-router")
    assert gone.value.status == 404
    assert batch.list_namespaced_job(NS).items[0].metadata.name == "support-tickets-validate-g1"
