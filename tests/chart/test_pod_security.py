"""The restricted-profile checker itself: a compliant pod passes, and each way of breaking a rule is caught."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.chart.pod_security import check_restricted, pod_annotations_of, pod_spec_of


def compliant_pod() -> dict[str, Any]:
    """A pod spec like the ones this project runs: non-root, read-only, no capabilities, RuntimeDefault seccomp."""
    container_security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [{"name": "setup", "image": "busybox", "securityContext": copy.deepcopy(container_security)}],
        "containers": [
            {
                "name": "trainer",
                "image": "trainer",
                "ports": [{"name": "metrics", "containerPort": 9090}],
                "securityContext": copy.deepcopy(container_security),
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "config", "configMap": {"name": "cfg"}},
            {"name": "credentials", "secret": {"secretName": "storage"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "token", "projected": {"sources": []}},
        ],
    }


def test_a_compliant_pod_has_no_violations() -> None:
    assert check_restricted(compliant_pod()) == []


def test_seccomp_and_non_root_may_be_set_per_container_instead_of_per_pod() -> None:
    pod = compliant_pod()
    del pod["securityContext"]
    assert check_restricted(pod) == []


def test_net_bind_service_is_the_one_capability_that_may_be_added() -> None:
    pod = compliant_pod()
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert check_restricted(pod) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets a dotted path (list items by index) in the pod spec."""

    def mutate(pod: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = pod
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(pod: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = pod
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return mutate


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(pod: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(pod)

    return mutate


BROKEN_PODS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "host network": (_set("hostNetwork", True), "spec.hostNetwork: must be unset or false"),
    "host PID": (_set("hostPID", True), "spec.hostPID"),
    "host IPC": (_set("hostIPC", True), "spec.hostIPC"),
    "hostPath volume": (
        lambda pod: pod["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
        "spec.volumes[root].hostPath: must not be used",
    ),
    "nfs volume": (
        lambda pod: pod["volumes"].append({"name": "share", "nfs": {"server": "nfs", "path": "/"}}),
        "spec.volumes[share].nfs: volume type not allowed",
    ),
    "privileged container": (_set("containers.0.securityContext.privileged", True), "privileged: must be unset or false"),
    "privilege escalation allowed": (
        _set("containers.0.securityContext.allowPrivilegeEscalation", True),
        "spec.containers[trainer].securityContext.allowPrivilegeEscalation: must be false",
    ),
    "privilege escalation unset": (
        _delete("initContainers.0.securityContext.allowPrivilegeEscalation"),
        "spec.initContainers[setup].securityContext.allowPrivilegeEscalation: must be false",
    ),
    "runAsNonRoot false on a container": (
        _set("containers.0.securityContext.runAsNonRoot", False),
        "spec.containers[trainer].securityContext.runAsNonRoot: must be true",
    ),
    "runAsNonRoot nowhere": (
        _both(_delete("securityContext.runAsNonRoot"), _delete("containers.0.securityContext.runAsNonRoot")),
        "spec.containers[trainer].securityContext.runAsNonRoot: must be true",
    ),
    "runAsNonRoot false on the pod": (
        _set("securityContext.runAsNonRoot", False),
        "spec.securityContext.runAsNonRoot: must be unset or true",
    ),
    "root user on the pod": (_set("securityContext.runAsUser", 0), "spec.securityContext.runAsUser: must not be 0"),
    "root user on a container": (
        _set("containers.0.securityContext.runAsUser", 0),
        "spec.containers[trainer].securityContext.runAsUser: must not be 0",
    ),
    "capabilities not dropped": (
        _delete("containers.0.securityContext.capabilities"),
        "spec.containers[trainer].securityContext.capabilities.drop: must include ALL",
    ),
    "capability added": (
        _set("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]),
        "capabilities.add[SYS_ADMIN]: only NET_BIND_SERVICE may be added",
    ),
    "seccomp unconfined on the pod": (
        _set("securityContext.seccompProfile", {"type": "Unconfined"}),
        "spec.securityContext.seccompProfile.type: must be RuntimeDefault or Localhost",
    ),
    "seccomp unconfined on a container": (
        _set("containers.0.securityContext.seccompProfile", {"type": "Unconfined"}),
        "spec.containers[trainer].securityContext.seccompProfile.type: must be RuntimeDefault or Localhost",
    ),
    "seccomp nowhere": (
        _both(_delete("securityContext.seccompProfile"), _delete("containers.0.securityContext.seccompProfile")),
        "spec.containers[trainer].securityContext.seccompProfile.type: must be RuntimeDefault or Localhost",
    ),
    "host port": (_set("containers.0.ports.0.hostPort", 9090), "spec.containers[trainer].ports[metrics].hostPort"),
    "unsafe sysctl": (
        _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
        "spec.securityContext.sysctls[kernel.msgmax]: not in the safe sysctl set",
    ),
    "unmasked /proc": (_set("containers.0.securityContext.procMount", "Unmasked"), "procMount: must be unset or Default"),
    "custom SELinux type": (
        _set("securityContext.seLinuxOptions", {"type": "spc_t"}),
        "spec.securityContext.seLinuxOptions.type",
    ),
    "SELinux user": (
        _set("containers.0.securityContext.seLinuxOptions", {"user": "system_u"}),
        "seLinuxOptions.user: must be unset",
    ),
    "AppArmor unconfined": (
        _set("containers.0.securityContext.appArmorProfile", {"type": "Unconfined"}),
        "appArmorProfile.type: must be RuntimeDefault or Localhost",
    ),
    "Windows host process": (
        _set("securityContext.windowsOptions", {"hostProcess": True}),
        "spec.securityContext.windowsOptions.hostProcess",
    ),
    "ephemeral debug container without a security context": (
        lambda pod: pod.setdefault("ephemeralContainers", []).append({"name": "debug", "image": "busybox"}),
        "spec.ephemeralContainers[debug].securityContext.allowPrivilegeEscalation: must be false",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_PODS))
def test_each_broken_rule_is_reported_with_its_field(case: str) -> None:
    mutate, expected = BROKEN_PODS[case]
    pod = compliant_pod()
    mutate(pod)
    violations = check_restricted(pod)
    assert any(expected in line for line in violations), f"{case}: {expected!r} not in {violations}"


def test_a_pod_breaking_one_rule_reports_only_that_rule() -> None:
    pod = compliant_pod()
    pod["hostNetwork"] = True
    assert check_restricted(pod) == ["spec.hostNetwork: must be unset or false (baseline: Host Namespaces)"]


def test_legacy_apparmor_annotation_is_checked() -> None:
    bad = {"container.apparmor.security.beta.kubernetes.io/trainer": "unconfined"}
    good = {"container.apparmor.security.beta.kubernetes.io/trainer": "runtime/default"}
    assert check_restricted(compliant_pod(), bad) == [
        "metadata.annotations[container.apparmor.security.beta.kubernetes.io/trainer]: "
        "must be runtime/default or localhost/* (baseline: AppArmor)"
    ]
    assert check_restricted(compliant_pod(), good) == []


def test_pod_spec_is_found_in_every_workload_kind() -> None:
    pod = compliant_pod()
    template = {"metadata": {"annotations": {"a": "b"}}, "spec": pod}
    workloads = {
        "Pod": {"kind": "Pod", "metadata": {"annotations": {"a": "b"}}, "spec": pod},
        "Deployment": {"kind": "Deployment", "spec": {"template": template}},
        "StatefulSet": {"kind": "StatefulSet", "spec": {"template": template}},
        "Job": {"kind": "Job", "spec": {"template": template}},
        "CronJob": {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": template}}}},
    }
    for kind, obj in workloads.items():
        assert pod_spec_of(obj) is pod, kind
        assert pod_annotations_of(obj) == {"a": "b"}, kind
    assert pod_spec_of({"kind": "ConfigMap", "data": {}}) is None
