"""What a pod sees of the file system and its environment, made real on one machine without containers.

* ``materialise_volumes`` writes every volume a pod declares (configMap, secret, emptyDir, downwardAPI,
  projected, hostPath, persistentVolumeClaim) into the pod's private folder.
* ``PathMap`` remaps the in-container paths a spec names (``volumeMounts[].mountPath``, with ``subPath``,
  ``terminationMessagePath``, ``workingDir``) to those local folders, wherever they occur as a path
  prefix in a piece of text.
* ``expand_references`` does the kubelet's ``$(VAR)`` expansion; ``container_environment`` builds a
  container's environment (``env`` with ``value`` / ``valueFrom``, ``envFrom``) the way the kubelet does.

Secret values are written to files with mode 0600 and passed in the environment; they are never logged,
never remapped and never part of an error message.
"""

from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_local.runner_kube import CONFIG_MAPS, SECRETS, Kube, KubeError


class PodConfigError(Exception):
    """Something the pod references does not exist (yet): a ConfigMap, a Secret, a key.

    The pod waits (``ContainerCreating`` / ``CreateContainerConfigError``) and the runner retries,
    as the kubelet does.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# ----------------------------------------------------------------------------------------------
# $(VAR) expansion


def expand_references(text: str, variables: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` from ``variables`` like the kubelet: ``$$`` is a literal ``$``, unknown names stay."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == "$" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(variables[name] if name in variables else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# Path remapping


@dataclass
class PathMap:
    """In-container paths and the local paths that stand in for them.

    A path is replaced where it occurs as a whole path prefix: ``/etc/finetune`` matches in
    ``--config=/etc/finetune/config.json`` and ``/etc/finetune``, not in ``/etc/finetune2`` or
    ``/x/etc/finetune``. The longest matching path wins, so nested mounts resolve to the inner mount.
    """

    paths: dict[str, str] = field(default_factory=dict)
    _pattern: re.Pattern[str] | None = None

    def add(self, container_path: str, local_path: str | Path) -> None:
        container_path = container_path.rstrip("/")
        if container_path and container_path not in self.paths:
            self.paths[container_path] = str(local_path)
            self._pattern = None

    def merged(self, other: PathMap) -> PathMap:
        result = PathMap(dict(self.paths))
        for container_path, local_path in other.paths.items():
            result.add(container_path, local_path)
        return result

    def local(self, container_path: str) -> str:
        """The local path for an in-container path (unchanged when no mount covers it)."""
        return self.remap(container_path)

    def remap(self, text: str) -> str:
        if not self.paths or not text:
            return text
        if self._pattern is None:
            alternatives = "|".join(re.escape(p) for p in sorted(self.paths, key=len, reverse=True))
            self._pattern = re.compile(rf"(?<![\w.\-/])({alternatives})(?![\w.\-])")
        return self._pattern.sub(lambda m: self.paths[m.group(1)], text)


# ----------------------------------------------------------------------------------------------
# Volumes


def _decode_secret(data: Mapping[str, str] | None) -> dict[str, bytes]:
    return {key: base64.b64decode(value or "") for key, value in (data or {}).items()}


def _config_map_files(obj: dict) -> dict[str, bytes]:
    files = {key: (value or "").encode() for key, value in (obj.get("data") or {}).items()}
    files.update({key: base64.b64decode(value or "") for key, value in (obj.get("binaryData") or {}).items()})
    return files


def _write_file(path: Path, content: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def _safe_relative(path: str) -> str:
    """A volume item path, refused if it would leave the volume folder."""
    parts = Path(path).parts
    if Path(path).is_absolute() or ".." in parts or not parts:
        raise PodConfigError("CreateContainerConfigError", f"volume item path {path!r} must be relative and stay inside the volume")
    return path


@dataclass
class Volumes:
    """The local folders that hold a pod's volumes, and the configMap-sourced files among them."""

    folders: dict[str, Path] = field(default_factory=dict)
    text_files: list[Path] = field(default_factory=list)
    """Files that came from ConfigMaps: their text is remapped once every mount path is known."""


