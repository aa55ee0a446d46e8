"""Clients for OpenAI-compatible endpoints (the models under evaluation and the llm_judge).

An endpoint the operator resolved from an InferenceEndpoint of the namespace (``trustedEndpoint``: a Service it
made itself) is called as it is. Any other endpoint is a URL a tenant chose (an llm_judge's ``url``, a
hand-written config) and is held to ``finetune_trainer.outbound``'s rules: its API key goes only over https,
its host may not resolve to a loopback, link-local or private address unless the admin allows private
addresses (checked before the first request and again at every connection, redirects included, each to the
address checked), and a redirect is followed at most ``MAX_REDIRECTS`` times, never carrying the key to another
origin.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from finetune_trainer.contract import EvalModel
from finetune_trainer.evaluate.errors import BadInput, SampleError
from finetune_trainer.outbound import MAX_REDIRECTS, URLRefused, checked_addresses, redact

REQUEST_TIMEOUT_SECONDS = 120.0
MAX_RETRIES = 2
NO_API_KEY = "none"
"""Sent when no key file is configured (the client needs some key; open endpoints ignore it)."""


def read_api_key(model: EvalModel) -> str:
    """The API key from the mounted key file; never logged."""
    if not model.api_key_file:
        return NO_API_KEY
    try:
        key = Path(model.api_key_file).read_text().strip()
    except OSError as e:
        raise BadInput("InvalidModel", f"model {model.name!r}: cannot read apiKeyFile: {e.strerror}") from None
    if not key:
        raise BadInput("InvalidModel", f"model {model.name!r}: apiKeyFile is empty")
    return key


def openai_client(model: EvalModel, allow_private_urls: bool = False):
    """An ``openai.OpenAI`` client for ``model.endpoint`` (a few retries with backoff, a per-request timeout);
    raises ``BadInput`` (EndpointRefused) for a tenant's URL the rules refuse."""
    import openai

    http_client = None
    if not model.trusted_endpoint:
        check_endpoint(model, allow_private_urls)
        http_client = checked_http_client(allow_private_urls)
    return openai.OpenAI(
        base_url=model.endpoint,
        api_key=read_api_key(model),
        timeout=REQUEST_TIMEOUT_SECONDS,
        max_retries=MAX_RETRIES,
        http_client=http_client,
    )


def check_endpoint(model: EvalModel, allow_private_urls: bool) -> None:
    """Refuse, before any request, a tenant's URL that would send its key over plain http or reach a refused
    address (a name that does not resolve now is left to the connection: it may be a passing DNS failure)."""
    parts = urllib.parse.urlsplit(model.endpoint or "")
    shown = redact(model.endpoint or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("EndpointRefused", f"model {model.name!r}: {shown} is not an http(s):// URL")
    if model.api_key_file and parts.scheme != "https":
        raise BadInput(
            "EndpointRefused", f"model {model.name!r}: its API key is sent only over https, and {shown} is plain http (token_needs_https)"
        )
    try:
        checked_addresses(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), allow_private_urls)
    except URLRefused as e:
        raise BadInput("EndpointRefused", f"model {model.name!r}: {shown}: {e.message} ({e.rule})") from None
    except OSError:
        pass


def checked_http_client(allow_private_urls: bool):
    """An ``httpx2.Client`` whose every connection goes to an address resolved once and checked (redirects
    included), following at most ``MAX_REDIRECTS`` redirects. httpx drops ``Authorization`` on a redirect to
    another origin (scheme, host or port), keeping it only for an upgrade from http to https on the same host."""
    import httpcore2
    import httpx2

    class CheckedBackend(httpcore2.SyncBackend):
        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            try:
                infos = checked_addresses(host, port, allow_private_urls)
            except URLRefused as e:
                raise httpcore2.ConnectError(f"{e.message} ({e.rule})") from None
            except OSError as e:
                raise httpcore2.ConnectError(str(e)) from None
            failure: Exception | None = None
            for info in infos:
                try:
                    return super().connect_tcp(info[4][0], port, timeout, local_address, socket_options)
                except httpcore2.ConnectError as e:
                    failure = e
            raise failure or httpcore2.ConnectError(f"cannot connect to {host}:{port}")

    transport = httpx2.HTTPTransport()
    # The pool HTTPTransport made, again with the checking backend (HTTPTransport takes no backend itself).
    transport._pool = httpcore2.ConnectionPool(ssl_context=httpx2.create_ssl_context(), network_backend=CheckedBackend())
    return httpx2.Client(transport=transport, follow_redirects=True, max_redirects=MAX_REDIRECTS, timeout=REQUEST_TIMEOUT_SECONDS)


def request_error(e: Exception, unreachable: str, failed: str) -> SampleError:
    """A per-sample error for a failed request: ``unreachable`` for connection problems, ``failed`` for HTTP errors."""
    import openai

    if isinstance(e, openai.APIConnectionError):  # includes timeouts, and an address refused at connect time
        cause = f" ({e.__cause__})" if e.__cause__ is not None and str(e.__cause__) else ""
        return SampleError(unreachable, f"{type(e).__name__}: {e}{cause}"[:600])
    if isinstance(e, openai.APIStatusError):
        return SampleError(failed, f"HTTP {e.status_code}: {str(e)[:300]}")
    return SampleError(failed, f"{type(e).__name__}: {str(e)[:300]}")
