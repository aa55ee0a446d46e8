"""Operator benchmark: apply N FineTuneJobs to the local Kubernetes API server and measure the operator.

Reports the time from the first create until every FineTuneJob has its Job, the reconcile latency
p50/p99 (from the operator's own finetune_reconcile_duration_seconds histogram, interpolated as
Prometheus' histogram_quantile does), and the operator process's peak memory (VmHWM).

The operator runs exactly as in production (``python -m finetune_operator``, kopf, real HTTP and
watches). The Dataset is validated for real first (the local runner runs its validation Job); the
runner is then stopped, so the trainer Jobs are created but never run: this measures the operator,
not the trainer.

    python bench/bench_operator.py [--jobs 1000]

The last line printed is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return buckets[-1][0]


def reconcile_buckets(metrics_text: str, kind: str = "FineTuneJob") -> list[tuple[float, float]]:
    out = []
    pattern = re.compile(r'finetune_reconcile_duration_seconds_bucket\{kind="%s",le="([^"]+)"\} ([0-9.e+]+)' % kind)
    for m in pattern.finditer(metrics_text):
        out.append((float(m.group(1)), float(m.group(2))))
    return out


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8, help="client threads creating FineTuneJobs")
    args = parser.parse_args()

    import kubernetes
    import kubernetes.watch

    from finetune_local.kubeapi import KubeApiServer, load_manifests
    from finetune_local.objectstore import start_object_store
    from finetune_local.runner import LocalRunner

    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    server = KubeApiServer().start()
    store = start_object_store(work / "s3", bucket="finetune")
    operator = None
    try:
        kubeconfig = server.write_kubeconfig(work / "kubeconfig")
        server.apply([d for d in load_manifests(REPO / "crds") if d.get("kind") == "CustomResourceDefinition"])
        creds = work / "creds"
        creds.mkdir(mode=0o700)
        (creds / "accessKey").write_text(store.access_key)
        (creds / "secretKey").write_text(store.secret_key)
        metrics_port, health_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
        env.update(
            KUBECONFIG=str(kubeconfig),
            FINETUNE_STORAGE_ENDPOINT=store.endpoint,
            FINETUNE_STORAGE_SECURE="false",
            FINETUNE_STORAGE_BUCKET="finetune",
            FINETUNE_STORAGE_CREDENTIALS_DIR=str(creds),
            FINETUNE_LOG_FORMAT="text",
            FINETUNE_LOG_LEVEL="WARNING",
            FINETUNE_METRICS_PORT=str(metrics_port),
            FINETUNE_HEALTH_PORT=str(health_port),
            FINETUNE_SHARED_PREFIXES="s3://finetune/models",
        )
        operator = subprocess.Popen([sys.executable, "-m", "finetune_operator"], env=env, stdout=open(work / "operator.log", "wb"), stderr=subprocess.STDOUT)
        api = server.api_client()
        core = kubernetes.client.CoreV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        batch = kubernetes.client.BatchV1Api(api)
        ns = "bench"
        core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_secret(ns, {"metadata": {"name": "finetune-storage"}, "stringData": {"accessKey": store.access_key, "secretKey": store.secret_key}})
        lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) for i in range(20)]
        data = ("\n".join(lines) + "\n").encode()
        store.client().put_object("finetune", f"uploads/{ns}/bench.jsonl", io.BytesIO(data), len(data))
        runner = LocalRunner(kubeconfig, namespace=ns, work_dir=work / "runner").start()
        try:
            custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", ns, "datasets", {
                "apiVersion": "finetune.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "bench"},
                "spec": {"source": {"uri": f"s3://finetune/uploads/{ns}/bench.jsonl"}, "format": "chat"}})
            deadline = time.monotonic() + 120
            while (custom.get_namespaced_custom_object("finetune.dev", "v1alpha1", ns, "datasets", "bench").get("status") or {}).get("phase") != "Ready":
                if time.monotonic() > deadline:
                    raise SystemExit("the Dataset did not become Ready; see " + str(work / "operator.log"))
                time.sleep(0.2)
        finally:
            runner.stop()
        # Only trainer Jobs count from here: the validation Job is not one of them. They are counted from a
        # watch (as the operator sees them): listing 1,000 Jobs every half second would load the API
        # server as much as the operator does.
        listed = batch.list_namespaced_job(ns)
        baseline_jobs = len(listed.items)
        seen: set[str] = set()
        all_seen = threading.Event()

        def count_jobs() -> None:
            client = server.api_client()
            stream = kubernetes.watch.Watch().stream(kubernetes.client.BatchV1Api(client).list_namespaced_job, ns,
                                                     resource_version=listed.metadata.resource_version, timeout_seconds=600)
            for event in stream:
                if event["type"] == "ADDED":
                    seen.add(event["object"].metadata.name)
                    if len(seen) >= args.jobs:
                        all_seen.set()
                        break
            client.close()

        watcher = threading.Thread(target=count_jobs, daemon=True)
        watcher.start()

        names = [f"job-{i:05d}" for i in range(args.jobs)]

        def create(chunk: list[str]) -> None:
            client = server.api_client()
            c = kubernetes.client.CustomObjectsApi(client)
            for name in chunk:
                c.create_namespaced_custom_object("finetune.dev", "v1alpha1", ns, "finetunejobs", {
                    "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
                    "spec": {"baseModel": {"uri": "s3://finetune/models/tiny"}, "dataset": "bench", "resources": {"gpus": 0}}})
            client.close()

        chunks = [names[i :: args.threads] for i in range(args.threads)]
        threads = [threading.Thread(target=create, args=(chunk,)) for chunk in chunks]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        created_s = time.monotonic() - started
        all_seen.wait(600)
        all_jobs_s = time.monotonic() - started
        count = len(batch.list_namespaced_job(ns).items) - baseline_jobs
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        buckets = reconcile_buckets(metrics)
        figures = {
            "benchmark": "operator",
            "finetunejobs": args.jobs,
            "jobs_created": count,
            "seconds_to_create_objects": round(created_s, 2),
            "seconds_until_all_have_jobs": round(all_jobs_s, 2),
            "reconciles": int(buckets[-1][1]) if buckets else 0,
            "reconcile_p50_seconds": round(histogram_quantile(0.5, buckets), 4),
            "reconcile_p99_seconds": round(histogram_quantile(0.99, buckets), 4),
            "operator_peak_rss_mb": round(vm_hwm_mb(operator.pid), 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "goal": "all Jobs within 60 s, p99 under 1 s, under 200 MB",
        }
        figures["goal_met"] = bool(
            count >= args.jobs and all_jobs_s <= 60 and figures["reconcile_p99_seconds"] < 1 and figures["operator_peak_rss_mb"] < 200
        )
        print(f"FineTuneJobs applied            {args.jobs}")
        print(f"Jobs created                    {count}")
        print(f"time until all have Jobs        {all_jobs_s:.1f} s   (goal: 60 s)")
        print(f"reconcile latency p50 / p99     {figures['reconcile_p50_seconds'] * 1000:.0f} ms / {figures['reconcile_p99_seconds'] * 1000:.0f} ms   (goal p99: 1 s)")
        print(f"operator peak memory            {figures['operator_peak_rss_mb']:.0f} MB   (goal: 200 MB)")
        print(json.dumps(figures))
        return 0 if count >= args.jobs else 1
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                operator.kill()
        store.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
