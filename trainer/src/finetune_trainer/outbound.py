"""Requests from a tenant's pod to a URL the tenant chose: the pod's own line of defence behind the operator's.

The operator refuses a spec whose URL names a loopback, link-local or private address before any pod runs
(``finetune_operator.tenancy.check_url``), but it cannot see what a host name resolves to inside the pod, nor
where a server redirects. Every fetch of a tenant-given URL (a Dataset's ``https://`` source, a tokenizer, an
llm_judge's ``url``) therefore goes through here:

* a bearer token travels only over https (rule ``token_needs_https``): an ``http://`` URL with a token is
  refused before anything is sent;
* the host is resolved once, every address it resolves to is checked, and the connection goes to the checked
  address itself, so a DNS server that answers differently the second time (rebinding) gains nothing.
  Loopback, private, shared (``100.64.0.0/10``), reserved, multicast and unspecified addresses, IPv4 and IPv6,
  are refused (rule ``address_refused``), also when an IPv6 address carries an IPv4 one (IPv4-mapped, 6to4,
  NAT64), unless the admin allows private addresses (``FINETUNE_ALLOW_PRIVATE_URLS``, passed to the pod as
  ``allowPrivateUrls``); link-local ones (``169.254.0.0/16``, ``fe80::/10``: the cloud metadata service) are
  refused even then, as no dataset or judge lives there;
* redirects are followed at most ``MAX_REDIRECTS`` times, to ``http(s)://`` only, each target checked as the
  first URL was (rule ``redirect_refused``); the token goes only to the origin (scheme, host and port) it was
  given for: never to another host or port, never over plain http after a redirect from https.

Proxies from the environment are not used: a proxy would resolve the name itself, out of reach of the check.
Standard library only.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.parse

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ALLOW_PRIVATE_HINT = "the admin may allow private addresses (FINETUNE_ALLOW_PRIVATE_URLS)"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class URLRefused(Exception):
    """A request this module will not make; ``rule`` names the rule, the message says why (never a secret)."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule
        self.message = message


def redact(uri: str) -> str:
    """The URI without user info, query string or fragment (where signatures and tokens live)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or parts.scheme == "file":
        return uri
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host = f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


# ----------------------------------------------------------------------------------------------
# Addresses


def _addresses_within(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """What to judge an address by: an IPv6 address that stands for an IPv4 one (IPv4-mapped, NAT64) by that
    IPv4 address; a 6to4 one by itself and the IPv4 address it carries; any other by itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]
        if address in _NAT64:
            return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
        if address.sixtofour is not None:
            return [address, address.sixtofour]
    return [address]


def address_problem(text: str, allow_private: bool = False) -> str | None:
    """Why a pod may not connect to this address (``"127.0.0.1 is a loopback address; ..."``); None when it may.
    Link-local addresses (the node's metadata service) are refused even where private ones are allowed."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return f"{text} is not an IP address"
    for candidate in _addresses_within(address):
        if candidate.is_link_local:
            return f"{text} is a link-local address (the cloud metadata service lives there): never fetched"
        if allow_private:
            continue
        kind = (
            "an unspecified" if candidate.is_unspecified
            else "a loopback" if candidate.is_loopback
            else "a multicast" if candidate.is_multicast
            else "a private" if candidate.is_private
            else "a reserved" if candidate.is_reserved or not candidate.is_global
            else None
        )  # fmt: skip
        if kind is not None:
            return f"{text} is {kind} address; {ALLOW_PRIVATE_HINT}"
    return None


def checked_addresses(host: str, port: int, allow_private: bool) -> list[tuple]:
    """``getaddrinfo`` of ``host`` (resolved once), after checking every address; raises ``URLRefused`` when any
    of them is one a pod may not reach, ``OSError`` when the name does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host}: {e.strerror}") from None
    for info in infos:
        problem = address_problem(info[4][0], allow_private)
        if problem is not None:
            raise URLRefused("address_refused", problem if host == info[4][0] else f"{host} resolves to {problem}")
    return infos


def connect_checked(host: str, port: int, timeout: float | None, allow_private: bool) -> socket.socket:
    """A TCP connection to ``host``: to one of the addresses just resolved and checked, never to a new lookup."""
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in checked_addresses(host, port, allow_private):
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not None and timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last or OSError(f"cannot connect to {host}:{port}")


# ----------------------------------------------------------------------------------------------
# HTTP


class _CheckedConnection:
    """Mixed into ``http.client``'s connections: the TCP connection goes to a checked address; TLS (SNI and the
    certificate check) and the Host header still use the name in the URL."""

    allow_private = False

    def _checked_create_connection(self, address, timeout, source_address=None):  # http.client's hook
        return connect_checked(address[0], address[1], timeout, self.allow_private)


class CheckedHTTPConnection(_CheckedConnection, http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, timeout: float, allow_private: bool):
        super().__init__(host, port, timeout=timeout)
        self.allow_private = allow_private
        self._create_connection = self._checked_create_connection


class CheckedHTTPSConnection(_CheckedConnection, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, timeout: float, allow_private: bool):
        super().__init__(host, port, timeout=timeout)
        self.allow_private = allow_private
        self._create_connection = self._checked_create_connection


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def _split(url: str, rule: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise URLRefused(rule, f"{redact(url)}: the port is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise URLRefused(rule, f"{redact(url)}: only http:// and https:// URLs with a host are fetched")
    return parts


def _get(parts: urllib.parse.SplitResult, headers: dict[str, str], timeout: float, allow_private: bool) -> http.client.HTTPResponse:
    kind = CheckedHTTPSConnection if parts.scheme == "https" else CheckedHTTPConnection
    connection = kind(parts.hostname or "", parts.port, timeout, allow_private)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
    except BaseException:
        connection.close()
        raise
    # The response reads from its own file object; the socket closes when the response does (as urllib does).
    if connection.sock is not None:
        connection.sock.close()
        connection.sock = None
    return response


def open_url(
    url: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    allow_private: bool = False,
    max_redirects: int = MAX_REDIRECTS,
) -> http.client.HTTPResponse:
    """GET ``url`` under the rules of this module and return the final response, whatever its status (the caller
    reads ``status`` and closes it). ``token`` is sent as ``Authorization: Bearer`` to ``url``'s own origin only.

    Raises ``URLRefused`` (a rule refuses the request), ``OSError`` or ``http.client.HTTPException`` (the server
    could not be reached or answered garbage)."""
    parts = _split(url, "url_refused")
    if token and parts.scheme != "https":
        raise URLRefused(
            "token_needs_https", f"{redact(url)}: a token is sent only over https, and this URL is plain http; use https://"
        )
    token_origin = _origin(parts)
    current = url
    for hop in range(max_redirects + 1):
        sent = dict(headers or {})
        if token and _origin(parts) == token_origin:
            sent["Authorization"] = f"Bearer {token}"
        try:
            response = _get(parts, sent, timeout, allow_private)
        except URLRefused as e:
            if hop == 0:
                raise
            raise URLRefused(e.rule, f"{redact(url)} redirects to {redact(current)}: {e.message}") from None
        location = response.getheader("Location") if response.status in REDIRECT_STATUSES else None
        if not location:
            return response
        response.close()
        current = urllib.parse.urljoin(current, location.strip())
        try:
            parts = _split(current, "redirect_refused")
        except URLRefused as e:
            raise URLRefused(e.rule, f"{redact(url)} redirects to {e.message}") from None
    raise URLRefused("redirect_refused", f"{redact(url)}: more than {max_redirects} redirects")
