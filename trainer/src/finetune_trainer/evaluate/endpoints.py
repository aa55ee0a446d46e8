"""Clients for OpenAI-compatible endpoints (the models under evaluation and the llm_judge)."""

from __future__ import annotations

from pathlib import Path

from finetune_trainer.contract import EvalModel
from finetune_trainer.evaluate.errors import BadInput, SampleError

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


def openai_client(model: EvalModel):
    """An ``openai.OpenAI`` client for ``model.endpoint`` (a few retries with backoff, a per-request timeout)."""
    import openai

    return openai.OpenAI(
        base_url=model.endpoint,
        api_key=read_api_key(model),
        timeout=REQUEST_TIMEOUT_SECONDS,
        max_retries=MAX_RETRIES,
    )


def request_error(e: Exception, unreachable: str, failed: str) -> SampleError:
    """A per-sample error for a failed request: ``unreachable`` for connection problems, ``failed`` for HTTP errors."""
    import openai

    if isinstance(e, openai.APIConnectionError):  # includes timeouts
        return SampleError(unreachable, f"{type(e).__name__}: {e}")
    if isinstance(e, openai.APIStatusError):
        return SampleError(failed, f"HTTP {e.status_code}: {str(e)[:300]}")
    return SampleError(failed, f"{type(e).__name__}: {str(e)[:300]}")
