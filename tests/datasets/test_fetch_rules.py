"""A Dataset's https:// source is a URL its tenant chose: what the validator's fetch refuses, told as the attacks.

A tenant who may name a Secret in a spec (but not read it) tries to have the pod send the token somewhere it
can read: over plain http, through a redirect to another host or down to http, or to the node's metadata
service and the cluster's own addresses. Each is refused with the rule in the report, and the token never
appears in a message. The servers are real, on loopback, over TLS where the story needs https.
"""

from __future__ import annotations

import http.server
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_trainer.contract import ValidateConfig
from finetune_trainer.data.sources import SourceError, open_source
from finetune_trainer.data.validate_cmd import validate_dataset
from finetune_trainer.outbound import MAX_REDIRECTS, address_problem
from finetune_trainer.storage import ObjectStore
from tests.tls import LoopbackServer

from .conftest import chat_line

TOKEN = "secret-token-7c41"
DATA = "".join(chat_line(i) + "\n" for i in range(12)).encode()


class RecordingServer:
    """A loopback server that records every request (path, Authorization, Host). ``/data.jsonl`` is the data,
    ``/private/data.jsonl`` the data for a bearer of TOKEN only, ``/to?url=U`` redirects to U, ``/loop`` to itself."""

    def __init__(self, certificate: tuple[Path, Path] | None = None):
        self.requests: list[tuple[str, str | None, str | None]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                recorder.requests.append((self.path, self.headers.get("Authorization"), self.headers.get("Host")))
                parsed = urllib.parse.urlsplit(self.path)
                if parsed.path == "/to":
                    return self._redirect(urllib.parse.parse_qs(parsed.query)["url"][0])
                if parsed.path == "/loop":
                    return self._redirect("/loop")
                if parsed.path == "/private/data.jsonl" and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(401, b"")
                if parsed.path in ("/data.jsonl", "/private/data.jsonl"):
                    return self._answer(200, DATA)
                self._answer(404, b"")

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.loopback = LoopbackServer(Handler, certificate)
        self.port, self.url, self.stop = self.loopback.port, self.loopback.url, self.loopback.stop

    def redirect(self, to: str) -> str:
        return f"{self.url}/to?url={urllib.parse.quote(to, safe='')}"


@pytest.fixture
def servers(certificate, monkeypatch) -> Iterator[dict[str, RecordingServer]]:
    """Two https servers (two origins: another port is another origin) and a plain http one, all trusted."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    made = {"a": RecordingServer(certificate), "b": RecordingServer(certificate), "plain": RecordingServer()}
    yield made
    for server in made.values():
        server.stop()


@pytest.fixture
def token_dir(tmp_path: Path) -> str:
    folder = tmp_path / "source-credentials"
    folder.mkdir()
    (folder / "token").write_text(TOKEN + "\n")
    return str(folder)


def validate(uri: str, out: Path, **more) -> object:
    config = {"source": uri, "outputUri": str(out / "datasets"), "reportUri": str(out / "report.json"), **more}
    return validate_dataset(ValidateConfig.model_validate(config), ObjectStore())


def fetch(uri: str, **options) -> bytes:
    with open_source(uri, **options) as source:
        return source.stream.read()


# -- Tokens --------------------------------------------------------------------------------------


def test_a_token_is_never_sent_over_plain_http(tmp_path, servers, token_dir):
    plain = servers["plain"]
    report = validate(f"{plain.url}/private/data.jsonl", tmp_path, sourceCredentialsDir=token_dir, allowPrivateUrls=True)

    assert not report.is_check_passed and not report.retryable
    assert report.errors[0].rule == "token_needs_https"
    assert "only over https" in report.message and TOKEN not in report.model_dump_json()
    assert plain.requests == [], "nothing may be sent before the rule is checked"


def test_a_redirect_to_another_host_does_not_carry_the_token(tmp_path, servers, token_dir):
    a, b = servers["a"], servers["b"]
    report = validate(a.redirect(f"{b.url}/data.jsonl"), tmp_path, sourceCredentialsDir=token_dir, allowPrivateUrls=True)

    assert report.is_check_passed and report.num_samples == 12
    assert [auth for _, auth, _ in a.requests] == [f"Bearer {TOKEN}"]
    assert b.requests == [("/data.jsonl", None, f"127.0.0.1:{b.port}")], "another origin never sees the token"


def test_a_redirect_from_https_down_to_http_does_not_carry_the_token(servers, token_dir):
    a, plain = servers["a"], servers["plain"]
    assert fetch(a.redirect(f"{plain.url}/data.jsonl"), credentials_dir=token_dir, allow_private_urls=True) == DATA
    assert [auth for _, auth, _ in plain.requests] == [None]


def test_a_redirect_within_the_same_origin_keeps_the_token(servers, token_dir):
    a = servers["a"]
    assert fetch(a.redirect("/private/data.jsonl"), credentials_dir=token_dir, allow_private_urls=True) == DATA
    assert [auth for _, auth, _ in a.requests] == [f"Bearer {TOKEN}"] * 2


def test_redirects_are_followed_a_few_times_only(servers):
    a = servers["a"]
    with pytest.raises(SourceError) as refused:
        fetch(f"{a.url}/loop", allow_private_urls=True)

    assert refused.value.rule == "redirect_refused" and f"more than {MAX_REDIRECTS} redirects" in refused.value.message
    assert len(a.requests) == MAX_REDIRECTS + 1


def test_a_redirect_to_the_metadata_service_or_a_file_is_refused(servers):
    a = servers["a"]
    with pytest.raises(SourceError) as metadata:
        fetch(a.redirect("http://169.254.169.254/latest/meta-data/iam/"), allow_private_urls=True)
    assert metadata.value.rule == "address_refused" and "169.254.169.254 is a link-local address" in metadata.value.message
    assert "redirects to http://169.254.169.254/latest/meta-data/iam/" in metadata.value.message

    with pytest.raises(SourceError) as local_file:
        fetch(a.redirect("file:///etc/passwd"), allow_private_urls=True)
    assert local_file.value.rule == "redirect_refused" and "only http:// and https://" in local_file.value.message


# -- Addresses -----------------------------------------------------------------------------------


def test_loopback_and_names_that_resolve_to_it_are_refused_unless_the_admin_allows_them(tmp_path, servers):
    plain = servers["plain"]
    by_address = validate(f"{plain.url}/data.jsonl", tmp_path / "address")
    assert by_address.errors[0].rule == "address_refused" and not by_address.retryable
    assert "127.0.0.1 is a loopback address" in by_address.message and "FINETUNE_ALLOW_PRIVATE_URLS" in by_address.message

    by_name = validate(f"http://localhost:{plain.port}/data.jsonl", tmp_path / "name")
    assert by_name.errors[0].rule == "address_refused" and "localhost resolves to" in by_name.message
    assert plain.requests == []

    allowed = validate(f"http://localhost:{plain.port}/data.jsonl", tmp_path / "allowed", allowPrivateUrls=True)
    assert allowed.is_check_passed and allowed.num_samples == 12


def test_the_address_checked_is_the_address_connected_to(servers, monkeypatch):
    """DNS rebinding: a name that answers a harmless address to the check and the metadata service to the
    connect. The pod resolves once and connects to what it checked."""
    plain = servers["plain"]
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["127.0.0.1", "169.254.169.254", "169.254.169.254"])
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebinding.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        return real_getaddrinfo(next(answers), port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    assert fetch(f"http://rebinding.test:{plain.port}/data.jsonl", allow_private_urls=True) == DATA
    assert lookups == ["rebinding.test"]
    assert plain.requests == [("/data.jsonl", None, f"rebinding.test:{plain.port}")]


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.8", "172.16.3.4", "192.168.0.1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1",
     "::1", "::", "fc00::1", "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::"],
)  # fmt: skip
def test_private_reserved_and_loopback_addresses_are_refused_ipv4_and_ipv6(address):
    assert address_problem(address) is not None
    assert address_problem(address, allow_private=True) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"])
def test_link_local_addresses_are_refused_even_where_private_ones_are_allowed(address):
    assert "link-local" in address_problem(address, allow_private=True)


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address):
    assert address_problem(address) is None
