"""Object store keys scoped to one namespace.

The pods of namespace A (validation, training, evaluation, serving) mount A's Secret ``finetune-storage``
(``FINETUNE_STORAGE_SECRET``). With one key for every namespace, anyone who can read that Secret (the
``edit`` role can) reaches every team's data with it, whatever the operator checks. So each namespace gets a
key of its own that can read and write its own prefixes (``<bucket>/{datasets,jobs,evaluations,uploads}/<ns>/``)
and read the shared ones (``FINETUNE_SHARED_PREFIXES``), and nothing else:

* SeaweedFS: an identity whose actions name those prefixes (``Read:<bucket>/<prefix>/*`` ...), written to the
  filer's ``/etc/iam/identity.json``, which the S3 gateways reload at once; ``grant --seaweedfs-filer``
  does it all, Secret included.
* MinIO and AWS S3: the IAM policy ``policy --format s3`` prints, attached to a user (``mc admin user add``,
  ``mc admin policy create`` and ``attach``) or an IAM role; ``grant --access-key-file --secret-key-file``
  then writes that user's keys into the namespace's Secret.

The Secret ``grant`` writes carries the label ``finetune.dev/storage-namespace: <ns>``. With
``FINETUNE_STORAGE_SCOPED_KEYS=true`` the operator starts no pod in a namespace whose store Secret lacks it
(reason ``StorageKeyNotScoped``); without, it says at start that every namespace's key reaches the whole
bucket. A scoped key cannot look up the bucket's region, so pods need ``FINETUNE_STORAGE_REGION`` set.

    python -m finetune_operator.storage_keys policy --namespace team-a --format s3
    python -m finetune_operator.storage_keys grant --namespace team-a --seaweedfs-filer http://seaweedfs-filer:8888
    python -m finetune_operator.storage_keys revoke --namespace team-a --seaweedfs-filer http://seaweedfs-filer:8888
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from finetune_operator import tenancy
from finetune_operator.config import OperatorConfig
from finetune_operator.kube import ApiError
from finetune_trainer.contract import parse_s3_uri

SCOPE_LABEL = tenancy.STORAGE_SCOPE_LABEL
IDENTITY_PREFIX = "finetune-ns-"
"""SeaweedFS identities made here are named ``finetune-ns-<namespace>``; others in the file are left alone."""
IDENTITY_FILE = "/etc/iam/identity.json"
OWN_ACTIONS = ("Read", "Write", "List", "Tagging")
SHARED_ACTIONS = ("Read", "List")


@dataclass(frozen=True)
class Grant:
    """What one namespace's key may do: (bucket, key prefix) pairs, read-write and read-only."""

    namespace: str
    read_write: tuple[tuple[str, str], ...]
    read_only: tuple[tuple[str, str], ...]


def grant_for(namespace: str, config: OperatorConfig) -> Grant:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
        raise ValueError(f"{namespace!r} is not a namespace name")
    own = tuple(parse_s3_uri(p) for p in tenancy.own_prefixes(config, namespace))
    shared = tuple(parse_s3_uri(p) for p in config.shared_prefixes)
    return Grant(namespace, own, shared)


def seaweedfs_actions(grant: Grant) -> list[str]:
    """SeaweedFS identity actions: a trailing ``*`` makes each a prefix of ``<bucket>/<key>``."""
    actions = [f"{a}:{bucket}/{prefix}/*" for bucket, prefix in grant.read_write for a in OWN_ACTIONS]
    actions += [f"{a}:{bucket}/{prefix}/*" for bucket, prefix in grant.read_only for a in SHARED_ACTIONS]
    return actions


def seaweedfs_identity(grant: Grant, access_key: str, secret_key: str) -> dict:
    return {
        "name": IDENTITY_PREFIX + grant.namespace,
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": seaweedfs_actions(grant),
    }


def s3_policy(grant: Grant) -> dict:
    """An IAM policy (AWS S3, MinIO) that allows what ``grant`` allows and nothing else."""
    statements = []
    for access, pairs, object_actions in (
        ("ReadWrite", grant.read_write, ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]),
        ("ReadOnly", grant.read_only, ["s3:GetObject"]),
    ):
        if not pairs:
            continue
        statements.append({"Sid": f"{access}Objects", "Effect": "Allow", "Action": object_actions,
                           "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*" for bucket, prefix in pairs]})  # fmt: skip
        for bucket in sorted({b for b, _ in pairs}):
            statements.append({
                "Sid": f"{access}List{len(statements)}", "Effect": "Allow", "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*" for b, prefix in pairs if b == bucket]}},
            })  # fmt: skip
    return {"Version": "2012-10-17", "Statement": statements}


def namespace_secret(grant: Grant, access_key: str, secret_key: str, config: OperatorConfig) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": config.storage_secret,
            "namespace": grant.namespace,
            "labels": {SCOPE_LABEL: grant.namespace, "app.kubernetes.io/managed-by": "finetune-operator"},
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in (("accessKey", access_key), ("secretKey", secret_key))},
    }


def new_keys() -> tuple[str, str]:
    return "FT" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)


