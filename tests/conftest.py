"""Shared fixtures: a cluster on one machine.

- `kube_api`: a Kubernetes API server on loopback (session-wide), with the repository's CRDs applied.
- `namespace`: a fresh namespace in it for one test.
- `object_store`: SeaweedFS serving S3 on loopback (session-wide), with a bucket.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CRDS_DIR = REPO_ROOT / "crds"


@dataclasses.dataclass
class KubeApi:
    """A running local Kubernetes API server and how to reach it."""

    server: Any  # finetune_local.kubeapi.KubeApiServer
    kubeconfig: Path
    url: str

    def client(self) -> Any:
        """A new `kubernetes.client.ApiClient` for this server."""
        return self.server.api_client()


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    from finetune_local.kubeapi import KubeApiServer, load_manifests

    server = KubeApiServer().start()
    try:
        kubeconfig = server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        if CRDS_DIR.is_dir():
            crds = [d for d in load_manifests(CRDS_DIR) if d.get("kind") == "CustomResourceDefinition"]
            server.apply(crds)
        yield KubeApi(server=server, kubeconfig=kubeconfig, url=server.url)
    finally:
        server.stop()


@pytest.fixture
def namespace(kube_api: KubeApi, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (with everything in it) afterwards."""
    import kubernetes.client

    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    with kube_api.client() as api:
        core = kubernetes.client.CoreV1Api(api)
        created = core.create_namespace({"metadata": {"generateName": f"{slug}-"}})
        name = created.metadata.name
        try:
            yield name
        finally:
            try:
                core.delete_namespace(name)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """SeaweedFS serving S3 on loopback with a bucket; see finetune_local.objectstore.ObjectStore."""
    from finetune_local.objectstore import start_object_store

    store = start_object_store(tmp_path_factory.mktemp("seaweedfs"), bucket="finetune")
    try:
        yield store
    finally:
        store.stop()
