"""Fault injection: the operator is killed (SIGKILL) at random moments, some aimed right after it creates a
Job, while it handles many FineTuneJobs. Whatever the moment, when it is left to run every FineTuneJob has
exactly one Job, a complete status (its jobName and the Dataset's sha256 it was made from), and an Event for
every transition it went through: nothing is lost, nothing is made twice.

No pod runs here (there is no runner): each job is created suspended, then resumed, so that it passes
through two transitions (Suspended, then Queued) while the kills land.
"""

from __future__ import annotations

import queue
import random
import threading
import time

import kubernetes
import pytest

pytestmark = pytest.mark.timeout(900)

JOBS = 50
KILLS = 15
SHA = "cd" * 32


def ready_dataset(cluster) -> None:
    """A Dataset whose validation is done: created and given its Ready status before the operator starts."""
    cluster.apply(
        "apiVersion: finetune.dev/v1alpha1\nkind: Dataset\nmetadata:\n  name: chats\n"
        "spec:\n  source:\n    uri: s3://finetune/uploads/chats.jsonl\n  format: chat\n"
    )
    dataset = cluster.get("datasets", "chats")
    generation = dataset["metadata"]["generation"]
    now = "2026-01-01T00:00:00Z"
    cluster.patch_status("datasets", "chats", {
        "phase": "Ready", "observedGeneration": generation, "sha256": SHA, "format": "chat", "numSamples": 10,
        "trainUri": f"s3://finetune/datasets/{cluster.namespace}/chats/{SHA}/train.jsonl",
        "conditions": [
            {"type": "Validated", "status": "True", "reason": "CheckPassed", "message": "ok", "lastTransitionTime": now, "observedGeneration": generation},
            {"type": "Ready", "status": "True", "reason": "Ready", "message": "ok", "lastTransitionTime": now, "observedGeneration": generation},
        ],
    })  # fmt: skip


def finetunejob(name: str) -> dict:
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {"baseModel": {"uri": "s3://finetune/models/tiny"}, "dataset": "chats", "suspend": True, "resources": {"gpus": 0}},
    }  # fmt: skip


class JobWatch:
    """Tells when a Job appears in the namespace (to kill the operator right after it made one)."""

    def __init__(self, cluster) -> None:
        self.created: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cluster,), daemon=True)
        self._thread.start()

    def _run(self, cluster) -> None:
        watch = kubernetes.watch.Watch()
        while not self._stop.is_set():
            try:
                for event in watch.stream(cluster.batch.list_namespaced_job, cluster.namespace, timeout_seconds=5):
                    if event["type"] == "ADDED":
                        self.created.put(event["object"].metadata.name)
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - a dropped watch is opened again
                time.sleep(0.1)
        watch.stop()

    def stop(self) -> None:
        self._stop.set()


class Killer:
    """Kills the operator KILLS times at random moments, half of them aimed right after it made a Job, and
    starts it again each time; runs beside the test's own steps."""

    def __init__(self, rng: random.Random, jobs_seen: JobWatch, start_operator) -> None:
        self.rng, self.jobs_seen, self.start_operator = rng, jobs_seen, start_operator
        self.operator = start_operator(FINETUNE_PROGRESS_INTERVAL_SECONDS="5")
        self.kills = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while self.kills < KILLS:
                if self.rng.random() < 0.5:
                    try:  # aimed: right after the operator made a Job, before it wrote the status that says so
                        self.jobs_seen.created.get(timeout=3)
                    except queue.Empty:
                        pass
                else:
                    time.sleep(self.rng.uniform(0.05, 1.5))  # anywhere
                self.operator.kill()
                self.kills += 1
                self.operator = self.start_operator(FINETUNE_PROGRESS_INTERVAL_SECONDS="5")
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error

    def join(self) -> None:
        self.thread.join(600)
        assert self.error is None, self.error
        assert self.kills == KILLS


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_an_operator_killed_at_random_moments_leaves_one_job_each_a_complete_status_and_every_event(seed, cluster, object_store, start_operator, tmp_path):
    cluster.storage_secret(object_store)
    ready_dataset(cluster)
    names = [f"job-{i:03d}" for i in range(JOBS)]
    jobs_seen = JobWatch(cluster)
    killer = Killer(random.Random(seed), jobs_seen, start_operator)
    try:
        for name in names:  # each goes Suspended (its Job made suspended) ...
            cluster.custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", cluster.namespace, "finetunejobs", finetunejob(name))
        for name in names:
            cluster.wait_phase("finetunejobs", name, "Suspended", timeout=180)
        for name in names:  # ... then Queued once resumed, while the kills go on
            cluster.patch_spec("finetunejobs", name, {"suspend": False})
        killer.join()
    finally:
        jobs_seen.stop()

    def settled(obj: dict) -> bool:
        status = obj.get("status") or {}
        return status.get("phase") == "Queued" and bool(status.get("jobName")) and status.get("datasetSha256") == SHA

    for name in names:
        done = cluster.wait_for("finetunejobs", name, settled, timeout=180, what="to be Queued with a complete status")
        assert done["status"]["jobName"] == f"{name}-train"

    made = sorted(j.metadata.name for j in cluster.trainer_jobs())
    assert made == sorted(f"{name}-train" for name in names), "exactly one Job for each FineTuneJob, no other"
    for job in cluster.trainer_jobs():
        assert job.metadata.annotations["finetune.dev/dataset-sha256"] == SHA
    events: dict[str, set[str]] = {}
    for event in cluster.core.list_namespaced_event(cluster.namespace).items:
        if event.involved_object.kind == "FineTuneJob":
            events.setdefault(event.involved_object.name, set()).add(event.reason)
    missing = {name: sorted({"Suspended", "Resumed", "Queued"} - events.get(name, set())) for name in names}
    assert {k: v for k, v in missing.items() if v} == {}, "every transition's Event, at least once"
    for log in sorted(tmp_path.glob("operator-*.log")):
        assert "Traceback" not in log.read_text(errors="replace"), log.name
