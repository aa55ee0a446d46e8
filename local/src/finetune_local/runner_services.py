"""Services on one machine: a TCP proxy per Service port, and the DNS names rewritten to local addresses.

* Every Service with a selector and a cluster IP gets, per port, a proxy listening on
  ``127.0.0.1:<free port>`` that forwards each connection to a Ready pod matching the selector (round
  robin). The Service is annotated with ``local.finetune.dev/address`` (its first port) and
  ``local.finetune.dev/address-<port name or number>`` (each port).
* ``AddressBook.rewrite`` replaces, in a piece of text, ``<svc>.<ns>.svc.cluster.local:<port>``,
  ``<svc>.<ns>.svc:<port>``, ``<svc>.<ns>:<port>`` and (in the Service's own namespace) ``<svc>:<port>``
  with the proxy's address, and a pod name under a headless Service
  (``<hostname>.<subdomain>[.<ns>[.svc[.cluster.local]]]``) with that pod's loopback IP.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("finetune_local.runner")

ADDRESS_ANNOTATION = "local.finetune.dev/address"


def deterministic_pod_ip(namespace: str, subdomain: str, hostname: str) -> str:
    """The loopback IP of a pod with a hostname under a headless Service.

    Derived from the names, so a peer's address is known before that peer starts (multi-node jobs
    resolve ``<job>-0.<svc>`` at start-up). Kept within 127.16.0.0 - 127.250.255.254.
    """
    digest = hashlib.sha256(f"{namespace}/{subdomain}/{hostname}".encode()).digest()
    return f"127.{16 + digest[0] % 235}.{digest[1]}.{1 + digest[2] % 254}"


def selector_matches(selector: dict[str, str], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_is_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def target_port(pod: dict, port: dict) -> int | None:
    """The pod port a Service port forwards to (``targetPort`` by number or by container port name)."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == target:
                return int(declared["containerPort"])
    return None


class PortProxy:
    """Listens on 127.0.0.1:<free port> and forwards each connection to one of the Ready endpoints."""

    def __init__(self, name: str, endpoints: Callable[[], list[tuple[str, int]]], stopping: threading.Event) -> None:
        self.name = name
        self.endpoints = endpoints
        self.stopping = stopping
        self._closed = threading.Event()
        self._turn = itertools.count()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.5)
        self.port: int = self._listener.getsockname()[1]
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"proxy-{name}", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            for conn in list(self._connections):
                _close(conn)
            self._connections.clear()

    def _accept(self) -> None:
        while not self._closed.is_set() and not self.stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()
        self.close()

    def _serve(self, client: socket.socket) -> None:
        endpoints = self.endpoints()
        upstream = None
        # try each endpoint once, starting at the next in turn
        start = next(self._turn)
        for i in range(len(endpoints)):
            host, port = endpoints[(start + i) % len(endpoints)]
            try:
                upstream = socket.create_connection((host, port), timeout=5)
                upstream.settimeout(None)
                break
            except OSError:
                continue
        if upstream is None:
            _close(client)
            return
        with self._lock:
            self._connections.update((client, upstream))
        backwards = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        backwards.start()
        _pipe(client, upstream)
        backwards.join()
        with self._lock:
            self._connections.discard(client)
            self._connections.discard(upstream)
        _close(client)
        _close(upstream)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction until its end; then half-close the sink so the other side sees the end too."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


@dataclass
class ServiceProxies:
    """The proxies of one Service (one per port, keyed by port number)."""

    uid: str
    namespace: str
    name: str
    proxies: dict[int, PortProxy]
    port_names: dict[int, str]

    def annotations(self) -> dict[str, str]:
        result: dict[str, str] = {}
        for i, (number, proxy) in enumerate(self.proxies.items()):
            if i == 0:
                result[ADDRESS_ANNOTATION] = proxy.address
            result[f"{ADDRESS_ANNOTATION}-{self.port_names.get(number) or number}"] = proxy.address
        return result


_SERVICE_WITH_PORT = re.compile(
    r"(?<![\w.\-])([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)(?:\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)(?:\.svc(?:\.cluster\.local)?)?)?:(\d{1,5})(?!\d)"
)
_POD_UNDER_HEADLESS = re.compile(
    r"(?<![\w.\-])([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)"
    r"(?:\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)(?:\.svc(?:\.cluster\.local)?)?)?(?![\w\-]|\.[\w\-])"
)


class AddressBook:
    """Turns cluster DNS names into the local addresses that stand in for them."""

    def __init__(self, find_service: Callable[[str, str], dict | None] | None = None) -> None:
        self._find_service = find_service
        """(namespace, name) → the Service as the cache has it now, so a headless Service created a
        moment before a pod is already known when that pod starts."""
        self._lock = threading.Lock()
        self._ports: dict[tuple[str, str], dict[int, str]] = {}  # (ns, svc) → port → local address
        self._headless: set[tuple[str, str]] = set()  # (ns, svc)
        self._env: dict[str, dict[str, str]] = {}  # ns → service link variables

    def update(self, services: list[dict], proxies: dict[str, ServiceProxies]) -> None:
        ports: dict[tuple[str, str], dict[int, str]] = {}
        headless: set[tuple[str, str]] = set()
        env: dict[str, dict[str, str]] = {}
        for service in services:
            meta, spec = service["metadata"], service.get("spec") or {}
            key = (meta.get("namespace") or "default", meta["name"])
            if spec.get("clusterIP") == "None":
                headless.add(key)
                continue
            entry = proxies.get(meta.get("uid") or "")
            if entry is None:
                continue
            ports[key] = {number: proxy.address for number, proxy in entry.proxies.items()}
            variable = meta["name"].upper().replace("-", "_")
            namespace_env = env.setdefault(key[0], {})
            for i, (number, proxy) in enumerate(entry.proxies.items()):
                if i == 0:
                    namespace_env[f"{variable}_SERVICE_HOST"] = "127.0.0.1"
                    namespace_env[f"{variable}_SERVICE_PORT"] = str(proxy.port)
                port_name = entry.port_names.get(number)
                if port_name:
                    namespace_env[f"{variable}_SERVICE_PORT_{port_name.upper().replace('-', '_')}"] = str(proxy.port)
        with self._lock:
            self._ports, self._headless, self._env = ports, headless, env

    def service_environment(self, namespace: str) -> dict[str, str]:
        with self._lock:
            return dict(self._env.get(namespace, {}))

    def rewrite(self, text: str, namespace: str) -> str:
        if not text:
            return text
        with self._lock:
            ports, headless = self._ports, self._headless

        def service(match: re.Match[str]) -> str:
            name, ns, port = match.group(1), match.group(2) or namespace, int(match.group(3))
            local = ports.get((ns, name), {}).get(port)
            return local if local else match.group(0)

        def pod(match: re.Match[str]) -> str:
            hostname, subdomain, ns = match.group(1), match.group(2), match.group(3) or namespace
            if (ns, subdomain) in headless or self._is_headless(ns, subdomain):
                return deterministic_pod_ip(ns, subdomain, hostname)
            return match.group(0)

        if ports:
            text = _SERVICE_WITH_PORT.sub(service, text)
        if headless or self._find_service is not None:
            text = _POD_UNDER_HEADLESS.sub(pod, text)
        return text

    def _is_headless(self, namespace: str, name: str) -> bool:
        if self._find_service is None:
            return False
        service = self._find_service(namespace, name)
        return service is not None and (service.get("spec") or {}).get("clusterIP") == "None"
