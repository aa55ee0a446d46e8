"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

It starts the binaries of a folder laid out as controller-runtime's envtest expects
(``KUBEBUILDER_ASSETS``: ``etcd``, ``kube-apiserver`` and, here, ``kube-controller-manager``), with what
a cluster's control plane has: TLS with client certificates, RBAC, the default admission plugins
(PodSecurity, ServiceAccount, NamespaceLifecycle, ...), service-account tokens, and every controller
(Job, ReplicaSet, Deployment, garbage collector, namespace, node lifecycle, endpoints). There is no
scheduler and no kubelet: the local runner in kubelet mode plays both (``LocalRunner(kubelet_only=True)``).

In a test::

    with ControlPlane(assets) as plane:
        api = plane.api_client()                       # cluster-admin (system:masters)
        plane.write_kubeconfig(path, namespace="team-a")
        plane.service_account_kubeconfig("finetune-system", "operator", path)   # a token, RBAC applies

As a program (the demo and the tests on a real control plane, by hand)::

    python -m finetune_local.controlplane --assets "$KUBEBUILDER_ASSETS" --kubeconfig kubeconfig.yaml
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from finetune_local.kubeapi import load_manifests

log = logging.getLogger(__name__)

ASSETS_ENV = "KUBEBUILDER_ASSETS"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
SERVICE_CIDR = "10.96.0.0/16"
# The `kubernetes` Endpoints may not hold a loopback address; a documentation address avoids an error
# every 10 s, and the server still listens on 127.0.0.1 only.
ADVERTISE_ADDRESS = "192.0.2.1"
START_TIMEOUT_SECONDS = 120.0


class ControlPlaneError(RuntimeError):
    """A part did not start; the message carries the tail of its log."""


def assets_from_environment() -> Path | None:
    """The folder ``KUBEBUILDER_ASSETS`` names, when it holds the three binaries; else None."""
    value = os.environ.get(ASSETS_ENV, "").strip()
    if not value:
        return None
    folder = Path(value)
    missing = [name for name in BINARIES if not os.access(folder / name, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{ASSETS_ENV}={value} lacks {', '.join(missing)} (the envtest layout: etcd, kube-apiserver, kube-controller-manager)")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- certificates


class _Pki:
    """A certificate authority and the certificates the control plane needs, written as PEM files."""

    def __init__(self, folder: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._serialization, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "finetune-local-ca")])
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = self._write_cert("ca.crt", self.ca_cert)
        self._write_key("ca.key", self.ca_key)
        # service-account tokens are signed with an RSA key (RS256)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key_file = self._write_key("sa.key", sa_key)
        self.sa_pub_file = folder / "sa.pub"
        self.sa_pub_file.write_bytes(
            sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def issue(self, name: str, common_name: str, *, organization: str | None = None, server: bool = False) -> tuple[Path, Path]:
        """A key and a certificate signed by the CA: a serving one for 127.0.0.1/localhost, or a client one."""
        x509, NameOID = self._x509, self._oid
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.ca_key, self._hashes.SHA256())
        return self._write_cert(f"{name}.crt", cert), self._write_key(f"{name}.key", key)

    def _write_cert(self, name: str, cert: Any) -> Path:
        path = self.folder / name
        path.write_bytes(cert.public_bytes(self._serialization.Encoding.PEM))
        return path

    def _write_key(self, name: str, key: Any) -> Path:
        path = self.folder / name
        path.write_bytes(
            key.private_bytes(self._serialization.Encoding.PEM, self._serialization.PrivateFormat.PKCS8, self._serialization.NoEncryption())
        )
        path.chmod(0o600)
        return path


def kubeconfig_document(url: str, ca_file: Path, *, namespace: str = "default", user: dict[str, str], name: str = "envtest") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url, "certificate-authority": str(ca_file)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
        "current-context": name,
        "preferences": {},
    }


