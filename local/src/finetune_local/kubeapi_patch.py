"""Patches (merge, JSON, strategic) and label/field selectors, as the Kubernetes API server applies them."""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied; the server answers 422 (or 400 for a malformed body)."""


# ---------------------------------------------------------------------------------------------- patches

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists that a strategic merge patch merges item by item, and the key that identifies an item
# (from the Kubernetes types' patchMergeKey tags). Lists of objects not named here merge by `name`
# when every item has one; other lists are replaced.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",), "env": ("name",),
    "volumes": ("name",), "imagePullSecrets": ("name",), "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",), "conditions": ("type",), "ownerReferences": ("uid",),
    "ports": ("containerPort", "port"), "hostAliases": ("ip",), "topologySpreadConstraints": ("topologyKey",),
}
# Lists of plain values that merge as sets (patchStrategy "merge").
UNION_LISTS = {"finalizers"}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch, simplified: a merge patch where the lists Kubernetes merges (containers,
    env, volumes by name; volumeMounts by mountPath; conditions by type; ...) merge item by item,
    `$patch: delete` removes an item, `$patch: replace` replaces, and finalizers merge as a set
    (`$deleteFromPrimitiveList/finalizers` removes some)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [item for item in result[field] if item not in value]
            continue
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    for candidate in MERGE_KEYS.get(field, ("name",)):
        if all(candidate in item for item in items if item.get("$patch") != "replace"):
            return candidate
    return None


def _merge_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    if field in UNION_LISTS and isinstance(current, list):
        return list(current) + [item for item in patch if item not in current]
    key = _merge_key(field, patch)
    if key is None or not isinstance(current, list):
        return [strategic_merge_patch(None, item) if isinstance(item, dict) else copy.deepcopy(item)
                for item in patch if not (isinstance(item, dict) and item.get("$patch") == "delete")]
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [strategic_merge_patch(None, item) for item in patch
                if isinstance(item, dict) and item.get("$patch") != "replace"]
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        position = next((i for i, existing in enumerate(merged)
                         if isinstance(existing, dict) and existing.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if position is not None:
                merged.pop(position)
        elif position is None:
            merged.append(strategic_merge_patch(None, item))
        else:
            merged[position] = strategic_merge_patch(merged[position], item)
    return merged


def _pointer_parts(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}: must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _resolve_parent(document: Any, parts: list[str], pointer: str) -> tuple[Any, str]:
    node = document
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"jsonpatch: path {pointer!r} does not exist")
    return node, parts[-1]


def _get(document: Any, pointer: str) -> Any:
    node = document
    for part in _pointer_parts(pointer):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"jsonpatch: path {pointer!r} does not exist")
    return node


def _add(document: Any, pointer: str, value: Any) -> Any:
    parts = _pointer_parts(pointer)
    if not parts:
        return value
    parent, last = _resolve_parent(document, parts, pointer)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"jsonpatch add: index {last!r} out of range in {pointer!r}")
    else:
        raise PatchError(f"jsonpatch add: {pointer!r} has no container to add to")
    return document


def _remove(document: Any, pointer: str) -> Any:
    parts = _pointer_parts(pointer)
    if not parts:
        raise PatchError("jsonpatch remove: cannot remove the whole document")
    parent, last = _resolve_parent(document, parts, pointer)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent.pop(int(last))
    else:
        raise PatchError(f"jsonpatch remove operation does not apply: doc is missing path: {pointer!r}")
    return document


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test, applied in order."""
    if not isinstance(operations, list):
        raise PatchError("json patch must be a list of operations")
    document = copy.deepcopy(target)
    for index, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"json patch operation {index} must have 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"json patch operation {index} ({kind}) has no 'value'")
        if kind == "add":
            document = _add(document, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            document = _remove(document, path)
        elif kind == "replace":
            _get(document, path)
            document = _add(_remove(document, path), path, copy.deepcopy(op["value"])) if path else op["value"]
        elif kind == "move":
            value = _get(document, op["from"])
            document = _add(_remove(document, op["from"]), path, value)
        elif kind == "copy":
            document = _add(document, path, copy.deepcopy(_get(document, op["from"])))
        elif kind == "test":
            if _get(document, path) != op["value"]:
                raise PatchError(f"testing value {path} failed")
        else:
            raise PatchError(f"json patch operation {index}: unknown op {kind!r}")
    return document


# -------------------------------------------------------------------------------------------- selectors

class SelectorError(ValueError):
    """A selector the server cannot parse; answered with 400 BadRequest."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        raise AssertionError(self.operator)


_LABEL_KEY = re.compile(r"^([a-z0-9A-Z]([-a-zA-Z0-9.]*[a-zA-Z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")
_SET_REQUIREMENT = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_top_level(selector: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def parse_label_selector(selector: str | None) -> list[Requirement]:
    """Parse `a=b,c!=d,e in (f,g),h notin (i),j,!k` into requirements (all must match)."""
    requirements: list[Requirement] = []
    for part in _split_top_level(selector or ""):
        set_match = _SET_REQUIREMENT.match(part)
        if set_match:
            key, op, raw_values = set_match.groups()
            values = tuple(v.strip() for v in raw_values.split(",") if v.strip())
            requirement = Requirement(key, op, values)
        elif part.startswith("!"):
            requirement = Requirement(part[1:].strip(), "!exists")
        elif "!=" in part:
            key, value = part.split("!=", 1)
            requirement = Requirement(key.strip(), "!=", (value.strip(),))
        elif "==" in part:
            key, value = part.split("==", 1)
            requirement = Requirement(key.strip(), "=", (value.strip(),))
        elif "=" in part:
            key, value = part.split("=", 1)
            requirement = Requirement(key.strip(), "=", (value.strip(),))
        else:
            requirement = Requirement(part.strip(), "exists")
        if not _LABEL_KEY.match(requirement.key):
            raise SelectorError(f"unable to parse requirement: invalid label key {requirement.key!r}")
        requirements.append(requirement)
    return requirements


@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    path: str
    value: str
    negated: bool

    def matches(self, obj: dict[str, Any]) -> bool:
        node: Any = obj
        for part in self.path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, bool):
            actual = "true" if node else "false"
        elif node is None:
            actual = ""
        else:
            actual = str(node)
        return (actual != self.value) if self.negated else (actual == self.value)


def parse_field_selector(selector: str | None, allowed: tuple[str, ...]) -> list[FieldRequirement]:
    """Parse `metadata.name=x,status.phase!=Running`; only the kind's own field labels are allowed."""
    requirements = []
    for part in _split_top_level(selector or ""):
        if "!=" in part:
            path, value = part.split("!=", 1)
            negated = True
        elif "==" in part:
            path, value = part.split("==", 1)
            negated = False
        elif "=" in part:
            path, value = part.split("=", 1)
            negated = False
        else:
            raise SelectorError(f"invalid selector: {selector!r}; can't understand {part!r}")
        path = path.strip()
        if path not in ("metadata.name", "metadata.namespace", *allowed):
            if allowed:  # a kind with field labels of its own answers as its conversion function does
                raise SelectorError(f"field label not supported: {path}")
            raise SelectorError(f'"{path}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        requirements.append(FieldRequirement(path, value.strip(), negated))
    return requirements


@dataclasses.dataclass
class Selector:
    """Label and field requirements of one list or watch request."""

    labels: list[Requirement]
    fields: list[FieldRequirement]

    def matches(self, obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.labels) and all(r.matches(obj) for r in self.fields)
