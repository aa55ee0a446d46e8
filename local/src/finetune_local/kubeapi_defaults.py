"""The defaults the real API server fills into built-in kinds (pods and pod templates, Deployments,
Services), so that what a client reads back looks like what a cluster returns."""

from __future__ import annotations

from typing import Any


def _image_pull_policy(image: str) -> str:
    """`Always` for `:latest` or untagged images, `IfNotPresent` otherwise (as the real defaulting does)."""
    if "@" in image:
        return "IfNotPresent"
    last_part = image.rsplit("/", 1)[-1]
    if ":" not in last_part or last_part.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def default_container(container: dict[str, Any]) -> None:
    if not isinstance(container, dict):
        return
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    if isinstance(container.get("image"), str):
        container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def default_pod_spec(spec: dict[str, Any]) -> None:
    """Defaults of a PodSpec, in a pod or in a template (Job, Deployment)."""
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for field in ("containers", "initContainers"):
        for container in spec.get(field) or []:
            default_container(container)


def default_pod(pod: dict[str, Any]) -> None:
    """A bare pod also gets the `default` service account (the ServiceAccount admission plugin does that)."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return
    default_pod_spec(spec)
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)


def default_template(spec: dict[str, Any]) -> None:
    """Defaults of `spec.template.spec` of a workload."""
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        default_pod_spec(template["spec"])


def default_deployment(spec: dict[str, Any]) -> None:
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault("strategy", {"type": "RollingUpdate",
                                 "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
    default_template(spec)


def default_service(spec: dict[str, Any], old_spec: dict[str, Any] | None, allocate_ip: Any) -> None:
    """Type ClusterIP, an allocated cluster IP (kept across updates; `None` means headless), port defaults."""
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if old_spec and old_spec.get("clusterIP") and not spec.get("clusterIP"):
        spec["clusterIP"] = old_spec["clusterIP"]
    if spec.get("type") != "ExternalName" and not spec.get("clusterIP"):
        spec["clusterIP"] = allocate_ip()
    if spec.get("clusterIP"):
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])


def pod_qos_class(spec: dict[str, Any]) -> str:
    """The pod's quality-of-service class, as the API server sets ``status.qosClass`` at creation.

    Guaranteed: every container has cpu and memory limits and its requests (defaulted to the limits)
    equal them; BestEffort: no container requests or limits anything; Burstable: anything else.
    """
    containers = [c for field in ("containers", "initContainers") for c in spec.get(field) or [] if isinstance(c, dict)]
    any_set = False
    guaranteed = bool(containers)
    for container in containers:
        resources = container.get("resources") or {}
        limits = {k: str(v) for k, v in (resources.get("limits") or {}).items() if k in ("cpu", "memory")}
        requests = {k: str(v) for k, v in (resources.get("requests") or {}).items() if k in ("cpu", "memory")}
        if limits or requests:
            any_set = True
        if set(limits) != {"cpu", "memory"} or any(requests.get(k, limits[k]) != limits[k] for k in limits):
            guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
