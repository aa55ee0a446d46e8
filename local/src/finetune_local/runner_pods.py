"""The kubelet part of the local runner: one ``PodWorker`` thread per pod runs its containers as processes.

A container is its ``command`` + ``args`` run as a process group of its own (the image is ignored),
with its environment, its volumes materialised in a private per-pod folder, and its paths and
service addresses rewritten (see ``runner_files`` and ``runner_services``). The worker plays the
kubelet's part: init containers in order, then the containers; restarts by ``restartPolicy`` with a
short back-off; readiness and liveness probes (httpGet, tcpSocket, exec), polled; the pod status
(phase, conditions, container states with exit codes and termination messages) patched through the
API; and on deletion SIGTERM to each process group, SIGKILL after the (capped) grace period.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from finetune_local.runner_files import (
    ContainerEnv,
    PathMap,
    PodConfigError,
    VolumeBuilder,
    Volumes,
    container_environment,
    expand_references,
    pod_field_value,
    refresh_config_map_files,
    remap_text_files,
)
from finetune_local.runner_kube import PODS, Kube, KubeError, now_iso
from finetune_trainer.contract import DEFAULT_TERMINATION_LOG, TERMINATION_LOG_ENV, TERMINATION_MESSAGE_LIMIT

log = logging.getLogger("finetune_local.runner")

_ANY_ADDRESS = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d./])")

START_ERROR_EXIT_CODE = 128
POLL_SECONDS = 0.1
PROBE_PERIOD_CAP_SECONDS = 1.0
PROBE_INITIAL_DELAY_CAP_SECONDS = 5.0
PROBE_TIMEOUT_CAP_SECONDS = 5.0
RESTART_BACKOFF_CAP_SECONDS = 5.0
MINIMUM_GRACE_SECONDS = 2.0
CONFIG_MAP_REFRESH_SECONDS = 1.0
"""How often a running pod's configMap volumes are synced (the kubelet takes up to about a minute)."""


@dataclass
class KubeletContext:
    """What every pod worker shares with the runner."""

    kube: Kube
    node_name: str
    work_dir: Path
    grace_period_cap: float
    show_logs: bool
    rewrite_addresses: Callable[[str, str], str]
    """(text, namespace) → text with service and pod DNS names replaced by local addresses."""
    service_environment: Callable[[str], dict[str, str]]
    """namespace → the ``<SVC>_SERVICE_HOST`` / ``_PORT`` variables the kubelet injects."""
    record_process: Callable[[int], None]
    """Called with each process-group id the worker starts."""
    extra_path: list[str] = field(default_factory=list)
    """Folders put first on every container's PATH."""


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Probe:
    """A readiness or liveness probe's schedule and its consecutive results."""

    spec: dict
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0

    def period(self) -> float:
        return min(float(self.spec.get("periodSeconds") or 10), PROBE_PERIOD_CAP_SECONDS)

    def timeout(self) -> float:
        return min(float(self.spec.get("timeoutSeconds") or 1), PROBE_TIMEOUT_CAP_SECONDS)

    def reset(self, started: float) -> None:
        self.next_at = started + min(float(self.spec.get("initialDelaySeconds") or 0), PROBE_INITIAL_DELAY_CAP_SECONDS)
        self.successes = self.failures = 0


@dataclass
class Container:
    """One container's spec and its local state."""

    spec: dict
    init: bool
    log_path: Path
    termination_path: Path
    paths: PathMap
    process: subprocess.Popen | None = None
    log_file: IO[bytes] | None = None
    env: ContainerEnv | None = None
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: str | None = None
    started_monotonic: float = 0.0
    terminated: dict | None = None
    last_terminated: dict | None = None
    restart_count: int = 0
    restart_at: float | None = None
    ready: bool = False
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None
    """Until it succeeds, readiness and liveness are not probed; failing it restarts the container."""
    pgids: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec["name"]

    def status(self) -> dict:
        if self.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated" and self.terminated:
            state = {"terminated": self.terminated}
        else:
            state = {"waiting": {"reason": self.reason, **({"message": self.message} if self.message else {})}}
        status = {
            "name": self.name,
            "image": self.spec.get("image") or "",
            "imageID": "",
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.state == "running" and self.startup is None,
        }
        if self.process is not None:
            status["containerID"] = f"local://{self.process.pid}"
        return status