class VolumeBuilder:
    """Materialises a pod's volumes under ``pod_dir/volumes``."""

    def __init__(
        self,
        kube: Kube,
        pod: dict,
        pod_dir: Path,
        claims_dir: Path,
        field_value: Callable[[str], str],
    ) -> None:
        self.kube = kube
        self.pod = pod
        self.namespace = pod["metadata"].get("namespace") or "default"
        self.pod_dir = pod_dir
        self.claims_dir = claims_dir
        self.field_value = field_value

    def build(self) -> Volumes:
        volumes = Volumes()
        root = self.pod_dir / "volumes"
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            name = volume["name"]
            if "hostPath" in volume:
                host = Path(volume["hostPath"]["path"])
                if volume["hostPath"].get("type") in ("DirectoryOrCreate",):
                    host.mkdir(parents=True, exist_ok=True)
                volumes.folders[name] = host
                continue
            if "persistentVolumeClaim" in volume:
                claim = self.claims_dir / self.namespace / volume["persistentVolumeClaim"]["claimName"]
                claim.mkdir(parents=True, exist_ok=True, mode=0o700)
                volumes.folders[name] = claim
                continue
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            volumes.folders[name] = folder
            if "configMap" in volume:
                self._config_map(volume["configMap"], folder, volume["configMap"].get("defaultMode"), volumes)
            elif "secret" in volume:
                self._secret(volume["secret"], folder, volume["secret"].get("defaultMode"))
            elif "downwardAPI" in volume:
                self._downward(volume["downwardAPI"].get("items") or [], folder, volume["downwardAPI"].get("defaultMode"))
            elif "projected" in volume:
                projected = volume["projected"]
                for source in projected.get("sources") or []:
                    if "configMap" in source:
                        self._config_map(source["configMap"], folder, projected.get("defaultMode"), volumes)
                    elif "secret" in source:
                        self._secret(source["secret"], folder, projected.get("defaultMode"))
                    elif "downwardAPI" in source:
                        self._downward(source["downwardAPI"].get("items") or [], folder, projected.get("defaultMode"))
            # emptyDir and anything else: an empty private folder
        return volumes

    def _select(self, files: dict[str, bytes], spec: dict, kind: str, name: str) -> list[tuple[str, bytes, int | None]]:
        items = spec.get("items")
        if not items:
            return [(key, content, None) for key, content in files.items()]
        chosen = []
        for item in items:
            if item["key"] not in files:
                if spec.get("optional"):
                    continue
                raise PodConfigError("CreateContainerConfigError", f'{kind} "{name}" has no key "{item["key"]}"')
            chosen.append((_safe_relative(item["path"]), files[item["key"]], item.get("mode")))
        return chosen

    def _fetch(self, resource, kind: str, name: str, optional: bool) -> dict | None:
        try:
            obj = self.kube.get(resource, self.namespace, name)
        except KubeError as exc:
            raise PodConfigError("ContainerCreating", f'{kind} "{name}" could not be read: HTTP {exc.status}') from None
        if obj is None and not optional:
            raise PodConfigError("ContainerCreating", f'MountVolume.SetUp failed: {kind} "{name}" not found')
        return obj

    def _config_map(self, spec: dict, folder: Path, default_mode: int | None, volumes: Volumes) -> None:
        name = spec.get("name") or ""
        obj = self._fetch(CONFIG_MAPS, "configmap", name, bool(spec.get("optional")))
        if obj is None:
            return
        for path, content, mode in self._select(_config_map_files(obj), spec, "configmap", name):
            target = folder / path
            _write_file(target, content, mode if mode is not None else (default_mode if default_mode is not None else 0o644))
            volumes.text_files.append(target)

    def _secret(self, spec: dict, folder: Path, default_mode: int | None) -> None:
        name = spec.get("secretName") or spec.get("name") or ""
        obj = self._fetch(SECRETS, "secret", name, bool(spec.get("optional")))
        if obj is None:
            return
        files = _decode_secret(obj.get("data"))
        files.update({k: (v or "").encode() for k, v in (obj.get("stringData") or {}).items()})
        for path, content, mode in self._select(files, spec, "secret", name):
            wanted = mode if mode is not None else (default_mode if default_mode is not None else 0o600)
            _write_file(folder / path, content, (wanted & 0o700) | 0o400)  # owner only, never group/other

    def _downward(self, items: list[dict], folder: Path, default_mode: int | None) -> None:
        for item in items:
            if "fieldRef" in item:
                value = self.field_value(item["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in item:
                value = resource_field_value(self.pod, item["resourceFieldRef"])
            else:
                continue
            mode = item.get("mode") if item.get("mode") is not None else (default_mode if default_mode is not None else 0o644)
            _write_file(folder / _safe_relative(item["path"]), value.encode(), mode)


def remap_text_files(volumes: Volumes, rewrite: Callable[[str], str]) -> None:
    """Rewrite the text of the configMap files (paths and service addresses); binary files stay as they are."""
    for path in volumes.text_files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        new = rewrite(text)
        if new != text:
            mode = path.stat().st_mode & 0o777
            _write_file(path, new.encode("utf-8"), mode)


def refresh_config_map_files(kube: Kube, pod: dict, folders: dict[str, Path], rewrite: Callable[[str], str]) -> list[Path]:
    """The kubelet's periodic sync of configMap volumes: a file whose
    ConfigMap key changed gets the new content (text rewritten by ``rewrite``, as at start), swapped in
    atomically so a reader sees the old file or the new one, never half of either. → the files changed.

    Keys added to the ConfigMap appear; keys removed stay (the kubelet would remove them).
    """
    namespace = pod["metadata"].get("namespace") or "default"
    changed: list[Path] = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        folder = folders.get(volume["name"])
        if "configMap" in volume:
            sources = [(volume["configMap"], volume["configMap"].get("defaultMode"))]
        elif "projected" in volume:
            mode = volume["projected"].get("defaultMode")
            sources = [(source["configMap"], mode) for source in volume["projected"].get("sources") or [] if "configMap" in source]
        else:
            continue
        for spec, default_mode in sources:
            try:
                obj = kube.get(CONFIG_MAPS, namespace, spec.get("name") or "")
            except KubeError:
                continue
            if obj is None or folder is None:
                continue
            files = _config_map_files(obj)
            items = spec.get("items") or [{"key": key, "path": key} for key in files]
            for item in items:
                if item["key"] not in files:
                    continue
                target = folder / _safe_relative(item["path"])
                content = files[item["key"]]
                try:
                    content = rewrite(content.decode("utf-8")).encode("utf-8")
                except UnicodeDecodeError:
                    pass
                try:
                    if target.read_bytes() == content:
                        continue
                except OSError:
                    pass
                mode = item.get("mode") if item.get("mode") is not None else (default_mode if default_mode is not None else 0o644)
                staging = target.with_name(f".{target.name}.updating")
                _write_file(staging, content, mode)
                os.replace(staging, target)
                changed.append(target)
    return changed


# ----------------------------------------------------------------------------------------------
# Downward API and environment


_CPU_UNITS = {"m": 0.001, "": 1.0}
_MEMORY_UNITS = {
    "": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
}


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``1Gi``) as a number."""
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    if unit in _CPU_UNITS:
        return number * _CPU_UNITS[unit]
    if unit in _MEMORY_UNITS:
        return number * _MEMORY_UNITS[unit]
    raise ValueError(f"unknown unit in quantity {text!r}")


def resource_field_value(pod: dict, ref: dict) -> str:
    """``resourceFieldRef``: the container's limit or request, or the machine's capacity without one."""
    resource = ref.get("resource", "")
    containers = (pod.get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == ref.get("containerName")), containers[0] if containers else {})
    section, _, kind = resource.partition(".")
    value = ((container.get("resources") or {}).get(section) or {}).get(kind)
    if value is None:
        if kind == "cpu":
            amount = float(os.cpu_count() or 1)
        elif kind == "memory":
            amount = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        else:
            amount = 0.0
    else:
        amount = parse_quantity(value)
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(int(math.ceil(amount / divisor))) if divisor else "0"


def pod_field_value(pod: dict, field_path: str, pod_ip: str, node_name: str) -> str:
    """A ``fieldRef`` of the downward API."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName") or node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if field_path in simple:
        return simple[field_path]
    match = re.fullmatch(r"metadata\.(labels|annotations)(?:\['(.*)'\])?", field_path)
    if match:
        values = meta.get(match.group(1)) or {}
        if match.group(2) is not None:
            return values.get(match.group(2), "")
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise PodConfigError("CreateContainerConfigError", f"unsupported fieldRef fieldPath {field_path!r}")


