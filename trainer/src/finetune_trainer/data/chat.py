"""Chat formatting with the base model's chat template, and where each assistant turn lies in the tokens.

Real chat templates rarely carry ``{% generation %}`` markers, so the assistant spans are found the way
that works for any template that renders a conversation left to right: render the conversation up to
the start of an assistant turn (with the generation prompt) and up to its end, tokenize each, and check
that both token lists are prefixes of the whole conversation's tokens. The span is the tokens between
the two prefixes. A template that breaks the prefix property (one that rewrites earlier turns when later
ones follow) falls back to its ``{% generation %}`` markers if it has them, else stops with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_trainer.data.formats import Message


class ChatTemplateError(ValueError):
    """The tokenizer has no usable chat template for conversational data."""


@dataclass(frozen=True)
class AssistantSpan:
    """Tokens ``[start, end)`` of one assistant turn, its header excluded; ``weight`` 0 means not trained."""

    start: int
    end: int
    weight: int = 1


class ChatFormatter:
    """Renders conversations with one chat template and locates the assistant turns in the tokens."""

    def __init__(self, tokenizer: Any, chat_template: str | None = None):
        template = chat_template or getattr(tokenizer, "chat_template", None)
        if not template:
            raise ChatTemplateError(
                "the base model's tokenizer has no chat template and chatTemplate is not set: "
                "conversational data needs one (set chatTemplate in the job, or use prompt/completion or text data)"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.has_generation_markers = "{% generation %}" in template or "{%- generation %}" in template

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return self.tokenizer.apply_chat_template(
                conversation, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as e:  # jinja2 raises TemplateError subclasses, templates raise their own errors
            raise ChatTemplateError(f"the chat template failed to render this conversation: {e}") from None

    def encode(self, text: str) -> list[int]:
        # The template writes any BOS itself, so the tokenizer must not add another.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenize(self, messages: list[Message]) -> tuple[list[int], list[AssistantSpan]]:
        """Token ids of the whole conversation and the spans of its assistant turns."""
        full_ids = self.encode(self.render(messages))
        try:
            return full_ids, self._spans_by_prefixes(messages, full_ids)
        except _PrefixMismatch as mismatch:
            if self.has_generation_markers:
                return self._spans_by_markers(messages)
            raise ChatTemplateError(
                "cannot locate the assistant turns: the chat template does not render conversations as a "
                f"growing prefix ({mismatch}); use a template that does, or one with {{% generation %}} markers"
            ) from None

    def _spans_by_prefixes(self, messages: list[Message], full_ids: list[int]) -> list[AssistantSpan]:
        spans: list[AssistantSpan] = []
        for i, message in enumerate(messages):
            if message.role != "assistant":
                continue
            start_ids = self.encode(self.render(messages[:i], add_generation_prompt=True)) if i else []
            end_ids = self.encode(self.render(messages[: i + 1]))
            for name, ids in (("start", start_ids), ("end", end_ids)):
                if full_ids[: len(ids)] != ids:
                    raise _PrefixMismatch(f"the {name} of turn {i} is not a prefix of the whole conversation")
            if len(end_ids) < len(start_ids):
                raise _PrefixMismatch(f"turn {i} ends before it starts")
            spans.append(AssistantSpan(len(start_ids), len(end_ids), message.weight))
        return spans

    def _spans_by_markers(self, messages: list[Message]) -> tuple[list[int], list[AssistantSpan]]:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        out = self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        weights = [m.weight for m in messages if m.role == "assistant"]
        spans: list[AssistantSpan] = []
        i = 0
        while i < len(mask):
            if mask[i]:
                j = i
                while j < len(mask) and mask[j]:
                    j += 1
                weight = weights[len(spans)] if len(spans) < len(weights) else 1
                spans.append(AssistantSpan(i, j, weight))
                i = j
            else:
                i += 1
        return ids, spans


class _PrefixMismatch(Exception):
    pass
