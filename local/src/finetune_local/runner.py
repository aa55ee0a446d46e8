"""The local runner: a cluster's nodes and its Job and Deployment controllers, on one machine.

It watches batch/v1 Jobs, apps/v1 Deployments, Services and Pods through the Kubernetes API (all
namespaces, or one) and plays

* the Job controller (``runner_jobs``) and the Deployment controller (``runner_deployments``): they
  create Pod objects and write Job / Deployment status as kube-controller-manager would;
* the kubelet (``runner_pods``): every pod in scope runs as local processes, one process group per
  container, with its own loopback IP (``127.x.y.z``) as ``status.podIP``;
* kube-proxy and cluster DNS (``runner_services``): a TCP proxy per Service port on 127.0.0.1, and
  service / pod DNS names rewritten to local addresses when a pod starts;
* the garbage collector, for the pods of Jobs and Deployments that are gone.

With ``kubelet_only=True`` (``--kubelet-only``), for a cluster whose kube-controller-manager runs, it
plays only the scheduler and the kubelet (``runner_node``): it registers a Node, binds pending pods to
it and runs them; the real Job, Deployment and garbage-collector controllers do the rest.

Use it from the command line::

    python -m finetune_local.runner --kubeconfig kubeconfig.yaml [--namespace NS] [--show-logs]

or in-process::

    runner = LocalRunner(kubeconfig="kubeconfig.yaml", work_dir=tmp)
    runner.start()
    ...
    runner.stop()   # ends every process it started and removes every per-pod folder
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import kubernetes

from finetune_local.runner_deployments import DeploymentController
from finetune_local.runner_jobs import JobController, controller_uid
from finetune_local.runner_kube import (
    DEPLOYMENTS,
    JOBS,
    PODS,
    SERVICES,
    Informer,
    Kube,
    KubeError,
    now_iso,
)
from finetune_local.runner_node import NodeAgent
from finetune_local.runner_pods import KubeletContext, PodWorker
from finetune_local.runner_services import (
    ADDRESS_ANNOTATION,
    AddressBook,
    PortProxy,
    ServiceProxies,
    deterministic_pod_ip,
    pod_is_ready,
    selector_matches,
    target_port,
)

log = logging.getLogger("finetune_local.runner")

RUNNER_ANNOTATION = "local.finetune.dev/runner"
DEFAULT_NODE_NAME = "local-runner"
DEFAULT_GRACE_PERIOD_CAP_SECONDS = 10.0
RESYNC_SECONDS = 0.5


class LocalRunner:
    """Runs the workloads of a Kubernetes API server as local processes; ``start()`` / ``stop()``.

    ``kubeconfig`` (a path) or ``api_client`` (its configuration is reused with a client of the
    runner's own) says which API server. ``namespace`` limits the runner to one namespace.
    ``work_dir`` holds the per-pod folders (removed as pods end) and the container logs (kept); a
    temporary folder when not given. ``grace_period_cap`` caps ``terminationGracePeriodSeconds``.
    ``kubelet_only`` leaves Jobs, Deployments and garbage to a running kube-controller-manager: the
    runner registers the Node ``node_name`` (``local-runner-<id>`` by default), binds pods to it and runs them.
    """

    def __init__(
        self,
        kubeconfig: str | os.PathLike[str] | None = None,
        *,
        api_client: kubernetes.client.ApiClient | None = None,
        namespace: str | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        show_logs: bool = False,
        grace_period_cap: float = DEFAULT_GRACE_PERIOD_CAP_SECONDS,
        node_name: str | None = None,
        extra_path: list[str] | tuple[str, ...] = (),
        kubelet_only: bool = False,
        node_heartbeat_seconds: float = 10.0,
    ) -> None:
        self._kubeconfig = str(kubeconfig) if kubeconfig is not None else None
        self._api_client = api_client
        self.namespace = namespace
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="finetune-runner-"))
        self.show_logs = show_logs
        self.grace_period_cap = grace_period_cap
        self.extra_path = list(extra_path)
        """Folders put first on every container's PATH (e.g. a stand-in for an image's program)."""
        self.runner_id = uuid.uuid4().hex[:12]
        self.kubelet_only = kubelet_only
        self.node_name = node_name or (f"{DEFAULT_NODE_NAME}-{self.runner_id[:8]}" if kubelet_only else DEFAULT_NODE_NAME)
        self.node: NodeAgent | None = None
        self.node_heartbeat_seconds = node_heartbeat_seconds
        self.started_process_groups: list[int] = []
        """Every process group id this runner started (for checks that nothing outlives it)."""
        self._stopping = threading.Event()
        self._stopped = False
        self._wake = threading.Event()
        self._workers: dict[str, PodWorker] = {}
        self._finished_pods: set[str] = set()
        self._removed_pods: set[str] = set()
        self._finalised_pods: set[str] = set()
        self._lost_pods: set[str] = set()
        self._bound_pods: set[str] = set()
        self._proxies: dict[str, ServiceProxies] = {}
        self._addresses = AddressBook(lambda namespace, name: self.services.get(namespace, name))
        self._ips_in_use: set[str] = set()
        self._ip_base = random.randint(16, 250)
        self._ip_counter = 0
        self._lock = threading.Lock()
        self._last_errors: dict[str | None, str] = {}
        self._thread: threading.Thread | None = None
        self.kube: Kube | None = None

    # lifecycle ---------------------------------------------------------------------------------

    def start(self, wait_synced: float = 10.0) -> LocalRunner:
        """Start watching and running, in background threads; returns once the caches are filled."""
        (self.work_dir / "pods").mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.work_dir, 0o700)
        if self._api_client is not None:
            configuration = copy.copy(self._api_client.configuration)
        else:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(config_file=self._kubeconfig, client_configuration=configuration)
        # four watches hold a connection each; pod workers write statuses side by side
        configuration.connection_pool_maxsize = 32
        self.kube = Kube(kubernetes.client.ApiClient(configuration))
        annotations = {RUNNER_ANNOTATION: self.runner_id}
        self.jobs = JobController(
            self._create_pod, self._delete_pod, self._patch_job_status, self._is_removed, annotations, self._delete_job
        )
        self.deployments = DeploymentController(
            self._create_pod, self._delete_pod, self._patch_deployment_status, self._is_removed, annotations
        )
        self.kubelet = KubeletContext(
            kube=self.kube,
            node_name=self.node_name,
            work_dir=self.work_dir,
            grace_period_cap=self.grace_period_cap,
            show_logs=self.show_logs,
            rewrite_addresses=self._addresses.rewrite,
            service_environment=self._addresses.service_environment,
            record_process=self.started_process_groups.append,
            extra_path=self.extra_path,
        )
        on_change = lambda kind, obj: self._wake.set()  # noqa: E731
        if self.kubelet_only:
            self.node = NodeAgent(self.kube, self.node_name, self._stopping, self.node_heartbeat_seconds)
            self.node.start()
        self.pods = Informer(self.kube, PODS, self.namespace, on_change, self._stopping)
        self.job_cache = Informer(self.kube, JOBS, self.namespace, on_change, self._stopping)
        self.deployment_cache = Informer(self.kube, DEPLOYMENTS, self.namespace, on_change, self._stopping)
        self.services = Informer(self.kube, SERVICES, self.namespace, on_change, self._stopping)
        self._informers = [self.pods, self.services]
        if not self.kubelet_only:  # in kubelet mode the cluster's own controllers own Jobs and Deployments
            self._informers += [self.job_cache, self.deployment_cache]
        for informer in self._informers:
            informer.start()
        deadline = time.monotonic() + wait_synced
        for informer in self._informers:
            informer.synced.wait(max(0.0, deadline - time.monotonic()))
        self._thread = threading.Thread(target=self._loop, name="local-runner", daemon=True)
        self._thread.start()
        log.info("local runner %s started (work dir %s)", self.runner_id, self.work_dir)
        return self

    def stop(self) -> None:
        """Stop every pod's processes (SIGTERM, then SIGKILL), every proxy and watch; remove pod folders.

        Idempotent; a stopped runner does not start again (make a new one).
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            if self.kubelet_only:  # the node is going away: report each pod ended, as a kubelet's node shutdown does
                worker.request_stop(node_shutdown=True)
            else:  # the runner is going away: no more status writes
                worker.request_stop(deleted=True)
        for worker in workers:
            worker.join(self.grace_period_cap + 10)
        for worker in workers:
            if not worker.finished.is_set():  # stuck (a hung probe, an unresponsive API): end its processes anyway
                log.warning("pod %s/%s did not stop in time; killing its processes", worker.namespace, worker.name)
                worker.kill_processes()
        for entry in self._proxies.values():
            for proxy in entry.proxies.values():
                proxy.close()
        self._proxies.clear()
        for informer in getattr(self, "_informers", []):
            informer.stop()
        for informer in getattr(self, "_informers", []):
            informer.join(2)
        if self.node is not None:
            self.node.stop(deregister=True)
        shutil.rmtree(self.work_dir / "pods", ignore_errors=True)
        if self._own_work_dir and not any((self.work_dir / "logs").glob("*")):
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.kube is not None:
            self.kube.close()
        log.info("local runner %s stopped", self.runner_id)

    def __enter__(self) -> LocalRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_path(self, pod_name: str, container: str, namespace: str = "default") -> Path:
        """Where a container's stdout and stderr are kept."""
        return self.work_dir / "logs" / f"{namespace}_{pod_name}_{container}.log"

    def pod_log(self, namespace: str, pod_name: str, container: str | None = None) -> str | None:
        """A container's output so far (the first container's when none is named), or None.

        Has the signature of the API test server's ``log_provider``, so ``kubectl logs`` can show it.
        """
        if container is None:
            candidates = sorted((self.work_dir / "logs").glob(f"{namespace}_{pod_name}_*.log"))
            if not candidates:
                return None
            path = candidates[0]
        else:
            path = self.log_path(pod_name, container, namespace)
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    # the loop ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.wait(RESYNC_SECONDS)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._sync()
                failures = 0
            except KubeError as exc:
                failures += 1
                log.warning("sync failed (%s); retrying", exc)
                self._stopping.wait(min(0.2 * 2**failures, 5.0))
            except Exception:  # noqa: BLE001 - the loop must survive anything a single object does
                failures += 1
                log.exception("sync failed; retrying")
                self._stopping.wait(min(0.2 * 2**failures, 5.0))

    def _sync(self) -> None:
        self._sync_services()
        if self.kubelet_only:
            self._schedule(self.pods.items())
            self._sync_pods(self.pods.items())
            return
        synced = all(informer.synced.is_set() for informer in self._informers)
        pods = self.pods.items()
        by_owner: dict[str, list[dict]] = {}
        for pod in pods:
            owner = controller_uid(pod)
            if owner:
                by_owner.setdefault(owner, []).append(pod)
        live_owners = set()
        for job in self.job_cache.items():
            live_owners.add(job["metadata"]["uid"])
            self._guarded(self.jobs.sync, job, by_owner.get(job["metadata"]["uid"], []))
        for deployment in self.deployment_cache.items():
            live_owners.add(deployment["metadata"]["uid"])
            self._guarded(self.deployments.sync, deployment, by_owner.get(deployment["metadata"]["uid"], []))
        for job_uid in list(self.jobs.memory):
            if job_uid not in live_owners:
                self.jobs.forget(job_uid)
        if synced:
            self._collect_garbage(pods, live_owners)
        self._sync_pods(self.pods.items())

    def _guarded(self, sync, obj: dict, pods: list[dict]) -> None:
        """Sync one Job or Deployment; an API error is logged (once per distinct error) and retried."""
        meta = obj["metadata"]
        try:
            sync(obj, pods)
        except KubeError as exc:
            if self._last_errors.get(meta.get("uid")) != str(exc):
                self._last_errors[meta.get("uid")] = str(exc)
                log.warning("%s %s/%s: %s; will retry", obj.get("kind", ""), meta.get("namespace"), meta.get("name"), exc)
        else:
            self._last_errors.pop(meta.get("uid"), None)

    def _collect_garbage(self, pods: list[dict], live_owners: set[str]) -> None:
        """Delete the pods of Jobs and Deployments that no longer exist (no garbage collector here)."""
        for pod in pods:
            for ref in pod["metadata"].get("ownerReferences") or []:
                if ref.get("kind") in ("Job", "Deployment") and ref.get("controller") and ref.get("uid") not in live_owners:
                    if pod["metadata"]["uid"] not in self._removed_pods:
                        self._delete_pod(pod)

    # pods: the scheduler's part (kubelet mode) -------------------------------------------------

    def _schedule(self, pods: list[dict]) -> None:
        """Bind each pending, unbound pod in scope to this runner's Node, as kube-scheduler would."""
        assert self.node is not None
        for pod in pods:
            meta, spec = pod["metadata"], pod.get("spec") or {}
            if spec.get("nodeName") or meta.get("deletionTimestamp") or meta["uid"] in self._bound_pods:
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if (spec.get("schedulerName") or "default-scheduler") != "default-scheduler":
                continue  # another scheduler's pod
            if spec.get("schedulingGates"):
                continue
            try:
                if self.node.bind(pod):
                    self._bound_pods.add(meta["uid"])
            except KubeError as exc:
                log.warning("pod %s/%s: could not bind it to %s (%s); will retry", meta["namespace"], meta["name"], self.node_name, exc)

    # pods: the kubelet's part ------------------------------------------------------------------

    def _sync_pods(self, pods: list[dict]) -> None:
        by_uid = {pod["metadata"]["uid"]: pod for pod in pods}
        with self._lock:
            workers = dict(self._workers)
        for uid, worker in workers.items():
            pod = by_uid.get(uid)
            if pod is None:
                worker.request_stop(deleted=True)
            elif pod["metadata"].get("deletionTimestamp") or uid in self._removed_pods:
                worker.request_stop(grace_seconds=pod["metadata"].get("deletionGracePeriodSeconds"))
            if worker.finished.is_set():
                with self._lock:
                    self._workers.pop(uid, None)
                    self._ips_in_use.discard(worker.pod_ip)
                self._finished_pods.add(uid)
        for uid, pod in by_uid.items():
            meta, spec = pod["metadata"], pod.get("spec") or {}
            phase = (pod.get("status") or {}).get("phase")
            if uid in self._workers:
                continue
            if spec.get("nodeName") != self.node_name and (spec.get("nodeName") or self.kubelet_only):
                continue  # bound to another node, or (kubelet mode) not yet bound: not ours
            if meta.get("deletionTimestamp"):
                if uid not in self._finalised_pods:
                    self._finalised_pods.add(uid)
                    self.kube.delete(PODS, meta["namespace"], meta["name"], grace_period_seconds=0, uid=uid)
                continue
            if uid in self._finished_pods or phase in ("Succeeded", "Failed") or uid in self._removed_pods:
                continue
            owner = (meta.get("annotations") or {}).get(RUNNER_ANNOTATION)
            if owner and owner != self.runner_id:
                self._mark_lost(pod)
                continue
            if owner is None:
                try:
                    self.kube.patch(PODS, meta["namespace"], meta["name"], {"metadata": {"annotations": {RUNNER_ANNOTATION: self.runner_id}}})
                except KubeError as exc:
                    log.warning("pod %s/%s: could not claim it (%s)", meta["namespace"], meta["name"], exc)
                    continue
            worker = PodWorker(self.kubelet, pod, self._allocate_ip(pod))
            with self._lock:
                self._workers[uid] = worker
            worker.start()

    def _mark_lost(self, pod: dict) -> None:
        """A pod a previous runner started: its processes are gone, so it failed, disrupted.

        Like the pod garbage collector with a pod whose node is gone: phase Failed and a
        ``DisruptionTarget`` condition, so a Job's ``podFailurePolicy`` can ignore the failure.
        """
        uid = pod["metadata"]["uid"]
        if uid in self._lost_pods:
            return
        now = now_iso()
        message = "the local runner that ran this pod stopped"
        conditions = [
            c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") not in ("DisruptionTarget", "Ready")
        ] + [
            {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC", "message": message,
             "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
        ]
        status = {"phase": "Failed", "reason": "NodeLost", "message": message, "conditions": conditions}
        self.kube.patch(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], {"status": status}, status=True)
        self._lost_pods.add(uid)

    def _allocate_ip(self, pod: dict) -> str:
        spec, meta = pod.get("spec") or {}, pod["metadata"]
        with self._lock:
            if spec.get("hostname") and spec.get("subdomain"):
                ip = deterministic_pod_ip(meta.get("namespace") or "default", spec["subdomain"], spec["hostname"])
            else:
                while True:
                    self._ip_counter += 1
                    high, low = divmod(self._ip_counter, 254)
                    ip = f"127.{self._ip_base}.{high % 256}.{low + 1}"
                    if ip not in self._ips_in_use:
                        break
            self._ips_in_use.add(ip)
            return ip

    def _create_pod(self, pod: dict) -> None:
        namespace = pod["metadata"]["namespace"]
        for _ in range(3):
            try:
                created = self.kube.create(PODS, namespace, pod)
            except KubeError as exc:
                if exc.status == 409:  # the random name was taken: draw another
                    pod["metadata"]["name"] = pod["metadata"]["generateName"][:58] + uuid.uuid4().hex[:5]
                    continue
                raise
            self.pods.put(created)
            pod.clear()
            pod.update(created)
            return

    def _delete_pod(self, pod: dict) -> None:
        meta = pod["metadata"]
        uid = meta.get("uid")
        if not uid or uid in self._removed_pods:
            return
        self.kube.delete(PODS, meta["namespace"], meta["name"], uid=uid)  # raises: retried on the next sync
        self._removed_pods.add(uid)
        with self._lock:
            worker = self._workers.get(uid)
        if worker is not None:
            worker.request_stop()

    def _delete_job(self, job: dict) -> None:
        meta = job["metadata"]
        self.kube.delete(JOBS, meta["namespace"], meta["name"], uid=meta["uid"])
        self.job_cache.forget(job)

    def _is_removed(self, uid: str) -> bool:
        return uid in self._removed_pods

    def _patch_job_status(self, job: dict, status: dict) -> None:
        meta = job["metadata"]
        updated = self.kube.patch(JOBS, meta["namespace"], meta["name"], {"status": status}, status=True)
        if updated.get("metadata", {}).get("uid") == meta.get("uid"):
            self.job_cache.put(updated)

    def _patch_deployment_status(self, deployment: dict, status: dict) -> None:
        meta = deployment["metadata"]
        updated = self.kube.patch(DEPLOYMENTS, meta["namespace"], meta["name"], {"status": status}, status=True)
        if updated.get("metadata", {}).get("uid") == meta.get("uid"):
            self.deployment_cache.put(updated)

    # services: kube-proxy's and DNS's part -----------------------------------------------------

    def _sync_services(self) -> None:
        services = self.services.items()
        live = set()
        for service in services:
            meta, spec = service["metadata"], service.get("spec") or {}
            if spec.get("clusterIP") == "None" or not spec.get("selector") or meta.get("deletionTimestamp"):
                continue
            uid = meta["uid"]
            live.add(uid)
            ports = {int(p["port"]): p.get("name") or "" for p in spec.get("ports") or []}
            entry = self._proxies.get(uid)
            if entry is not None and entry.port_names != ports:
                for proxy in entry.proxies.values():
                    proxy.close()
                entry = None
            if entry is None:
                entry = ServiceProxies(
                    uid=uid,
                    namespace=meta.get("namespace") or "default",
                    name=meta["name"],
                    proxies={
                        number: PortProxy(f"{meta['name']}:{number}", self._endpoints(meta.get("namespace") or "default", meta["name"], number), self._stopping)
                        for number in ports
                    },
                    port_names=ports,
                )
                self._proxies[uid] = entry
            wanted = entry.annotations()
            current = meta.get("annotations") or {}
            if any(current.get(k) != v for k, v in wanted.items()):
                try:
                    updated = self.kube.patch(SERVICES, entry.namespace, entry.name, {"metadata": {"annotations": wanted}})
                    self.services.put(updated)
                except KubeError as exc:
                    log.warning("service %s/%s: could not annotate it (%s)", entry.namespace, entry.name, exc)
        for uid in list(self._proxies):
            if uid not in live:
                for proxy in self._proxies.pop(uid).proxies.values():
                    proxy.close()
        self._addresses.update(services, self._proxies)

    def _endpoints(self, namespace: str, name: str, port_number: int):
        def endpoints() -> list[tuple[str, int]]:
            service = self.services.get(namespace, name)
            if service is None:
                return []
            spec = service.get("spec") or {}
            port = next((p for p in spec.get("ports") or [] if int(p["port"]) == port_number), None)
            if port is None:
                return []
            result = []
            for pod in self.pods.items():
                if (pod["metadata"].get("namespace") or "default") != namespace:
                    continue
                if not selector_matches(spec.get("selector") or {}, pod["metadata"].get("labels")):
                    continue
                status = pod.get("status") or {}
                if not status.get("podIP"):
                    continue
                if not (pod_is_ready(pod) or spec.get("publishNotReadyAddresses") and status.get("phase") == "Running"):
                    continue
                number = target_port(pod, port)
                if number is not None:
                    result.append((status["podIP"], number))
            return result

        return endpoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_local.runner",
        description="Run a Kubernetes API server's Jobs, Deployments and Pods as local processes.",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file of the API server (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--namespace", "-n", help="watch only this namespace (default: all namespaces)")
    parser.add_argument("--work-dir", help="where per-pod folders and container logs go (default: a temporary folder)")
    parser.add_argument("--show-logs", action="store_true", help="also print every container's output, prefixed")
    parser.add_argument("--grace-period-cap", type=float, default=DEFAULT_GRACE_PERIOD_CAP_SECONDS,
                        help="cap on terminationGracePeriodSeconds, in seconds (default: %(default)s)")
    parser.add_argument("--kubelet-only", action="store_true",
                        help="for a cluster whose kube-controller-manager runs: register a Node, bind pods to it and "
                             "run them; leave Jobs, Deployments and garbage collection to the cluster")
    parser.add_argument("--node-name", help="the Node to register in kubelet mode (default: local-runner-<id>)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    runner = LocalRunner(
        args.kubeconfig,
        namespace=args.namespace,
        work_dir=args.work_dir,
        show_logs=args.show_logs,
        grace_period_cap=args.grace_period_cap,
        kubelet_only=args.kubelet_only,
        node_name=args.node_name,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    runner.start()
    print(f"local runner started; work dir {runner.work_dir}", file=sys.stderr, flush=True)
    try:
        done.wait()
    finally:
        runner.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ADDRESS_ANNOTATION", "LocalRunner", "RUNNER_ANNOTATION", "main"]