@dataclass
class ContainerEnv:
    """A container's environment; ``secret_names`` are the variables whose values came from Secrets."""

    values: dict[str, str]
    secret_names: set[str]


def container_environment(
    kube: Kube,
    pod: dict,
    container: dict,
    base: Mapping[str, str],
    field_value: Callable[[str], str],
) -> ContainerEnv:
    """``envFrom`` then ``env``, each ``value`` expanded against what came before, like the kubelet."""
    namespace = pod["metadata"].get("namespace") or "default"
    values: dict[str, str] = dict(base)
    secret_names: set[str] = set()
    cache: dict[tuple[str, str], dict | None] = {}

    def fetch(resource, kind: str, name: str, optional: bool) -> dict | None:
        key = (kind, name)
        if key not in cache:
            try:
                cache[key] = kube.get(resource, namespace, name)
            except KubeError as exc:
                raise PodConfigError("CreateContainerConfigError", f'{kind} "{name}" could not be read: HTTP {exc.status}') from None
        if cache[key] is None and not optional:
            raise PodConfigError("CreateContainerConfigError", f'{kind} "{name}" not found')
        return cache[key]

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        if "configMapRef" in source:
            ref = source["configMapRef"]
            obj = fetch(CONFIG_MAPS, "configmap", ref.get("name", ""), bool(ref.get("optional")))
            for key, value in ((obj or {}).get("data") or {}).items():
                values[prefix + key] = value
        elif "secretRef" in source:
            ref = source["secretRef"]
            obj = fetch(SECRETS, "secret", ref.get("name", ""), bool(ref.get("optional")))
            for key, value in _decode_secret((obj or {}).get("data")).items():
                values[prefix + key] = value.decode("utf-8", errors="replace")
                secret_names.add(prefix + key)

    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            values[name] = expand_references(item.get("value") or "", values)
            secret_names.discard(name)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            values[name] = field_value(source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            ref = dict(source["resourceFieldRef"])
            ref.setdefault("containerName", container.get("name"))
            values[name] = resource_field_value(pod, ref)
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            obj = fetch(CONFIG_MAPS, "configmap", ref.get("name", ""), bool(ref.get("optional")))
            data = (obj or {}).get("data") or {}
            if ref["key"] in data:
                values[name] = data[ref["key"]]
            elif not ref.get("optional"):
                raise PodConfigError("CreateContainerConfigError", f'couldn\'t find key {ref["key"]} in ConfigMap {namespace}/{ref.get("name")}')
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            obj = fetch(SECRETS, "secret", ref.get("name", ""), bool(ref.get("optional")))
            data = _decode_secret((obj or {}).get("data"))
            if ref["key"] in data:
                values[name] = data[ref["key"]].decode("utf-8", errors="replace")
                secret_names.add(name)
            elif not ref.get("optional"):
                raise PodConfigError("CreateContainerConfigError", f'couldn\'t find key {ref["key"]} in Secret {namespace}/{ref.get("name")}')
    return ContainerEnv(values, secret_names)
