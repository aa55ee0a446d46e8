"""Errors the server answers with, in the shape of OpenAI's API.

Every non-2xx answer is ``{"error": {"message", "type", "param", "code"}}``, so any OpenAI client raises
the matching exception (``BadRequestError``, ``AuthenticationError``, ``NotFoundError``,
``RateLimitError``...) with a readable message.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error answered to the client: an HTTP status plus OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str, detail: str | None = None) -> APIError:
    message = f"The model `{model}` does not exist or you do not have access to it."
    if detail:
        message = f"{message} {detail}"
    return APIError(404, message, "invalid_request_error", "model", "model_not_found")


def unauthorized(provided: bool) -> APIError:
    if provided:
        message = "Incorrect API key provided. Send `Authorization: Bearer <key>` with the endpoint's API key."
    else:
        message = "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
    return APIError(401, message, "invalid_request_error", None, "invalid_api_key")


def queue_full(max_queue: int) -> APIError:
    return APIError(
        429,
        f"The server is busy: {max_queue} requests are already waiting (maxQueue). Retry after a short wait.",
        "requests",
        None,
        "rate_limit_exceeded",
    )


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than {limit} bytes (maxBodyBytes).", "invalid_request_error", None, "request_too_large")


def body_not_json(problem: str) -> APIError:
    return APIError(
        400,
        f"We could not parse the JSON body of your request ({problem}). The body must be a JSON object (Content-Type: application/json).",
        "invalid_request_error",
        None,
        "invalid_json",
    )


def body_too_deep(limit: int) -> APIError:
    return APIError(
        400, f"The JSON body is nested more than {limit} arrays and objects deep.", "invalid_request_error", None, "json_too_deep"
    )


def unavailable(message: str) -> APIError:
    return APIError(503, message, "server_error", None, "service_unavailable")