class PodWorker:
    """Runs one pod until it ends or is deleted; a thread of its own."""

    def __init__(self, ctx: KubeletContext, pod: dict, pod_ip: str) -> None:
        self.ctx = ctx
        self.pod = pod
        self.pod_ip = pod_ip
        meta = pod["metadata"]
        self.namespace = meta.get("namespace") or "default"
        self.name = meta["name"]
        self.uid = meta.get("uid") or ""
        self.spec = pod.get("spec") or {}
        self.restart_policy = self.spec.get("restartPolicy") or "Always"
        self.pod_dir = ctx.work_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.stop_requested = threading.Event()
        self.grace_override: float | None = None
        self.deleted = False  # the pod object is gone from the API: no more status writes
        self.node_shutdown = False
        self.finished = threading.Event()
        self.phase = "Pending"
        self.start_time = now_iso()
        self.initialized = False
        self.failed_init = False
        self.pod_reason = ""
        self.pod_message = ""
        self._published: str = ""
        self._publish_retry_at = 0.0
        self._volume_folders: dict[str, Path] = {}
        self._pod_paths = PathMap()
        self._next_config_refresh = 0.0
        self._thread = threading.Thread(target=self._run, name=f"pod-{self.namespace}-{self.name}", daemon=True)
        logs = ctx.work_dir / "logs"
        self.init_containers = [self._container(c, True, logs) for c in self.spec.get("initContainers") or []]
        self.containers = [self._container(c, False, logs) for c in self.spec.get("containers") or []]

    def _container(self, spec: dict, init: bool, logs: Path) -> Container:
        termination = self.pod_dir / "termination" / spec["name"] / "termination-log"
        return Container(
            spec=spec,
            init=init,
            log_path=logs / f"{self.namespace}_{self.name}_{spec['name']}.log",
            termination_path=termination,
            paths=PathMap(),
        )

    # public ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def request_stop(self, deleted: bool = False, grace_seconds: float | None = None, node_shutdown: bool = False) -> None:
        """Stop the pod's processes (SIGTERM, then SIGKILL after the grace period) and end the worker.

        ``deleted``: the pod is gone from the API (or the runner is stopping): no more status writes.
        ``grace_seconds``: the deletion's own grace period, which overrides the pod's.
        ``node_shutdown``: the node is going away (kubelet mode): like a kubelet's graceful node shutdown, the
        pod ends Failed with reason ``Terminated`` and a ``DisruptionTarget`` condition, so its Job replaces it
        (a podFailurePolicy may ignore the failure) and its ReplicaSet makes another.
        """
        if deleted:
            self.deleted = True
        if node_shutdown:
            self.node_shutdown = True
        if grace_seconds is not None and not self.stop_requested.is_set():
            self.grace_override = float(grace_seconds)
        self.stop_requested.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def kill_processes(self) -> None:
        """SIGKILL every process group this pod's containers have running, at once."""
        for c in self.init_containers + self.containers:
            if c.process is not None and c.process.poll() is None:
                _kill_group(c.process.pid, signal.SIGKILL)

    @property
    def ready(self) -> bool:
        return self.phase == "Running" and all(c.ready for c in self.containers)

    # the pod's life ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.pod_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.pod_dir, 0o700)
            self._publish(force=True)
            volumes = self._prepare()
            if volumes is not None and not self.stop_requested.is_set():
                self._setup_paths(volumes)
                if self._run_init_containers():
                    self.initialized = True
                    self._run_containers()
        except Exception:  # noqa: BLE001 - a worker must never take the runner down
            log.exception("pod %s/%s: unexpected error in the local runner", self.namespace, self.name)
            self.pod_reason, self.pod_message = "RunnerError", "the local runner failed to run this pod; see its log"
            for c in self.init_containers + self.containers:
                if c.state != "terminated":
                    c.state, c.reason = "waiting", "RunnerError"
        finally:
            self._stop_all()
            self._finish()

    def _prepare(self) -> Volumes | None:
        """Materialise the volumes, retrying while a ConfigMap or Secret is missing (like the kubelet)."""
        while not self.stop_requested.is_set():
            try:
                builder = VolumeBuilder(
                    self.ctx.kube, self.pod, self.pod_dir, self.ctx.work_dir / "claims", self._field_value
                )
                return builder.build()
            except PodConfigError as exc:
                for c in self.init_containers + self.containers:
                    c.state, c.reason, c.message = "waiting", "ContainerCreating", exc.message
                self._publish()
                self.stop_requested.wait(1.0)
        return None

    def _setup_paths(self, volumes: Volumes) -> None:
        pod_paths = PathMap()
        root = self.pod_dir / "root"
        for c in self.init_containers + self.containers:
            for mount in c.spec.get("volumeMounts") or []:
                local = volumes.folders.get(mount["name"])
                if local is None:
                    continue
                sub_path = mount.get("subPath") or mount.get("subPathExpr")
                if sub_path:
                    local = local / sub_path
                    if not local.exists():
                        local.mkdir(parents=True, exist_ok=True, mode=0o700)
                c.paths.add(mount["mountPath"], local)
            pod_paths = pod_paths.merged(c.paths)
            c.termination_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            c.termination_path.touch(mode=0o600)
            c.paths.add(c.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_LOG, c.termination_path)
            working_dir = c.spec.get("workingDir")
            if working_dir and not Path(c.paths.local(working_dir)).is_dir():
                local_working_dir = root / working_dir.lstrip("/")
                local_working_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                c.paths.add(working_dir, local_working_dir)
        remap_text_files(volumes, lambda text: self._localise(pod_paths, text))
        self._volume_folders, self._pod_paths = volumes.folders, pod_paths

    def _localise(self, paths: PathMap, text: str) -> str:
        """In-container paths → local paths; cluster DNS names → local addresses; ``0.0.0.0`` → the pod IP.

        In a pod, listening on 0.0.0.0 means "on this pod's addresses"; here every pod shares the
        machine's network, so the pod's own loopback IP stands in for it (CIDRs like 0.0.0.0/0 stay).
        """
        text = self.ctx.rewrite_addresses(paths.remap(text), self.namespace)
        return _ANY_ADDRESS.sub(self.pod_ip, text) if "0.0.0.0" in text else text

    def _refresh_config_maps(self) -> None:
        """Bring configMap files up to date with their ConfigMaps, as the kubelet's volume sync does."""
        try:
            changed = refresh_config_map_files(
                self.ctx.kube, self.pod, self._volume_folders, lambda text: self._localise(self._pod_paths, text)
            )
        except (OSError, PodConfigError) as exc:
            log.warning("pod %s/%s: configMap volume refresh failed: %s", self.namespace, self.name, exc)
            return
        for path in changed:
            log.info("pod %s/%s: configMap file %s updated", self.namespace, self.name, path.name)

    def _field_value(self, field_path: str) -> str:
        return pod_field_value(self.pod, field_path, self.pod_ip, self.ctx.node_name)

    def _run_init_containers(self) -> bool:
        for c in self.init_containers:
            while not self.stop_requested.is_set():
                if c.state != "running" and (c.restart_at is None or time.monotonic() >= c.restart_at):
                    self._start(c)
                self._poll(c)
                self._publish()
                if c.state == "terminated":
                    if c.terminated and c.terminated["exitCode"] == 0:
                        break
                    self.failed_init = True
                    return False
                self.stop_requested.wait(POLL_SECONDS)
            if self.stop_requested.is_set():
                return False
        return True

    def _run_containers(self) -> None:
        for c in self.containers:
            self._start(c)
        self._publish()
        while not self.stop_requested.is_set():
            now = time.monotonic()
            for c in self.containers:
                if c.state == "waiting" and c.restart_at is not None and now >= c.restart_at:
                    self._start(c)
                self._poll(c)
                if c.state == "running":
                    self._probe(c, now)
            if now >= self._next_config_refresh:
                self._next_config_refresh = now + CONFIG_MAP_REFRESH_SECONDS
                self._refresh_config_maps()
            self.phase = self._phase()
            self._publish()
            if self.phase in ("Succeeded", "Failed"):
                return
            self.stop_requested.wait(POLL_SECONDS)

    def _phase(self) -> str:
        if any(c.state == "running" or c.restart_at is not None and c.started_at for c in self.containers):
            return "Running"
        if all(c.state == "terminated" for c in self.containers):
            codes = [c.terminated["exitCode"] if c.terminated else 1 for c in self.containers]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        return "Pending" if not any(c.started_at for c in self.containers) else "Running"

    # one container -----------------------------------------------------------------------------

    def _base_environment(self, c: Container) -> dict[str, str]:
        hostname = self.spec.get("hostname") or self.name
        env = {
            "PATH": os.pathsep.join([*self.ctx.extra_path, os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": str(self.pod_dir / "home"),
            "TMPDIR": str(self.pod_dir / "tmp"),
            "HOSTNAME": hostname,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            # the trainer writes its termination message where this names (spec env may override it)
            TERMINATION_LOG_ENV: str(c.termination_path),
        }
        if os.environ.get("PYTHONPATH"):
            # the "image" is this environment: a checkout the runner itself imports is the code its pods run
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        if self.spec.get("enableServiceLinks", True):
            env.update(self.ctx.service_environment(self.namespace))
        return env

    def _start(self, c: Container) -> None:
        c.restart_at = None
        c.ready = False
        (self.pod_dir / "home").mkdir(exist_ok=True, mode=0o700)
        (self.pod_dir / "tmp").mkdir(exist_ok=True, mode=0o700)
        try:
            base = self._base_environment(c)
            env = container_environment(self.ctx.kube, self.pod, c.spec, base, self._field_value)
        except PodConfigError as exc:
            c.state, c.reason, c.message = "waiting", exc.reason, exc.message
            c.restart_at = time.monotonic() + 1.0
            return
        for name, value in list(env.values.items()):
            # The runner's own variables (PATH, HOME, TMPDIR) already hold local paths: only what the
            # pod spec sets is remapped.
            if name not in env.secret_names and base.get(name) != value:
                env.values[name] = self._localise(c.paths, value)
        c.env = env
        raw_command = list(c.spec.get("command") or [])
        if not raw_command:
            self._start_failed(
                c,
                f'container "{c.name}" has no command: the local runner ignores images, so each container '
                "needs spec.containers[].command",
            )
            return
        argv = [
            self._localise(c.paths, expand_references(part, env.values))
            for part in raw_command + list(c.spec.get("args") or [])
        ]
        working_dir = c.spec.get("workingDir")
        cwd = Path(c.paths.local(working_dir)) if working_dir else self.pod_dir / "root"
        cwd.mkdir(parents=True, exist_ok=True)
        executable = argv[0]
        if os.sep in executable:
            candidate = os.path.join(cwd, executable)  # an absolute path stays as it is
            found = candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
        else:
            found = shutil.which(executable, path=env.values.get("PATH"))
        if found is None:
            self._start_failed(c, f'exec: "{raw_command[0]}": executable file not found in $PATH')
            return
        c.log_path.parent.mkdir(parents=True, exist_ok=True)
        c.termination_path.write_bytes(b"")
        log_file = open(c.log_path, "ab")  # noqa: SIM115 - closed when the process ends
        try:
            process = subprocess.Popen(
                [found] + argv[1:],
                env=env.values,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.ctx.show_logs else log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            log_file.close()
            self._start_failed(c, f'failed to start container "{c.name}": {exc.strerror or exc}')
            return
        self.ctx.record_process(process.pid)
        c.pgids.append(process.pid)
        c.process, c.log_file = process, log_file
        if self.ctx.show_logs:
            threading.Thread(target=self._copy_logs, args=(c, process, log_file), daemon=True).start()
        c.state, c.reason, c.message = "running", "", ""
        c.started_at = now_iso()
        c.started_monotonic = time.monotonic()
        c.terminated = None
        c.ready = not c.spec.get("readinessProbe")
        c.readiness = Probe(c.spec["readinessProbe"]) if c.spec.get("readinessProbe") else None
        c.liveness = Probe(c.spec["livenessProbe"]) if c.spec.get("livenessProbe") else None
        c.startup = Probe(c.spec["startupProbe"]) if c.spec.get("startupProbe") else None
        for probe in (c.readiness, c.liveness, c.startup):
            if probe:
                probe.reset(c.started_monotonic)
        log.info("pod %s/%s: container %s started (pid %d)", self.namespace, self.name, c.name, process.pid)

    def _copy_logs(self, c: Container, process: subprocess.Popen, log_file: IO[bytes]) -> None:
        prefix = f"[{self.namespace}/{self.name}/{c.name}] "
        assert process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            log_file.write(line)
            log_file.flush()
            sys.stderr.write(prefix + line.decode("utf-8", errors="replace"))
        log_file.close()

    def _start_failed(self, c: Container, message: str) -> None:
        now = now_iso()
        self._terminated(c, {
            "exitCode": START_ERROR_EXIT_CODE,
            "reason": "StartError",
            "message": message,
            "startedAt": now,
            "finishedAt": now,
        })

    def _poll(self, c: Container) -> None:
        if c.state != "running" or c.process is None:
            return
        returncode = c.process.poll()
        if returncode is None:
            return
        self._reap(c)
        code = _exit_code(returncode)
        message = self._termination_message(c, code)
        self._terminated(c, {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            **({"message": message} if message else {}),
            "startedAt": c.started_at,
            "finishedAt": now_iso(),
        })

    def _reap(self, c: Container) -> None:
        """The container's main process ended: end what it left behind in its group, as a cgroup kill would."""
        if c.process is not None:
            _kill_group(c.process.pid, signal.SIGKILL)
            c.process.wait()
        if c.log_file is not None:
            if not self.ctx.show_logs:
                c.log_file.close()
            c.log_file = None

    def _termination_message(self, c: Container, code: int) -> str:
        try:
            with open(c.termination_path, "rb") as handle:
                message = handle.read(TERMINATION_MESSAGE_LIMIT).decode("utf-8", errors="replace")
        except OSError:
            message = ""
        if not message.strip() and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                data = c.log_path.read_bytes()[-2048:]
                message = b"\n".join(data.splitlines()[-80:]).decode("utf-8", errors="replace")
            except OSError:
                message = ""
        return message

    def _terminated(self, c: Container, terminated: dict) -> None:
        c.state, c.terminated, c.ready = "terminated", terminated, False
        c.process = None
        code = terminated["exitCode"]
        restart = not self.stop_requested.is_set() and (
            self.restart_policy == "Always" and not c.init
            or self.restart_policy in ("Always", "OnFailure") and code != 0
        )
        if restart:
            delay = min(0.5 * 2**c.restart_count, RESTART_BACKOFF_CAP_SECONDS)
            if time.monotonic() - c.started_monotonic > 30:
                delay = 0.5  # ran for a while: restart promptly, as the kubelet resets its back-off
            c.last_terminated = terminated
            c.restart_count += 1
            c.state, c.reason = "waiting", "CrashLoopBackOff" if code != 0 else "Completed"
            c.message = f"back-off {delay:.1f}s restarting failed container={c.name} pod={self.name}"
            c.restart_at = time.monotonic() + delay
        else:
            c.restart_at = None

    # probes ------------------------------------------------------------------------------------

    def _probe(self, c: Container, now: float) -> None:
        if c.startup is not None:
            if now < c.startup.next_at:
                return
            c.startup.next_at = now + c.startup.period()
            if self._check(c, c.startup):
                c.startup = None  # started: readiness and liveness take over from now
                for probe in (c.readiness, c.liveness):
                    if probe:
                        probe.reset(now)
            else:
                c.startup.failures += 1
                if c.startup.failures >= int(c.startup.spec.get("failureThreshold") or 3) and c.process is not None:
                    log.info("pod %s/%s: container %s failed its startup probe; restarting", self.namespace, self.name, c.name)
                    _kill_group(c.process.pid, signal.SIGKILL)
            return
        for probe, is_readiness in ((c.readiness, True), (c.liveness, False)):
            if probe is None or now < probe.next_at:
                continue
            probe.next_at = now + probe.period()
            ok = self._check(c, probe)
            if ok:
                probe.successes, probe.failures = probe.successes + 1, 0
            else:
                probe.failures, probe.successes = probe.failures + 1, 0
            if is_readiness:
                if ok and probe.successes >= int(probe.spec.get("successThreshold") or 1):
                    c.ready = True
                elif not ok and probe.failures >= int(probe.spec.get("failureThreshold") or 3):
                    c.ready = False
            elif not ok and probe.failures >= int(probe.spec.get("failureThreshold") or 3):
                log.info("pod %s/%s: container %s failed its liveness probe; restarting", self.namespace, self.name, c.name)
                if c.process is not None:
                    _kill_group(c.process.pid, signal.SIGKILL)

    def _port(self, c: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in c.spec.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise ValueError(f"no container port named {port!r}")

    def _check(self, c: Container, probe: Probe) -> bool:
        spec, timeout = probe.spec, probe.timeout()
        try:
            if "httpGet" in spec:
                action = spec["httpGet"]
                host = action.get("host") or self.pod_ip
                port = self._port(c, action.get("port"))
                if (action.get("scheme") or "HTTP").upper() == "HTTPS":
                    import ssl

                    conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                        host, port, timeout=timeout, context=ssl._create_unverified_context()  # noqa: S323 - probes skip verification, like the kubelet
                    )
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                try:
                    headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
                    conn.request("GET", action.get("path") or "/", headers=headers)
                    return 200 <= conn.getresponse().status < 400
                finally:
                    conn.close()
            if "tcpSocket" in spec:
                action = spec["tcpSocket"]
                with socket.create_connection((action.get("host") or self.pod_ip, self._port(c, action.get("port"))), timeout):
                    return True
            if "exec" in spec:
                command = [c.paths.remap(part) for part in spec["exec"].get("command") or []]
                if not command:
                    return False
                result = subprocess.run(  # noqa: S603 - the pod's own probe command
                    command,
                    env=c.env.values if c.env else None,
                    cwd=self.pod_dir / "root",
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=timeout,
                )
                return result.returncode == 0
            return True  # grpc and unknown handlers: not checked locally
        except (OSError, ValueError, http.client.HTTPException, subprocess.TimeoutExpired):
            return False

    # ending ------------------------------------------------------------------------------------

    def _grace_seconds(self) -> float:
        grace = self.spec.get("terminationGracePeriodSeconds") if self.grace_override is None else self.grace_override
        # like the kubelet, never less than 2 s: a process always gets a moment to act on SIGTERM
        return min(max(float(30 if grace is None else grace), MINIMUM_GRACE_SECONDS), self.ctx.grace_period_cap)

    def _stop_all(self) -> None:
        """SIGTERM every running container's group, SIGKILL after the grace period, reap them all."""
        running = [c for c in self.init_containers + self.containers if c.state == "running" and c.process is not None]
        for c in running:
            _kill_group(c.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self._grace_seconds()
        while running and time.monotonic() < deadline:
            running = [c for c in running if c.process is not None and c.process.poll() is None]
            if running:
                time.sleep(0.05)
        for c in self.init_containers + self.containers:
            if c.state == "running" and c.process is not None:
                c.restart_at = None
                _kill_group(c.process.pid, signal.SIGKILL)
                self._poll(c)
                if c.state == "running":  # still not reaped
                    c.process.wait()
                    self._poll(c)
            for pgid in c.pgids:
                _kill_group(pgid, signal.SIGKILL)
            c.restart_at = None
            if c.state == "waiting" and c.started_at is None:
                c.reason = "PodInitializing" if not c.init else c.reason

    def _finish(self) -> None:
        if self.node_shutdown and self.phase not in ("Succeeded", "Failed"):
            self.phase = "Failed"
            self.pod_reason, self.pod_message = "Terminated", "Pod was terminated in response to imminent node shutdown."
        elif self.failed_init or self.pod_reason == "RunnerError":
            self.phase = "Failed"
        elif all(c.state == "terminated" for c in self.containers) and self.containers:
            self.phase = self._phase()
        elif self.stop_requested.is_set():
            # stopped from outside: the kubelet reports a deleted pod's containers as ended
            if self.phase in ("Pending", "Running"):
                self.phase = "Failed" if self.restart_policy != "Always" else self.phase
        if not self.deleted:
            for _ in range(3):
                if self._publish(force=True):
                    break
                time.sleep(0.2)
        shutil.rmtree(self.pod_dir, ignore_errors=True)
        self.finished.set()
        log.info("pod %s/%s: ended (%s)", self.namespace, self.name, self.phase)

    # status ------------------------------------------------------------------------------------

    def status(self) -> dict:
        now = now_iso()
        terminal = self.phase in ("Succeeded", "Failed")
        containers_ready = bool(self.containers) and all(c.ready for c in self.containers) and not terminal

        def condition(kind: str, ok: bool, reason: str = "") -> dict:
            result = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None, "lastTransitionTime": now}
            if reason and not ok:
                result["reason"] = reason
            return result

        ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        status: dict[str, Any] = {
            "phase": self.phase,
            "conditions": [
                condition("PodScheduled", True),
                condition("Initialized", self.initialized or not self.init_containers, "ContainersNotInitialized"),
                condition("ContainersReady", containers_ready, ready_reason),
                condition("Ready", containers_ready, ready_reason),
            ],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.node_shutdown and self.phase == "Failed":
            status["conditions"].append(
                {**condition("DisruptionTarget", True), "reason": "TerminationByKubelet", "message": "Pod was terminated in response to imminent node shutdown."}
            )
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        if self.pod_reason:
            status["reason"], status["message"] = self.pod_reason, self.pod_message
        return status

    def _publish(self, force: bool = False) -> bool:
        """Patch the pod status when it changed; True when the API has the current status."""
        status = self.status()
        fingerprint = json.dumps(_without_times(status), sort_keys=True)
        if fingerprint == self._published or self.deleted:
            return True
        if not force and time.monotonic() < self._publish_retry_at:
            return False
        previous = (self.pod.get("status") or {}).get("conditions") or []
        status["conditions"] = _keep_transition_times(status["conditions"], previous)
        try:
            updated = self.ctx.kube.patch(PODS, self.namespace, self.name, {"status": status}, status=True)
        except KubeError as exc:
            if exc.status == 404:
                self.deleted = True
                self.stop_requested.set()
                return True
            self._publish_retry_at = time.monotonic() + 0.5
            log.warning("pod %s/%s: status update failed (%s); will retry", self.namespace, self.name, exc)
            return False
        if updated.get("metadata", {}).get("uid") not in (None, self.uid):
            return True
        self.pod = {**self.pod, "status": updated.get("status") or status}
        self._published = fingerprint
        return True


def _without_times(status: dict) -> dict:
    copy = dict(status)
    copy["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]]
    return copy


def _keep_transition_times(conditions: list[dict], previous: list[dict]) -> list[dict]:
    before = {c.get("type"): c for c in previous}
    result = []
    for condition in conditions:
        old = before.get(condition["type"])
        if old and old.get("status") == condition["status"] and old.get("lastTransitionTime"):
            condition = {**condition, "lastTransitionTime": old["lastTransitionTime"]}
        result.append(condition)
    return result


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
