"""Decoding of the Kubernetes protobuf encoding for the few kinds `kubectl create <kind>` sends that way.

kubectl's typed clients (`kubectl create namespace|configmap|secret|serviceaccount`, Helm's release Secrets, deletes) send
`application/vnd.kubernetes.protobuf`: the bytes `k8s\\x00` and a runtime.Unknown message wrapping the
object's own protobuf. This module turns those into the JSON form; other kinds are refused with 415.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

MAGIC = b"k8s\x00"

# Field number -> (JSON name, type) for each message, from the Kubernetes generated.proto files.
FieldTable = dict[int, tuple[str, str]]
MESSAGES: dict[str, FieldTable] = {
    "Unknown": {1: ("typeMeta", "message:TypeMeta"), 2: ("raw", "bytes"), 3: ("contentEncoding", "string"),
                4: ("contentType", "string")},
    "TypeMeta": {1: ("apiVersion", "string"), 2: ("kind", "string")},
    "ObjectMeta": {1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
                   5: ("uid", "string"), 6: ("resourceVersion", "string"), 7: ("generation", "int"),
                   8: ("creationTimestamp", "time"), 9: ("deletionTimestamp", "time"),
                   10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "map:string"),
                   12: ("annotations", "map:string"), 13: ("ownerReferences", "repeated:OwnerReference"),
                   14: ("finalizers", "repeated:string")},
    "OwnerReference": {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                       5: ("apiVersion", "string"), 6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")},
    "Time": {1: ("seconds", "int"), 2: ("nanos", "int")},
    "Namespace": {1: ("metadata", "message:ObjectMeta"), 2: ("spec", "message:NamespaceSpec")},
    "NamespaceSpec": {1: ("finalizers", "repeated:string")},
    "ConfigMap": {1: ("metadata", "message:ObjectMeta"), 2: ("data", "map:string"), 3: ("binaryData", "map:bytes"),
                  4: ("immutable", "bool")},
    "Secret": {1: ("metadata", "message:ObjectMeta"), 2: ("data", "map:bytes"), 3: ("type", "string"),
               4: ("stringData", "map:string"), 5: ("immutable", "bool")},
    "ServiceAccount": {1: ("metadata", "message:ObjectMeta"), 2: ("secrets", "repeated:ObjectReference"),
                       3: ("imagePullSecrets", "repeated:LocalObjectReference"),
                       4: ("automountServiceAccountToken", "bool")},
    "ObjectReference": {1: ("kind", "string"), 2: ("namespace", "string"), 3: ("name", "string"),
                        4: ("uid", "string"), 5: ("apiVersion", "string")},
    "LocalObjectReference": {1: ("name", "string")},
    "DeleteOptions": {1: ("gracePeriodSeconds", "int"), 2: ("preconditions", "message:Preconditions"),
                      3: ("orphanDependents", "bool"), 4: ("propagationPolicy", "string"),
                      5: ("dryRun", "repeated:string")},
    "Preconditions": {1: ("uid", "string"), 2: ("resourceVersion", "string")},
}
DECODABLE_KINDS = {("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "ServiceAccount"),
                   ("v1", "DeleteOptions"), ("meta.k8s.io/v1", "DeleteOptions")}


class ProtobufError(ValueError):
    """A protobuf body this server cannot decode."""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message; length-delimited values stay bytes."""
    fields = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            fields.append((number, value))
        elif wire_type == 2:
            length, position = _varint(data, position)
            fields.append((number, data[position:position + length]))
            position += length
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire_type}")
    return fields


def _decode(data: bytes, message: str) -> dict[str, Any]:
    table = MESSAGES[message]
    out: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in table:
            continue
        name, kind = table[number]
        if kind == "string":
            text = bytes(value).decode()  # type: ignore[arg-type]
            if text:  # proto2 writes empty strings; JSON leaves them out
                out[name] = text
        elif kind == "bytes":
            out[name] = bytes(value)  # type: ignore[arg-type]
        elif kind == "int":
            out[name] = value
        elif kind == "bool":
            out[name] = bool(value)
        elif kind == "time":
            seconds = _decode(value, "Time").get("seconds", 0)  # type: ignore[arg-type]
            out[name] = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif kind.startswith("message:"):
            out[name] = _decode(value, kind.split(":", 1)[1])  # type: ignore[arg-type]
        elif kind.startswith("repeated:"):
            item_kind = kind.split(":", 1)[1]
            item = bytes(value).decode() if item_kind == "string" else _decode(value, item_kind)  # type: ignore
            out.setdefault(name, []).append(item)
        elif kind.startswith("map:"):
            entry = dict(_fields(value))  # type: ignore[arg-type]
            key = bytes(entry.get(1, b"")).decode()  # type: ignore[arg-type]
            raw = bytes(entry.get(2, b""))  # type: ignore[arg-type]
            out.setdefault(name, {})[key] = raw.decode() if kind == "map:string" else base64.b64encode(raw).decode()
    return out


def decode_object(body: bytes) -> dict[str, Any]:
    """A Kubernetes protobuf body as the JSON object it stands for; ProtobufError for kinds not covered."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body does not start with the Kubernetes protobuf magic number")
    envelope = _decode(body[len(MAGIC):], "Unknown")
    type_meta = envelope.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    if (api_version, kind) not in DECODABLE_KINDS:
        raise ProtobufError(f"protobuf bodies are understood for Namespace, ConfigMap, Secret, ServiceAccount and "
                            f"DeleteOptions only, not {kind or 'this kind'}; send JSON (kubectl apply -f) instead")
    obj = _decode(envelope.get("raw", b""), kind)
    obj["apiVersion"] = api_version
    obj["kind"] = kind
    return obj
