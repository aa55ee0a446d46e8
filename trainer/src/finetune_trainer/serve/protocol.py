"""Request bodies of the OpenAI API the server speaks, checked strictly, with errors naming the field.

Unknown fields are ignored (as vLLM does); known fields with the wrong type or out of range are a 400
that names the field. Options the builtin runtime does not implement (tools, logprobs, penalties...)
are refused with a 400 rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from finetune_trainer.serve.errors import APIError, bad_request

MAX_STOP_SEQUENCES = 16
MAX_PROMPTS = 64
MAX_CHOICES = 16


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False


class _GenerationRequest(_Body):
    model: str = Field(min_length=1, max_length=512)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stop: Any = Field(default=None, validate_default=True)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ValueError("must be a string or a list of strings")
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in value):
            raise ValueError("stop sequences must not be empty")
        return value

    def unsupported(self) -> list[tuple[str, str]]:
        """(field, why) for each option the builtin runtime cannot honour."""
        found = []
        if self.presence_penalty:
            found.append(("presence_penalty", "penalties are not supported by the builtin runtime"))
        if self.frequency_penalty:
            found.append(("frequency_penalty", "penalties are not supported by the builtin runtime"))
        if self.logit_bias:
            found.append(("logit_bias", "logit_bias is not supported by the builtin runtime"))
        extra = self.model_extra or {}
        if extra.get("logprobs") or extra.get("top_logprobs"):
            found.append(("logprobs", "logprobs are not supported by the builtin runtime"))
        if extra.get("tools") or extra.get("functions"):
            found.append(("tools", "tool calling is not supported by the builtin runtime"))
        if (extra.get("best_of") or 1) != 1:
            found.append(("best_of", "best_of is not supported by the builtin runtime"))
        fmt = extra.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            found.append(("response_format", "only response_format {\"type\": \"text\"} is supported by the builtin runtime"))
        if extra.get("echo"):
            found.append(("echo", "echo is not supported by the builtin runtime"))
        if extra.get("suffix"):
            found.append(("suffix", "suffix is not supported by the builtin runtime"))
        return found


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> str:
        """A string, or a list of ``{"type": "text", "text": ...}`` parts (joined with newlines)."""
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError('content parts must be {"type": "text", "text": "..."}; other part types are not supported')
                texts.append(part["text"])
            return "\n".join(texts)
        raise ValueError("must be a string or a list of text parts")


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: Any

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> list[str | list[int]]:
        """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value:
            if all(isinstance(p, str) for p in value):
                prompts = value
            elif all(isinstance(t, int) and not isinstance(t, bool) for t in value):
                prompts = [value]
            elif all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in value):
                prompts = value
            else:
                raise ValueError("must be a string, a list of strings, a list of token ids or a list of lists of token ids")
            if len(prompts) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
            return prompts
        raise ValueError("must be a non-empty string, list of strings, or list of token ids")

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


class LoadAdapterRequest(_Body):
    lora_name: str = Field(min_length=1, max_length=253)
    lora_path: str = Field(min_length=1, max_length=2048)


class UnloadAdapterRequest(_Body):
    lora_name: str = Field(min_length=1, max_length=253)


def parse_body(model: type[BaseModel], body: Any) -> Any:
    """Validate a decoded JSON body; a ``400`` naming the first bad field otherwise."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise validation_error(e) from None


def validation_error(e: ValidationError) -> APIError:
    first = e.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    return bad_request(f"Invalid value for '{param}': {message}.", param, "invalid_value")
