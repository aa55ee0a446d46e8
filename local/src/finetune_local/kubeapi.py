"""A Kubernetes API server for tests and the local demo, over real HTTP on loopback.

It serves what kopf, the official `kubernetes` client and `kubectl` use: discovery, the built-in kinds an
operator touches, CustomResourceDefinitions (schema validation, defaulting, CEL rules, status subresource),
resourceVersion/generation/finalizer/garbage-collection semantics, selectors, patches and watches. It runs
no pods and has no authentication.

In a test::

    with KubeApiServer() as server:
        api = server.api_client()
        kubernetes.client.CoreV1Api(api).list_namespace()

As a program (for kubectl and the demo)::

    python -m finetune_local.kubeapi --port 8001 --kubeconfig kubeconfig.yaml --manifests crds/
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from finetune_local.kubeapi_http import KubeApiApp, LogProvider
from finetune_local.kubeapi_resources import ResourceRegistry, ResourceType
from finetune_local.kubeapi_store import ApiError, ObjectStore

logger = logging.getLogger(__name__)
T = TypeVar("T")


def kubeconfig_text(url: str, namespace: str = "default") -> str:
    """A kubeconfig for kubectl and the kubernetes client pointing at `url` (any token is accepted)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": url}}],
        "users": [{"name": "local", "user": {"token": "local"}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local", "namespace": namespace}}],
        "current-context": "local",
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_kubeconfig(url: str, path: str | Path, namespace: str = "default") -> Path:
    """Write a kubeconfig for `url` to `path` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(kubeconfig_text(url, namespace))
    return path


def make_api_client(url: str) -> Any:
    """A `kubernetes.client.ApiClient` talking to `url`."""
    import kubernetes.client

    configuration = kubernetes.client.Configuration()
    configuration.host = url
    configuration.api_key = {"authorization": "local"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return kubernetes.client.ApiClient(configuration)


def pod_logs_from_folder(folder: str | Path) -> LogProvider:
    """A log provider reading `<folder>/<namespace>_<pod>_<container>.log` (the local runner's layout);
    without a container name, the pod's first container by name."""
    folder = Path(folder)

    def read(namespace: str, pod: str, container: str | None) -> str | None:
        if container:
            path = folder / f"{namespace}_{pod}_{container}.log"
        else:
            candidates = sorted(folder.glob(f"{namespace}_{pod}_*.log"))
            if not candidates:
                return None
            path = candidates[0]
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    return read


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    """All Kubernetes objects in a YAML file, or in the *.yaml/*.yml/*.json files of a folder (sorted by name)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    documents = []
    for file in files:
        for document in yaml.safe_load_all(file.read_text()):
            if not isinstance(document, dict) or document.get("kind") == "Kustomization":
                continue  # kustomize's own file describes manifests, it is not one
            if document.get("kind") == "List":
                documents.extend(document.get("items") or [])
            else:
                documents.append(document)
    return documents


class KubeApiServer:
    """The API server, serving from a background thread with its own event loop.

    `start()` returns once the port is bound; `stop()` closes every watch and the listening socket.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, history_limit: int = 50_000,
                 bookmark_interval: float = 5.0, orphan_gc_delay: float = 1.0,
                 log_provider: LogProvider | None = None) -> None:
        self.host = host
        self.port = port
        self.registry = ResourceRegistry()
        self._history_limit = history_limit
        self._bookmark_interval = bookmark_interval
        self._orphan_gc_delay = orphan_gc_delay
        self._log_provider = log_provider
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.store: ObjectStore | None = None
        self.http: KubeApiApp | None = None

    # ---------------------------------------------------------------------------------- lifecycle

    async def start_async(self) -> None:
        """Bind and serve on the running event loop (used by the program and by start())."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.store = ObjectStore(self.registry, history_limit=self._history_limit, orphan_gc_delay=self._orphan_gc_delay,
                                 schedule=lambda delay, callback: loop.call_later(delay, callback))
        self.http = KubeApiApp(self.registry, self.store, bookmark_interval=self._bookmark_interval,
                               log_provider=self._log_provider)
        self._runner = web.AppRunner(self.http.app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop_async(self) -> None:
        if self.store is not None:
            self.store.close_subscriptions()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> KubeApiServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as error:  # noqa: BLE001 - handed to the starting thread
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop_async())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="kubeapi", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------- access

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` on the server's loop thread (the store is not thread-safe) and return its result."""
        if self._loop is None:
            raise RuntimeError("the server is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
                future.set_exception(error)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    def set_log_provider(self, provider: LogProvider | None) -> None:
        """Where `kubectl logs` (pods/log) reads a container's output from: (namespace, pod, container) -> text."""
        self._log_provider = provider
        if self.http is not None:
            self.http.log_provider = provider

    def compact(self) -> None:
        """Forget the watch history, like etcd compaction: older resourceVersions now answer 410 Gone."""
        assert self.store is not None
        self.call(self.store.compact)

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        return write_kubeconfig(self.url, path, namespace)

    def api_client(self) -> Any:
        """A new `kubernetes.client.ApiClient` for this server."""
        return make_api_client(self.url)

    def apply(self, documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create each object, or merge it into the existing one (like `kubectl apply`); CRDs register at once."""
        return [self.call(lambda d=document: self._apply_one(d)) for document in documents]

    def apply_path(self, path: str | Path) -> list[dict[str, Any]]:
        return self.apply(load_manifests(path))

    def _apply_one(self, document: dict[str, Any]) -> dict[str, Any]:
        assert self.store is not None
        resource = self._resource_for(document)
        metadata = document.get("metadata") or {}
        namespace = metadata.get("namespace") or ("default" if resource.namespaced else None)
        try:
            self.store.get(resource, namespace, metadata.get("name", ""))
        except ApiError as error:
            if error.code != 404:
                raise
            return self.store.create(resource, namespace, document).obj
        return self.store.patch(resource, namespace, metadata["name"], "merge", document).obj

    def _resource_for(self, document: dict[str, Any]) -> ResourceType:
        api_version = document.get("apiVersion", "")
        group, _, version = api_version.rpartition("/")
        for resource in self.registry.in_group_version(group, version):
            if resource.kind == document.get("kind"):
                return resource
        raise ApiError(404, "NotFound", f'no matches for kind "{document.get("kind")}" in version "{api_version}"')


def _serve(args: argparse.Namespace) -> None:
    async def main() -> None:
        provider = pod_logs_from_folder(args.pod_logs) if args.pod_logs else None
        server = KubeApiServer(args.host, args.port, log_provider=provider)
        await server.start_async()
        assert server.store is not None
        if args.manifests:
            for path in args.manifests:
                for document in load_manifests(path):
                    server._apply_one(document)
        if args.kubeconfig:
            server.write_kubeconfig(args.kubeconfig)
            print(f"kubeconfig written to {args.kubeconfig}", flush=True)
        print(f"Kubernetes API serving on {server.url}", flush=True)
        stopped = asyncio.Event()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signal_number, stopped.set)
        await stopped.wait()
        await server.stop_async()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_local.kubeapi", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for this server to this path")
    parser.add_argument("--manifests", action="append", default=[],
                        help="a YAML file or folder to apply at startup (CRDs, namespaces); may repeat")
    parser.add_argument("--pod-logs", help="serve `kubectl logs` from <folder>/<namespace>_<pod>_<container>.log "
                                            "(where the local runner writes container output)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    _serve(args)


if __name__ == "__main__":
    main()
