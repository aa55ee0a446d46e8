"""The local runner plays the Job controller, the Deployment controller, the kubelet and kube-proxy.

Every test talks to the Kubernetes API test server only through the API, as a user or the operator
would: it creates Jobs, Deployments, Services, ConfigMaps and Secrets and reads back what the runner
made of them. Containers are tiny ``python -c`` / ``sh -c`` programs. After each test the runner is
stopped and the test checks that no process it started is left and no secret file remains.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from finetune_local.runner import LocalRunner

SECRET_TOKEN = "s3cr3t-" + uuid.uuid4().hex
WAIT_SECONDS = 30


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def py(source: str) -> list[str]:
    """A container command running a small Python program (found on the runner's PATH)."""
    return ["python", "-c", textwrap.dedent(source)]


def process_groups_alive(groups: list[int]) -> list[int]:
    """Processes (not zombies) whose process group is one the runner started."""
    wanted, alive = set(groups), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp in wanted and state != "Z":
            alive.append(int(entry.name))
    return alive


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Cluster:
    """The API as a test uses it: the official typed clients, one namespace."""

    def __init__(self, api_client: kubernetes.client.ApiClient, namespace: str) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.namespace = namespace

    def job(self, name: str) -> kubernetes.client.V1Job:
        return self.batch.read_namespaced_job_status(name, self.namespace)

    def pods(self, **labels: str) -> list[kubernetes.client.V1Pod]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return self.core.list_namespaced_pod(self.namespace, label_selector=selector or None).items

    def job_pods(self, name: str) -> list[kubernetes.client.V1Pod]:
        return [p for p in self.pods() if (p.metadata.labels or {}).get("job-name") == name]

    def condition(self, obj: Any, kind: str) -> Any:
        return next((c for c in ((obj.status and obj.status.conditions) or []) if c.type == kind and c.status == "True"), None)

    def wait_job_condition(self, name: str, kind: str, timeout: float = WAIT_SECONDS) -> Any:
        return wait_for(f"Job {name} condition {kind}", lambda: self.condition(self.job(name), kind), timeout)

    def create_job(self, name: str, containers: list[dict], restart_policy: str = "Never", **spec: Any) -> None:
        pod_spec = {"restartPolicy": restart_policy, "containers": containers}
        pod_spec.update(spec.pop("pod_spec", {}))
        body = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {"template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}, **spec},
        }
        self.batch.create_namespaced_job(self.namespace, body)



@pytest.fixture
def kube_api(local_kube_api: Any) -> Any:
    """The runner's own Job and Deployment controllers are tested on the project's API server (against a real
    control plane, whose controllers do that work, the runner's kubelet mode is tested in test_kubelet_mode.py)."""
    return local_kube_api


@pytest.fixture
def namespace(local_namespace: str) -> str:
    return local_namespace


@pytest.fixture
def cluster(kube_api: Any, namespace: str) -> Iterator[Cluster]:
    with kube_api.client() as api_client:
        yield Cluster(api_client, namespace)


@pytest.fixture
def runner(kube_api: Any, cluster: Cluster, tmp_path: Path) -> Iterator[LocalRunner]:
    """A runner for the test's namespace; afterwards nothing it started may be left behind."""
    local_runner = LocalRunner(
        kube_api.kubeconfig, namespace=cluster.namespace, work_dir=tmp_path / "runner", grace_period_cap=5
    )
    local_runner.start()
    kube_api.server.set_log_provider(local_runner.pod_log)  # `kubectl logs` reads the runner's logs
    try:
        yield local_runner
    finally:
        kube_api.server.set_log_provider(None)
        local_runner.stop()
        assert process_groups_alive(local_runner.started_process_groups) == []
        assert not any((tmp_path / "runner" / "pods").glob("*")), "per-pod folders must be removed"
        for path in (tmp_path / "runner").rglob("*"):
            if path.is_file():
                assert SECRET_TOKEN.encode() not in path.read_bytes(), f"secret left in {path}"


def test_a_job_whose_container_exits_zero_completes(cluster: Cluster, runner: LocalRunner) -> None:
    cluster.create_job("hello", [{"name": "main", "image": "trainer", "command": py("print('hello')")}])

    complete = cluster.wait_job_condition("hello", "Complete")
    job = cluster.job("hello")
    assert complete.reason == "CompletionsReached"
    assert cluster.condition(job, "SuccessCriteriaMet")
    assert (job.status.succeeded, job.status.failed or 0, job.status.active or 0) == (1, 0, 0)
    assert job.status.start_time and job.status.completion_time
    [pod] = cluster.job_pods("hello")
    assert pod.metadata.generate_name == "hello-"
    assert pod.metadata.labels["batch.kubernetes.io/job-name"] == "hello"
    assert pod.metadata.labels["controller-uid"] == job.metadata.uid
    [owner] = pod.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("Job", "hello", job.metadata.uid, True)
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.started_at and terminated.finished_at
    assert cluster.core.read_namespaced_pod_log(pod.metadata.name, cluster.namespace, container="main") == "hello\n"


def test_exit_code_42_fails_the_job_at_once_through_its_pod_failure_policy(cluster: Cluster, runner: LocalRunner) -> None:
    failing = "echo 'bad input: line 3 is not JSON' > /dev/termination-log; exit 42"
    cluster.create_job(
        "bad-input",
        [{"name": "trainer", "image": "trainer", "command": ["sh", "-c", failing]}],
        backoffLimit=3,
        podFailurePolicy={"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]},
    )

    failed = cluster.wait_job_condition("bad-input", "Failed")
    assert failed.reason == "PodFailurePolicy"
    assert "exit code 42" in failed.message
    assert cluster.condition(cluster.job("bad-input"), "FailureTarget")
    [pod] = cluster.job_pods("bad-input")  # no retry
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (42, "Error")
    assert terminated.message == "bad input: line 3 is not JSON\n"


def test_a_failing_job_is_retried_up_to_its_backoff_limit(cluster: Cluster, runner: LocalRunner) -> None:
    cluster.create_job("flaky", [{"name": "main", "image": "trainer", "command": ["sh", "-c", "exit 1"]}], backoffLimit=1)

    failed = cluster.wait_job_condition("flaky", "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert cluster.job("flaky").status.failed == 2
    pods = cluster.job_pods("flaky")
    assert len(pods) == 2 and all(p.status.phase == "Failed" for p in pods)


def test_a_suspended_job_runs_no_pods_until_it_is_resumed(cluster: Cluster, runner: LocalRunner, tmp_path: Path) -> None:
    go = tmp_path / "go"
    waits_for_go = py(f"""
        import os, time
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
    """)
    cluster.create_job("held", [{"name": "main", "image": "trainer", "command": waits_for_go}], suspend=True)

    suspended = cluster.wait_job_condition("held", "Suspended")
    assert suspended.reason == "JobSuspended"
    assert cluster.job_pods("held") == [] and not cluster.job("held").status.active

    cluster.batch.patch_namespaced_job("held", cluster.namespace, {"spec": {"suspend": False}})
    wait_for("a running pod", lambda: [p for p in cluster.job_pods("held") if p.status.phase == "Running"])
    resumed = next(c for c in cluster.job("held").status.conditions if c.type == "Suspended")
    assert (resumed.status, resumed.reason) == ("False", "JobResumed")

    # suspending a running Job stops its pod; resuming starts a new one
    cluster.batch.patch_namespaced_job("held", cluster.namespace, {"spec": {"suspend": True}})
    wait_for("the pod to go", lambda: not [p for p in cluster.job_pods("held") if p.metadata.deletion_timestamp is None])
    cluster.wait_job_condition("held", "Suspended")  # written after the pods are gone, not with them
    cluster.batch.patch_namespaced_job("held", cluster.namespace, {"spec": {"suspend": False}})
    wait_for("a new running pod", lambda: [p for p in cluster.job_pods("held") if p.status.phase == "Running"])
    go.touch()
    cluster.wait_job_condition("held", "Complete")
    assert cluster.job("held").status.failed in (None, 0)


def test_a_job_past_its_active_deadline_fails_and_its_process_ends(cluster: Cluster, runner: LocalRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    sleeper = py(f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    cluster.create_job("slow", [{"name": "main", "image": "trainer", "command": sleeper}], activeDeadlineSeconds=2)

    failed = cluster.wait_job_condition("slow", "Failed")
    assert failed.reason == "DeadlineExceeded"
    pid = int(wait_for("the pid file", lambda: pid_file.exists() and pid_file.read_text()))
    wait_for("the process to end", lambda: not pid_alive(pid))


def test_deleting_a_running_job_sends_sigterm_to_its_process(cluster: Cluster, runner: LocalRunner, tmp_path: Path) -> None:
    pid_file, marker = tmp_path / "pid", tmp_path / "got-sigterm"
    graceful = py(f"""
        import os, signal, sys, time
        def on_term(signum, frame):
            open({str(marker)!r}, "w").write("saved a checkpoint")
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    cluster.create_job("doomed", [{"name": "main", "image": "trainer", "command": graceful}])
    pid = int(wait_for("the pid file", lambda: pid_file.exists() and pid_file.read_text()))

    cluster.batch.delete_namespaced_job("doomed", cluster.namespace, propagation_policy="Background")

    wait_for("the SIGTERM marker", marker.exists)
    assert marker.read_text() == "saved a checkpoint"
    wait_for("the process to end", lambda: not pid_alive(pid))
    wait_for("the pod to be deleted", lambda: cluster.job_pods("doomed") == [])


def test_config_map_and_secret_are_mounted_and_their_paths_remapped(
    cluster: Cluster, runner: LocalRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="finetune_local.runner")
    cluster.core.create_namespaced_config_map(cluster.namespace, {
        "metadata": {"name": "trainer-config"},
        "data": {"config.json": '{"tokenFile": "/var/run/secrets/store/token", "outputDir": "/workspace/out"}'},
    })
    cluster.core.create_namespaced_secret(cluster.namespace, {
        "metadata": {"name": "store-credentials"},
        "stringData": {"token": SECRET_TOKEN},
    })
    program = py("""
        import json, os, stat, sys
        config = json.load(open(sys.argv[1]))
        token = open(config["tokenFile"]).read()
        os.makedirs(config["outputDir"], exist_ok=True)
        pod_folder = os.path.dirname(os.environ["HOME"])
        checks = {
            "token matches": token == os.environ["EXPECTED_TOKEN"],
            "token mode": oct(stat.S_IMODE(os.stat(config["tokenFile"]).st_mode)),
            "token in the pod folder": config["tokenFile"].startswith(pod_folder),
            "output in the pod folder": config["outputDir"].startswith(pod_folder),
            "pod folder mode": oct(stat.S_IMODE(os.stat(pod_folder).st_mode)),
        }
        open("/dev/termination-log", "w").write(json.dumps(checks, sort_keys=True))
    """)
    cluster.create_job(
        "mounts",
        [{
            "name": "main",
            "image": "trainer",
            "command": program,
            "args": ["/etc/finetune/config.json"],
            "env": [{"name": "EXPECTED_TOKEN", "valueFrom": {"secretKeyRef": {"name": "store-credentials", "key": "token"}}}],
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/finetune", "readOnly": True},
                {"name": "credentials", "mountPath": "/var/run/secrets/store", "readOnly": True},
                {"name": "scratch", "mountPath": "/workspace"},
            ],
        }],
        pod_spec={"volumes": [
            {"name": "config", "configMap": {"name": "trainer-config"}},
            {"name": "credentials", "secret": {"secretName": "store-credentials", "items": [{"key": "token", "path": "token"}]}},
            {"name": "scratch", "emptyDir": {}},
        ]},
    )

    cluster.wait_job_condition("mounts", "Complete")
    [pod] = cluster.job_pods("mounts")
    message = pod.status.container_statuses[0].state.terminated.message
    assert message == (
        '{"output in the pod folder": true, "pod folder mode": "0o700", "token in the pod folder": true, '
        '"token matches": true, "token mode": "0o600"}'
    )
    assert SECRET_TOKEN not in str(pod.to_dict())
    assert SECRET_TOKEN not in caplog.text


def test_downward_api_pod_ip_and_variable_expansion(cluster: Cluster, runner: LocalRunner) -> None:
    """POD_IP is the pod's own loopback address; 0.0.0.0 (all of the pod's addresses) becomes it too."""
    program = py("""
        import json, os, sys
        open("/dev/termination-log", "w").write(json.dumps({"args": sys.argv[1:], "greeting": os.environ["GREETING"]}))
    """)
    cluster.create_job(
        "downward",
        [{
            "name": "main",
            "image": "trainer",
            "command": program,
            "args": ["--host=$(POD_IP)", "--literal=$$(POD_IP)", "--unknown=$(NOT_SET)", "--bind=0.0.0.0:8000"],
            "env": [
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "GREETING", "value": "hello from $(POD_NAME)"},
            ],
        }],
    )

    cluster.wait_job_condition("downward", "Complete")
    [pod] = cluster.job_pods("downward")
    assert pod.status.pod_ip.startswith("127.") and pod.status.pod_ip != "127.0.0.1"
    reported = pod.status.container_statuses[0].state.terminated.message
    assert reported == (
        '{"args": ["--host=' + pod.status.pod_ip + '", "--literal=$(POD_IP)", "--unknown=$(NOT_SET)", '
        '"--bind=' + pod.status.pod_ip + ':8000"], '
        '"greeting": "hello from ' + pod.metadata.name + '"}'
    )


def test_a_container_without_a_runnable_command_fails_its_pod_clearly(cluster: Cluster, runner: LocalRunner) -> None:
    cluster.create_job("typo", [{"name": "main", "image": "trainer", "command": ["finetune-trainr", "train"]}], backoffLimit=0)
    cluster.create_job("imageonly", [{"name": "main", "image": "trainer"}], backoffLimit=0)

    assert cluster.wait_job_condition("typo", "Failed").reason == "BackoffLimitExceeded"
    assert cluster.wait_job_condition("imageonly", "Failed").reason == "BackoffLimitExceeded"
    [typo] = cluster.job_pods("typo")
    terminated = typo.status.container_statuses[0].state.terminated
    assert typo.status.phase == "Failed"
    assert terminated.reason == "StartError"
    assert terminated.message == 'exec: "finetune-trainr": executable file not found in $PATH'
    [image_only] = cluster.job_pods("imageonly")
    assert "has no command" in image_only.status.container_statuses[0].state.terminated.message


def test_a_deployment_behind_a_service_becomes_ready_and_the_service_answers(cluster: Cluster, runner: LocalRunner) -> None:
    ns = cluster.namespace
    server = {
        "name": "server",
        "image": "trainer",
        "command": ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8000"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    cluster.apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,  # both listen on port 8000, each on its own pod IP
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [server]}},
        },
    })
    cluster.core.create_namespaced_service(ns, {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    })

    deployment = wait_for(
        "2 ready replicas",
        lambda: (d := cluster.apps.read_namespaced_deployment_status("web", ns)).status and d.status.ready_replicas == 2 and d,
    )
    assert deployment.status.available_replicas == 2 and deployment.status.updated_replicas == 2
    assert deployment.status.observed_generation == deployment.metadata.generation
    assert cluster.condition(deployment, "Available").reason == "MinimumReplicasAvailable"
    pods = cluster.pods(app="web")
    assert len({p.status.pod_ip for p in pods}) == 2
    assert all(p.metadata.labels.get("pod-template-hash") for p in pods)

    address = wait_for(
        "the service address annotation",
        lambda: (cluster.core.read_namespaced_service("web", ns).metadata.annotations or {}).get("local.finetune.dev/address"),
    )
    assert cluster.core.read_namespaced_service("web", ns).metadata.annotations["local.finetune.dev/address-http"] == address
    with urllib.request.urlopen(f"http://{address}/", timeout=10) as response:
        assert response.status == 200

    # a pod reaches the service by its cluster DNS name
    fetch = py("""
        import sys, urllib.request
        for url in sys.argv[1:]:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200, url
    """)
    names = [f"http://web.{ns}.svc.cluster.local:80/", f"http://web.{ns}.svc:80/", f"http://web.{ns}:80/", "http://web:80/"]
    cluster.create_job("client", [{"name": "main", "image": "trainer", "command": fetch, "args": names}], backoffLimit=0)
    cluster.wait_job_condition("client", "Complete")

    # a template change rolls the pods over to the new template
    old = {p.metadata.name for p in pods}
    cluster.apps.patch_namespaced_deployment("web", ns, {"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}})

    def rolled() -> bool:
        current = [p for p in cluster.pods(app="web") if p.metadata.deletion_timestamp is None]
        status = cluster.apps.read_namespaced_deployment_status("web", ns).status
        return (
            len(current) == 2
            and not {p.metadata.name for p in current} & old
            and status.updated_replicas == 2
            and status.ready_replicas == 2
        )

    wait_for("the rollout", rolled)


def test_an_indexed_job_under_a_headless_service_reaches_its_peer_by_hostname(cluster: Cluster, runner: LocalRunner) -> None:
    ns = cluster.namespace
    cluster.core.create_namespaced_service(ns, {
        "metadata": {"name": "ranks"},
        "spec": {"clusterIP": "None", "selector": {"app": "ranks"}, "ports": [{"port": 29500}]},
    })
    rendezvous = py("""
        import json, os, socket, sys, time
        index, peer = int(os.environ["JOB_COMPLETION_INDEX"]), sys.argv[1]
        host, port = peer.rsplit(":", 1)
        if index == 0:
            server = socket.create_server((os.environ["POD_IP"], int(port)))
            connection, _ = server.accept()
            heard = connection.recv(100).decode()
        else:
            for _ in range(200):
                try:
                    socket.create_connection((host, int(port)), timeout=1).sendall(b"hello from rank 1")
                    break
                except OSError:
                    time.sleep(0.05)
            heard = ""
        report = {"index": index, "hostname": os.environ["HOSTNAME"], "peer": peer, "heard": heard}
        open("/dev/termination-log", "w").write(json.dumps(report))
    """)
    cluster.create_job(
        "ranks",
        [{
            "name": "main",
            "image": "trainer",
            "command": rendezvous,
            "args": [f"ranks-0.ranks.{ns}.svc.cluster.local:29500"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        }],
        completionMode="Indexed",
        completions=2,
        parallelism=2,
        pod_spec={"subdomain": "ranks"},
    )

    cluster.wait_job_condition("ranks", "Complete")
    assert cluster.job("ranks").status.completed_indexes == "0,1"  # as the real Job controller writes it
    pods = sorted(cluster.job_pods("ranks"), key=lambda p: p.metadata.annotations["batch.kubernetes.io/job-completion-index"])
    reports = [json.loads(p.status.container_statuses[0].state.terminated.message) for p in pods]
    rank0_ip = pods[0].status.pod_ip
    assert [(r["index"], r["hostname"]) for r in reports] == [(0, "ranks-0"), (1, "ranks-1")]
    assert all(r["peer"] == f"{rank0_ip}:29500" for r in reports)
    assert reports[0]["heard"] == "hello from rank 1"


def test_the_runner_keeps_working_when_the_api_server_goes_away_and_comes_back(tmp_path: Path) -> None:
    from finetune_local.kubeapi import KubeApiServer

    first = KubeApiServer().start()
    port = first.port
    kubeconfig = first.write_kubeconfig(tmp_path / "kubeconfig")
    local_runner = LocalRunner(kubeconfig, work_dir=tmp_path / "runner", grace_period_cap=5).start()
    second = None
    try:
        first.stop()  # every watch drops; calls fail until a server answers again
        time.sleep(1)
        second = KubeApiServer(port=port).start()
        with second.api_client() as api_client:
            cluster = Cluster(api_client, "default")
            cluster.create_job("after-outage", [{"name": "main", "image": "trainer", "command": py("print('back')")}])
            cluster.wait_job_condition("after-outage", "Complete")
    finally:
        local_runner.stop()
        if second is not None:
            second.stop()
    assert process_groups_alive(local_runner.started_process_groups) == []


def test_the_command_line_runner_runs_jobs_and_leaves_nothing_behind_on_sigterm(
    kube_api: Any, cluster: Cluster, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    sleeper = py(f"""
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "60"])
        open({str(pid_file)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(60)
    """)
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune_local.runner", "--kubeconfig", str(kube_api.kubeconfig),
         "--namespace", cluster.namespace, "--work-dir", str(tmp_path / "runner")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        cluster.create_job("quick", [{"name": "main", "image": "trainer", "command": py("print('done')")}])
        cluster.create_job("long", [{"name": "main", "image": "trainer", "command": sleeper}])
        cluster.wait_job_condition("quick", "Complete")
        pids = [int(pid) for pid in wait_for("the pid file", lambda: pid_file.exists() and pid_file.read_text()).split()]

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not any(pid_alive(pid) for pid in pids), "the container and the process it started must be gone"
    assert not any((tmp_path / "runner" / "pods").glob("*"))


def test_a_pod_runs_its_init_containers_first_sharing_an_empty_dir(cluster: Cluster, runner: LocalRunner) -> None:
    shared = [{"name": "shared", "mountPath": "/shared"}]
    cluster.core.create_namespaced_pod(cluster.namespace, {
        "metadata": {"name": "with-init"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [
                {"name": "first", "image": "x", "command": ["sh", "-c", "echo one > /shared/steps"], "volumeMounts": shared},
                {"name": "second", "image": "x", "command": ["sh", "-c", "echo two >> /shared/steps"], "volumeMounts": shared},
            ],
            "containers": [{"name": "main", "image": "x", "command": ["sh", "-c", "cat /shared/steps > /dev/termination-log"],
                            "volumeMounts": shared}],
        },
    })

    pod = wait_for(
        "the pod to succeed",
        lambda: (p := cluster.core.read_namespaced_pod("with-init", cluster.namespace)).status.phase == "Succeeded" and p,
    )
    assert pod.status.container_statuses[0].state.terminated.message == "one\ntwo\n"
    assert [s.state.terminated.reason for s in pod.status.init_container_statuses] == ["Completed", "Completed"]
    assert cluster.condition(pod, "Initialized") and cluster.condition(pod, "PodScheduled")


def test_a_deployment_pod_whose_process_exits_is_restarted_in_place(cluster: Cluster, runner: LocalRunner) -> None:
    cluster.apps.create_namespaced_deployment(cluster.namespace, {
        "metadata": {"name": "crashy"},
        "spec": {
            "selector": {"matchLabels": {"app": "crashy"}},
            "template": {"metadata": {"labels": {"app": "crashy"}},
                         "spec": {"containers": [{"name": "main", "image": "x", "command": ["sh", "-c", "exit 3"]}]}},
        },
    })

    def restarted_twice() -> Any:
        pods = cluster.pods(app="crashy")
        statuses = [s for p in pods if p.status and p.status.container_statuses for s in p.status.container_statuses]
        return len(pods) == 1 and statuses and statuses[0].restart_count >= 2 and statuses[0]

    status = wait_for("two restarts", restarted_twice)
    assert status.last_state.terminated.exit_code == 3
    deployment = cluster.apps.read_namespaced_deployment_status("crashy", cluster.namespace)
    assert not deployment.status.ready_replicas
    assert next(c for c in deployment.status.conditions if c.type == "Available").status == "False"


def test_a_finished_job_with_a_ttl_is_deleted_with_its_pods(cluster: Cluster, runner: LocalRunner) -> None:
    cluster.create_job("short-lived", [{"name": "main", "image": "x", "command": ["true"]}], ttlSecondsAfterFinished=1)
    cluster.wait_job_condition("short-lived", "Complete")

    def gone() -> bool:
        try:
            cluster.job("short-lived")
        except kubernetes.client.ApiException as error:
            return error.status == 404
        return False

    wait_for("the Job to be deleted", gone)
    wait_for("its pod to be deleted", lambda: cluster.job_pods("short-lived") == [])


def test_pods_of_a_stopped_runner_are_disrupted_and_their_job_retries_without_counting_them(
    kube_api: Any, cluster: Cluster, tmp_path: Path
) -> None:
    first_run = tmp_path / "first-run"
    once_slow = ["sh", "-c", f"test -e {first_run} || {{ touch {first_run}; sleep 60; }}"]
    runners = [LocalRunner(kube_api.kubeconfig, namespace=cluster.namespace, work_dir=tmp_path / f"runner-{i}") for i in (1, 2)]
    runners[0].start()
    try:
        cluster.create_job(
            "survivor",
            [{"name": "main", "image": "trainer", "command": once_slow}],
            backoffLimit=0,
            podFailurePolicy={"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
        )
        wait_for("the first run", first_run.exists)
        runners[0].stop()  # the machine goes away: its process ends, its pod still says Running

        runners[1].start()
        cluster.wait_job_condition("survivor", "Complete")
    finally:
        for local_runner in runners:
            local_runner.stop()
    lost = next(p for p in cluster.job_pods("survivor") if p.status.phase == "Failed")
    assert lost.status.reason == "NodeLost" and cluster.condition(lost, "DisruptionTarget")
    assert cluster.job("survivor").status.failed in (None, 0)
    for local_runner in runners:
        assert process_groups_alive(local_runner.started_process_groups) == []


def test_completed_indexes_are_written_as_the_job_controller_writes_them() -> None:
    from finetune_local.runner_jobs import compress_indexes

    assert compress_indexes({0}) == "0"
    assert compress_indexes({0, 1}) == "0,1"
    assert compress_indexes({0, 1, 2, 4, 6, 7, 9, 10, 11, 12}) == "0-2,4,6,7,9-12"
