"""The Pod Security Standards ``restricted`` profile as a pure function over a pod spec.

``check_restricted(pod_spec)`` returns one line per violation (an empty list means the pod would be
admitted in a namespace labelled ``pod-security.kubernetes.io/enforce: restricted``). It covers every
control of the ``baseline`` profile and the ``restricted`` additions, as the Kubernetes documentation
lists them (https://kubernetes.io/docs/concepts/security/pod-security-standards/), for the latest policy
version. Each line names the field path and the rule, for example::

    spec.containers[trainer].securityContext.allowPrivilegeEscalation: must be false (restricted: Privilege Escalation)

``pod_spec_of(obj)`` finds the pod spec inside a Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job
or CronJob manifest, so tests can feed whatever a chart or a builder produced.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

ALLOWED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
"""Restricted: the only volume sources a pod may use (``name`` is the volume's name, not a source)."""

SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
"""Baseline: the sysctls a pod may set."""

ALLOWED_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
ALLOWED_SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"

_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def pod_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec inside a workload manifest, or ``None`` when the object runs no pods."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in _POD_TEMPLATE_KINDS:
        return spec.get("template", {}).get("spec")
    if kind == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return None


def pod_annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    """The annotations of the pod a workload manifest makes (for the AppArmor annotation check)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        metadata = obj.get("metadata") or {}
    elif kind in _POD_TEMPLATE_KINDS:
        metadata = spec.get("template", {}).get("metadata") or {}
    elif kind == "CronJob":
        metadata = spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("metadata") or {}
    else:
        metadata = {}
    return metadata.get("annotations") or {}


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for list_name in CONTAINER_LISTS:
        for index, container in enumerate(pod_spec.get(list_name) or []):
            name = container.get("name") or str(index)
            yield f"spec.{list_name}[{name}]", container


def check_restricted(
    pod_spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> list[str]:
    """Every way ``pod_spec`` breaks the Pod Security Standards ``restricted`` profile.

    ``annotations`` are the pod's annotations (only the legacy AppArmor ones are checked).
    Returns an empty list for a compliant pod.
    """
    violations: list[str] = []

    def fail(path: str, rule: str, control: str) -> None:
        violations.append(f"{path}: {rule} ({control})")

    pod_sc: Mapping[str, Any] = pod_spec.get("securityContext") or {}

    # Baseline: host namespaces.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            fail(f"spec.{field}", "must be unset or false", "baseline: Host Namespaces")

    # Baseline: HostProcess (Windows).
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        fail("spec.securityContext.windowsOptions.hostProcess", "must be unset or false", "baseline: HostProcess")

    # Baseline: hostPath volumes; restricted: only the listed volume types.
    for index, volume in enumerate(pod_spec.get("volumes") or []):
        name = volume.get("name") or str(index)
        sources = [key for key in volume if key != "name"]
        for source in sources:
            if source == "hostPath":
                fail(f"spec.volumes[{name}].hostPath", "must not be used", "baseline: HostPath Volumes")
            elif source not in ALLOWED_VOLUME_TYPES:
                fail(
                    f"spec.volumes[{name}].{source}",
                    f"volume type not allowed; use one of {sorted(ALLOWED_VOLUME_TYPES)}",
                    "restricted: Volume Types",
                )

    # Baseline: sysctls.
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            fail(
                f"spec.securityContext.sysctls[{sysctl.get('name')}]",
                "not in the safe sysctl set",
                "baseline: Sysctls",
            )

    # Baseline: SELinux and AppArmor at pod level.
    violations.extend(_selinux_violations("spec.securityContext", pod_sc))
    violations.extend(_apparmor_violations("spec.securityContext", pod_sc))
    for key, value in (annotations or {}).items():
        if key.startswith(APPARMOR_ANNOTATION_PREFIX) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            fail(f"metadata.annotations[{key}]", "must be runtime/default or localhost/*", "baseline: AppArmor")

    # Restricted: seccomp at pod level (may instead be set on every container).
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP_TYPES:
        fail("spec.securityContext.seccompProfile.type", "must be RuntimeDefault or Localhost", "restricted: Seccomp")

    # Restricted: non-root at pod level (containers may set it instead, but the pod may not say false).
    if pod_sc.get("runAsNonRoot") is False:
        fail("spec.securityContext.runAsNonRoot", "must be unset or true", "restricted: Running as Non-root")
    # Restricted: non-root user id at pod level.
    if pod_sc.get("runAsUser") == 0:
        fail("spec.securityContext.runAsUser", "must not be 0", "restricted: Running as Non-root user")

    for path, container in _containers(pod_spec):
        sc: Mapping[str, Any] = container.get("securityContext") or {}
        sc_path = f"{path}.securityContext"

        if sc.get("privileged"):
            fail(f"{sc_path}.privileged", "must be unset or false", "baseline: Privileged Containers")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            fail(f"{sc_path}.windowsOptions.hostProcess", "must be unset or false", "baseline: HostProcess")
        if sc.get("procMount") not in (None, "Default"):
            fail(f"{sc_path}.procMount", "must be unset or Default", "baseline: /proc Mount Type")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                fail(
                    f"{path}.ports[{port.get('name') or port.get('containerPort')}].hostPort",
                    "must be unset or 0",
                    "baseline: Host Ports",
                )
        violations.extend(_selinux_violations(sc_path, sc))
        violations.extend(_apparmor_violations(sc_path, sc))

        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{sc_path}.allowPrivilegeEscalation", "must be false", "restricted: Privilege Escalation")

        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            fail(
                f"{sc_path}.runAsNonRoot",
                "must be true (here or in spec.securityContext)",
                "restricted: Running as Non-root",
            )
        if sc.get("runAsUser") == 0:
            fail(f"{sc_path}.runAsUser", "must not be 0", "restricted: Running as Non-root user")

        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in ALLOWED_SECCOMP_TYPES:
            fail(f"{sc_path}.seccompProfile.type", "must be RuntimeDefault or Localhost", "restricted: Seccomp")
        elif seccomp is None and pod_seccomp is None:
            fail(
                f"{sc_path}.seccompProfile.type",
                "must be RuntimeDefault or Localhost (here or in spec.securityContext)",
                "restricted: Seccomp",
            )

        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            fail(f"{sc_path}.capabilities.drop", "must include ALL", "restricted: Capabilities")
        for capability in capabilities.get("add") or []:
            if capability not in ALLOWED_ADDED_CAPABILITIES:
                fail(
                    f"{sc_path}.capabilities.add[{capability}]",
                    "only NET_BIND_SERVICE may be added",
                    "restricted: Capabilities",
                )

    return violations


def _selinux_violations(path: str, security_context: Mapping[str, Any]) -> list[str]:
    options = security_context.get("seLinuxOptions") or {}
    found = []
    if options.get("type", "") not in ALLOWED_SELINUX_TYPES:
        found.append(f"{path}.seLinuxOptions.type: must be one of the container_* types (baseline: SELinux)")
    for field in ("user", "role"):
        if options.get(field):
            found.append(f"{path}.seLinuxOptions.{field}: must be unset (baseline: SELinux)")
    return found


def _apparmor_violations(path: str, security_context: Mapping[str, Any]) -> list[str]:
    profile_type = (security_context.get("appArmorProfile") or {}).get("type")
    if profile_type is not None and profile_type not in ALLOWED_APPARMOR_TYPES:
        return [f"{path}.appArmorProfile.type: must be RuntimeDefault or Localhost (baseline: AppArmor)"]
    return []