# -- SeaweedFS: the identities in the filer -----------------------------------------------------------------------


class Filer:
    """The identities file in a SeaweedFS filer (its HTTP API); the S3 gateways reload it on change."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def read(self) -> dict:
        try:
            with urllib.request.urlopen(self.url + IDENTITY_FILE, timeout=self.timeout) as response:
                return json.loads(response.read(8 << 20) or b"{}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return {"identities": []}
            raise

    def write(self, config: dict) -> None:
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="identity.json"\r\n'
            f"Content-Type: application/json\r\n\r\n".encode()
            + json.dumps(config, indent=2).encode()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(self.url + IDENTITY_FILE, data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=self.timeout):
            pass

    def put_identity(self, identity: dict) -> None:
        config = self.read()
        others = [i for i in config.get("identities") or [] if i.get("name") != identity["name"]]
        config["identities"] = [*others, identity]
        self.write(config)

    def remove_identity(self, name: str) -> bool:
        config = self.read()
        identities = config.get("identities") or []
        kept = [i for i in identities if i.get("name") != name]
        if len(kept) == len(identities):
            return False
        config["identities"] = kept
        self.write(config)
        return True


# -- the admin's commands -----------------------------------------------------------------------------------------


def apply_secret(kube, secret: dict) -> None:
    """Create the namespace's store Secret, or replace its keys and labels."""
    from finetune_operator import kube as k

    meta = secret["metadata"]
    try:
        kube.request("POST", k.SECRETS.path(meta["namespace"]), body=secret)
    except k.ApiError as e:
        if e.status != 409:
            raise
        patch = {"metadata": {"labels": meta["labels"]}, "data": secret["data"]}
        kube.request("PATCH", k.SECRETS.path(meta["namespace"], meta["name"]), body=patch, content_type="application/merge-patch+json")


def grant(namespace: str, config: OperatorConfig, kube, *, filer: Filer | None = None, keys: tuple[str, str] | None = None) -> Grant:
    """A key scoped to ``namespace`` in its Secret: new keys made in SeaweedFS (``filer``), or ``keys`` an admin
    made in the store with ``s3_policy``'s policy."""
    if (filer is None) == (keys is None):
        raise ValueError("give either a SeaweedFS filer or the keys made in the store")
    scope = grant_for(namespace, config)
    access_key, secret_key = keys or new_keys()
    if filer is not None:
        filer.put_identity(seaweedfs_identity(scope, access_key, secret_key))
    apply_secret(kube, namespace_secret(scope, access_key, secret_key, config))
    return scope


def revoke(namespace: str, config: OperatorConfig, kube, *, filer: Filer | None = None) -> None:
    from finetune_operator import kube as k

    if filer is not None:
        filer.remove_identity(IDENTITY_PREFIX + namespace)
    kube.delete(k.SECRETS, namespace, config.storage_secret)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_operator.storage_keys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    policy = sub.add_parser("policy", help="print what a namespace's key may do")
    policy.add_argument("--namespace", required=True)
    policy.add_argument("--format", choices=["s3", "seaweedfs"], default="s3", help="s3: an IAM policy (AWS, MinIO); seaweedfs: identity actions")
    for name, text in (("grant", "give a namespace a scoped key in its Secret"), ("revoke", "remove a namespace's key and Secret")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--namespace", required=True)
        p.add_argument("--seaweedfs-filer", help="the SeaweedFS filer's URL, e.g. http://seaweedfs-filer:8888")
        if name == "grant":
            p.add_argument("--access-key-file", type=Path, help="keys made in the store with the printed policy (MinIO, AWS)")
            p.add_argument("--secret-key-file", type=Path)
    args = parser.parse_args(argv)
    config = OperatorConfig.from_env()
    try:
        if args.command == "policy":
            scope = grant_for(args.namespace, config)
            out = s3_policy(scope) if args.format == "s3" else {"actions": seaweedfs_actions(scope)}
            print(json.dumps(out, indent=2))
            return 0
        from finetune_operator.kube import Kube

        filer = Filer(args.seaweedfs_filer) if args.seaweedfs_filer else None
        if args.command == "revoke":
            revoke(args.namespace, config, Kube(), filer=filer)
            print(f"revoked the store key of namespace {args.namespace}")
            return 0
        keys = None
        if args.access_key_file or args.secret_key_file:
            if not (args.access_key_file and args.secret_key_file):
                parser.error("--access-key-file and --secret-key-file go together")
            keys = (args.access_key_file.read_text().strip(), args.secret_key_file.read_text().strip())
        if (filer is None) == (keys is None):
            parser.error("give --seaweedfs-filer, or --access-key-file and --secret-key-file")
        scope = grant(args.namespace, config, Kube(), filer=filer, keys=keys)
        own = ", ".join(f"{b}/{p}/" for b, p in scope.read_write)
        print(f"namespace {args.namespace}: Secret {config.storage_secret} holds a key for {own} (read-write)"
              + (f" and {', '.join(f'{b}/{p}/' for b, p in scope.read_only)} (read-only)" if scope.read_only else ""))  # fmt: skip
        return 0
    except (ValueError, OSError, ApiError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