def _write_private(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


# ------------------------------------------------------------------------------------------- the control plane


class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager as child processes; ``start()`` / ``stop()``.

    ``assets`` is the envtest folder; ``work_dir`` holds certificates, etcd's data and the logs (a temporary
    folder, removed on ``stop()``, when not given). ``controllers`` is passed to the controller-manager's
    ``--controllers`` (``*`` runs them all).
    """

    def __init__(self, assets: str | os.PathLike[str], work_dir: str | os.PathLike[str] | None = None, *, controllers: str = "*") -> None:
        self.assets = Path(assets)
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="finetune-controlplane-"))
        self.controllers = controllers
        self.port = 0
        self.version = ""
        self._processes: dict[str, subprocess.Popen] = {}
        self._pki: _Pki | None = None
        self.admin_kubeconfig: Path | None = None

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        started = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pki = self._pki = _Pki(self.work_dir / "pki")
        serving = pki.issue("apiserver", "kube-apiserver", server=True)
        admin = pki.issue("admin", "finetune-admin", organization="system:masters")
        controller_manager = pki.issue("controller-manager", "system:kube-controller-manager")
        kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", organization="system:masters")
        front_proxy = pki.issue("front-proxy-client", "front-proxy-client")
        try:
            etcd_url = self._start_etcd()
            self.port = free_port()
            self._start(
                "kube-apiserver",
                [
                    str(self.assets / "kube-apiserver"),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    f"--advertise-address={ADVERTISE_ADDRESS}",
                    f"--secure-port={self.port}",
                    f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                    f"--tls-cert-file={serving[0]}",
                    f"--tls-private-key-file={serving[1]}",
                    f"--client-ca-file={pki.ca_file}",
                    f"--requestheader-client-ca-file={pki.ca_file}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={front_proxy[0]}",
                    f"--proxy-client-key-file={front_proxy[1]}",
                    f"--kubelet-client-certificate={kubelet_client[0]}",
                    f"--kubelet-client-key={kubelet_client[1]}",
                    f"--kubelet-certificate-authority={pki.ca_file}",
                    "--authorization-mode=Node,RBAC",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki.sa_pub_file}",
                    f"--service-account-signing-key-file={pki.sa_key_file}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--allow-privileged=true",
                    "--event-ttl=1h",
                ],
            )
            self.admin_kubeconfig = self._kubeconfig_file("admin.kubeconfig", {"client-certificate": str(admin[0]), "client-key": str(admin[1])})
            self._wait_ready("kube-apiserver", "/readyz")
            cm_kubeconfig = self._kubeconfig_file(
                "controller-manager.kubeconfig", {"client-certificate": str(controller_manager[0]), "client-key": str(controller_manager[1])}
            )
            self._start(
                "kube-controller-manager",
                [
                    str(self.assets / "kube-controller-manager"),
                    f"--kubeconfig={cm_kubeconfig}",
                    f"--authentication-kubeconfig={cm_kubeconfig}",
                    f"--authorization-kubeconfig={cm_kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    f"--cert-dir={self.work_dir / 'controller-manager-certs'}",
                    "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki.sa_key_file}",
                    f"--root-ca-file={pki.ca_file}",
                    f"--cluster-signing-cert-file={pki.ca_file}",
                    f"--cluster-signing-key-file={pki.folder / 'ca.key'}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    f"--controllers={self.controllers}",
                ],
            )
            self._wait_default_service_account()
            self.version = self._get_json("/version").get("gitVersion", "")
        except BaseException:
            self.stop()
            raise
        log.info("%s (started in %.1f s)", self.describe(), time.monotonic() - started)
        return self

    def stop(self) -> None:
        """SIGTERM each part (controller-manager first), SIGKILL after 10 s; remove the work dir if it is ours."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            process = self._processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # access ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        assert self._pki is not None, "not started"
        return self._pki.ca_file

    def describe(self) -> str:
        """One line naming the server: ``Kubernetes API server  https://127.0.0.1:P  (kube-apiserver v1.36.2)``."""
        return f"Kubernetes API server  {self.url}  (kube-apiserver {self.version or '?'})"

    def write_kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> Path:
        """A cluster-admin kubeconfig (client certificate in ``system:masters``), for kubectl and the client."""
        document = yaml.safe_load(self.admin_kubeconfig.read_text())  # type: ignore[union-attr]
        document["contexts"][0]["context"]["namespace"] = namespace
        return _write_private(Path(path), yaml.safe_dump(document, sort_keys=False))

    def api_client(self, kubeconfig: str | os.PathLike[str] | None = None) -> Any:
        """A new ``kubernetes.client.ApiClient`` (cluster-admin unless ``kubeconfig`` names another user)."""
        import kubernetes

        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig or self.admin_kubeconfig), client_configuration=configuration)
        return kubernetes.client.ApiClient(configuration)

    def service_account_kubeconfig(self, namespace: str, name: str, path: str | os.PathLike[str], *,
                                   context_namespace: str | None = None, expiration_seconds: int = 86400) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount ``namespace/name`` with a bound token
        (TokenRequest), as a pod of that ServiceAccount would: RBAC decides what it may do."""
        import kubernetes

        with self.api_client() as api:
            token = kubernetes.client.CoreV1Api(api).create_namespaced_service_account_token(
                name, namespace, {"spec": {"audiences": [], "expirationSeconds": expiration_seconds}}
            ).status.token
        document = kubeconfig_document(self.url, self.ca_file, namespace=context_namespace or namespace, user={"token": token})
        return _write_private(Path(path), yaml.safe_dump(document, sort_keys=False))

    def user_kubeconfig(self, user: str, path: str | os.PathLike[str], *, groups: Iterable[str] = (), namespace: str = "default") -> Path:
        """A kubeconfig with a client certificate for ``user`` (in ``groups``): a person bound by RBAC."""
        assert self._pki is not None, "not started"
        safe = "".join(ch if ch.isalnum() else "-" for ch in user)
        cert, key = self._pki.issue(f"user-{safe}", user, organization=",".join(groups) or None)
        document = kubeconfig_document(self.url, self.ca_file, namespace=namespace, user={"client-certificate": str(cert), "client-key": str(key)})
        return _write_private(Path(path), yaml.safe_dump(document, sort_keys=False))

    def apply(self, documents: Iterable[dict[str, Any]], field_manager: str = "finetune-tests") -> list[dict[str, Any]]:
        """Server-side apply each object (forced), like ``kubectl apply --server-side --force-conflicts``."""
        import kubernetes

        results = []
        with self.api_client() as api:
            dynamic = kubernetes.dynamic.DynamicClient(api)
            for document in documents:
                resource = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
                namespace = (document.get("metadata") or {}).get("namespace") or ("default" if resource.namespaced else None)
                applied = resource.server_side_apply(body=document, namespace=namespace, field_manager=field_manager, force_conflicts=True)
                results.append(applied.to_dict())
                if document["kind"] == "CustomResourceDefinition":
                    self.wait_established(document["metadata"]["name"])
        return results

    def apply_path(self, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        return self.apply(load_manifests(path))

    def wait_established(self, crd_name: str, timeout: float = 30.0) -> None:
        """Wait until a CRD is Established and its kind served (discovery answers for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            crd = self._get_json(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}", missing_ok=True)
            conditions = {c.get("type"): c.get("status") for c in ((crd or {}).get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                spec = crd["spec"]
                served = [v["name"] for v in spec["versions"] if v.get("served")]
                if all(self._get_json(f"/apis/{spec['group']}/{v}", missing_ok=True) for v in served):
                    return
            time.sleep(0.1)
        raise ControlPlaneError(f"CustomResourceDefinition {crd_name} was not Established within {timeout:.0f} s")

    def log_tail(self, part: str, characters: int = 4000) -> str:
        path = self.work_dir / "logs" / f"{part}.log"
        try:
            return path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    # internals ---------------------------------------------------------------------------------

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        (self.work_dir / "logs").mkdir(exist_ok=True)
        with open(self.work_dir / "logs" / f"{name}.log", "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # noqa: S603
        self._processes[name] = process
        return process

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        self._start(
            "etcd",
            [
                str(self.assets / "etcd"),
                "--name=finetune-local",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            self._check_alive("etcd")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if json.loads(response.read()).get("health") == "true":
                        return url
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"etcd did not become healthy:\n{self.log_tail('etcd')}")
            time.sleep(0.1)

    def _kubeconfig_file(self, name: str, user: dict[str, str]) -> Path:
        document = kubeconfig_document(self.url, self.ca_file, user=user)
        return _write_private(self.work_dir / name, yaml.safe_dump(document, sort_keys=False))

    def _ssl_context(self) -> ssl.SSLContext:
        assert self._pki is not None
        context = ssl.create_default_context(cafile=str(self._pki.ca_file))
        context.load_cert_chain(self._pki.folder / "admin.crt", self._pki.folder / "admin.key")
        return context

    def _get_json(self, path: str, missing_ok: bool = False) -> Any:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", context=self._ssl_context(), timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if missing_ok and error.code == 404:
                return None
            raise

    def _check_alive(self, name: str) -> None:
        process = self._processes.get(name)
        if process is not None and process.poll() is not None:
            raise ControlPlaneError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def _wait_ready(self, name: str, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            self._check_alive(name)
            try:
                with urllib.request.urlopen(f"{self.url}{path}", context=self._ssl_context(), timeout=5) as response:
                    if response.status == 200:
                        return
            except (OSError, ssl.SSLError):
                pass
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{name} did not answer {path} within {START_TIMEOUT_SECONDS:.0f} s:\n{self.log_tail(name)}")
            time.sleep(0.2)

    def _wait_default_service_account(self) -> None:
        """The controller-manager is at work once it has made the ``default`` ServiceAccount."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            self._check_alive("kube-controller-manager")
            try:
                if self._get_json("/api/v1/namespaces/default/serviceaccounts/default", missing_ok=True):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"kube-controller-manager made no default ServiceAccount:\n{self.log_tail('kube-controller-manager')}")
            time.sleep(0.2)


OPERATOR_NAMESPACE = "finetune-system"
OPERATOR_SERVICE_ACCOUNT = "finetune-operator"


def operator_rbac_documents(namespace: str = OPERATOR_NAMESPACE, name: str = OPERATOR_SERVICE_ACCOUNT) -> list[dict[str, Any]]:
    """The operator's ServiceAccount, a ClusterRole with exactly ``finetune_operator.kube.REQUIRED_PERMISSIONS``
    (what the chart grants; a chart test holds the two equal) and the binding between them."""
    from finetune_operator.kube import REQUIRED_PERMISSIONS

    rules = [rule for rule in REQUIRED_PERMISSIONS if rule["apiGroups"] != ["kopf.dev"]]  # standalone: no peering
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def grant_operator(plane: ControlPlane, path: str | os.PathLike[str], rbac_documents: list[dict[str, Any]] | None = None) -> Path:
    """Create the operator's identity (``rbac_documents``, by default ``operator_rbac_documents()``: one
    ServiceAccount and its roles) and write a kubeconfig that authenticates as that ServiceAccount with a
    token, as the operator's pod would: the API server's RBAC then decides every call it makes."""
    documents = rbac_documents if rbac_documents is not None else operator_rbac_documents()
    accounts = [d for d in documents if d["kind"] == "ServiceAccount"]
    if len(accounts) != 1:
        raise ValueError(f"expected one ServiceAccount among the operator's RBAC documents, found {len(accounts)}")
    namespace = accounts[0]["metadata"].get("namespace") or OPERATOR_NAMESPACE
    plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
    plane.apply([{**d, "metadata": {**d["metadata"], "namespace": d["metadata"].get("namespace") or namespace}}
                 if d["kind"] in ("ServiceAccount", "Role", "RoleBinding") else d for d in documents])  # fmt: skip
    return plane.service_account_kubeconfig(namespace, accounts[0]["metadata"]["name"], path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_local.controlplane", description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=os.environ.get(ASSETS_ENV), help=f"the envtest folder (default: ${ASSETS_ENV})")
    parser.add_argument("--kubeconfig", required=True, help="write a cluster-admin kubeconfig here")
    parser.add_argument("--work-dir", help="certificates, etcd data and logs (default: a temporary folder)")
    parser.add_argument("--manifests", action="append", default=[], help="a YAML file or folder to apply once up; may repeat")
    args = parser.parse_args(argv)
    if not args.assets:
        parser.error(f"--assets or ${ASSETS_ENV} is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    plane = ControlPlane(args.assets, args.work_dir)
    done = False

    def finish(*_: object) -> None:
        nonlocal done
        done = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, finish)
    plane.start()
    try:
        plane.write_kubeconfig(args.kubeconfig)
        for path in args.manifests:
            plane.apply_path(path)
        print(plane.describe(), flush=True)
        print(f"kubeconfig written to {args.kubeconfig}", flush=True)
        while not done:
            time.sleep(0.5)
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
