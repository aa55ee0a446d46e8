"""The node part of the local runner in kubelet mode: a registered Node, its heartbeat, and binding.

Against a cluster whose kube-controller-manager runs (the Job, ReplicaSet and Deployment controllers,
the garbage collector, the node lifecycle and endpoints controllers), the runner plays only what has no
process here: the scheduler (it binds each pending pod in scope to its Node, through the ``binding``
subresource as kube-scheduler does) and the kubelet (it registers the Node, keeps its Lease in
``kube-node-lease`` renewed so the node lifecycle controller sees it alive, runs the pods bound to it and
writes their status; ``status.qosClass`` is the API server's, set at creation and never written here).
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
import uuid
from typing import Any

import kubernetes

from finetune_local.runner_kube import Kube, KubeError, now_iso

log = logging.getLogger("finetune_local.runner")

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
"""The kubelet renews its Lease every 10 s (a quarter of its 40 s duration)."""
NODE_STATUS_SECONDS = 60.0
"""How often the Ready condition's heartbeat time is refreshed (the kubelet: at most every 5 minutes)."""
NODE_ADDRESS = "127.0.0.1"
KUBELET_VERSION = "v1.36.2-local"


def _micro_now() -> str:
    """RFC 3339 with microseconds, as a Lease's renewTime wants it (MicroTime)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 1_000_000:06d}Z"


class NodeAgent:
    """Registers ``node_name``, heartbeats until ``stop()``, binds pods to it, and deregisters."""

    def __init__(self, kube: Kube, node_name: str, stopping: threading.Event, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> None:
        self.kube = kube
        self.heartbeat_seconds = heartbeat_seconds
        self.node_name = node_name
        self.stopping = stopping
        self.core = kubernetes.client.CoreV1Api(kube.api_client)
        self.coordination = kubernetes.client.CoordinationV1Api(kube.api_client)
        self._thread = threading.Thread(target=self._heartbeat, name="node-heartbeat", daemon=True)
        self._last_status = 0.0
        self.registered = False

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.register()
        self._thread.start()

    def stop(self, deregister: bool = True) -> None:
        """Stop the heartbeat; with ``deregister`` delete the Node (its pods' processes are gone with it)."""
        if self._thread.is_alive():
            self._thread.join(self.heartbeat_seconds + 5)
        if deregister and self.registered:
            try:
                self.kube._call(self.core.delete_node, self.node_name)
                self.kube._call(self.coordination.delete_namespaced_lease, self.node_name, LEASE_NAMESPACE)
            except KubeError as exc:
                if exc.status != 404:
                    log.warning("node %s: could not deregister (%s)", self.node_name, exc)

    def register(self) -> None:
        """Create the Node (or take over one of that name) and report it Ready."""
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": _architecture(),
                    "node.finetune.dev/local-runner": "true",
                },
            },
            "spec": {},
        }
        try:
            self.kube._call(self.core.create_node, node)
        except KubeError as exc:
            if exc.status != 409:
                raise
        self.report_status()
        self.renew_lease()
        self.registered = True
        log.info("node %s registered", self.node_name)

    # status ------------------------------------------------------------------------------------

    def node_status(self) -> dict[str, Any]:
        now = now_iso()
        cpus = str(os.cpu_count() or 1)
        memory = f"{_memory_kib()}Ki"
        resources = {"cpu": cpus, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}

        def condition(kind: str, ready: bool, reason: str, message: str) -> dict[str, str]:
            return {"type": kind, "status": "True" if ready else "False", "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": now}  # fmt: skip

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", False, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", False, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", False, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", True, "KubeletReady", "the local runner is running pods as processes"),
            ],
            "addresses": [{"type": "InternalIP", "address": NODE_ADDRESS}, {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name)),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": platform.release(),
                "osImage": "finetune local runner",
                "containerRuntimeVersion": "local://processes",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _architecture(),
            },
        }

    def report_status(self) -> None:
        status = self.node_status()
        current = self.kube._call(self.core.read_node_status, self.node_name)
        before = {c.get("type"): c for c in (current.get("status") or {}).get("conditions") or []}
        for c in status["conditions"]:  # a transition time changes only with the status
            old = before.get(c["type"])
            if old and old.get("status") == c["status"] and old.get("lastTransitionTime"):
                c["lastTransitionTime"] = old["lastTransitionTime"]
        self.kube._call(self.core.patch_node_status, self.node_name, {"status": status}, _content_type="application/merge-patch+json")
        self._last_status = time.monotonic()

    def renew_lease(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": LEASE_NAMESPACE},
            "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": _micro_now()},
        }
        try:
            self.kube._call(self.coordination.patch_namespaced_lease, self.node_name, LEASE_NAMESPACE,
                            {"spec": body["spec"]}, _content_type="application/merge-patch+json")  # fmt: skip
        except KubeError as exc:
            if exc.status != 404:
                raise
            self.kube._call(self.coordination.create_namespaced_lease, LEASE_NAMESPACE, body)

    def _heartbeat(self) -> None:
        while not self.stopping.wait(self.heartbeat_seconds):
            try:
                self.renew_lease()
                if time.monotonic() - self._last_status > NODE_STATUS_SECONDS:
                    self.report_status()
            except KubeError as exc:
                if exc.status == 404:  # someone deleted the Node: register again, as a kubelet would
                    try:
                        self.register()
                    except KubeError as again:
                        log.warning("node %s: could not register again (%s)", self.node_name, again)
                else:
                    log.warning("node %s: heartbeat failed (%s); retrying", self.node_name, exc)

    # scheduling --------------------------------------------------------------------------------

    def bind(self, pod: dict) -> bool:
        """Bind a pending pod to this node (the scheduler's ``pods/binding``); False when it was not."""
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.kube._call(self.core.create_namespaced_pod_binding, meta["name"], meta["namespace"], body)
        except KubeError as exc:
            if exc.status in (404, 409):  # gone, or bound already (by us or another scheduler)
                return False
            raise
        return True


def _architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _memory_kib() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 8 * 1024 * 1024
