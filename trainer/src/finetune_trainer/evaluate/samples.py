"""From a normalised dataset to the turns an evaluation grades.

The dataset is JSONL as the Dataset validator writes it, one example a line:

* chat: ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}``.
  Every assistant message (after at least one other message) is a graded turn, answered in context the
  way Together's CoQA example does it: the model sees the conversation up to that turn, earlier
  assistant turns holding their *reference* answers, and its answer is graded against the turn's
  content.
* instruction: ``{"prompt": "...", "completion": "..."}``: one graded turn, reference = completion.
* preference: ``{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}``: one
  graded turn after the conversation, reference = the preferred answer (a pairwise grader needs none: it
  compares each model's answer with the baseline's).

Optional fields the evaluation reads (the validator keeps them; training ignores them):

* ``references``: a list of further acceptable answers, on an instruction example or on an assistant
  message. Graders score against each acceptable answer and keep the best (as SQuAD does).
* ``response`` (for ``regrade``): the answer already given, on an instruction example or on an
  assistant message; on a chat example's top level it answers the last assistant turn. The value is a
  string (the same answer for every model in the config) or an object ``{"<model name>": "answer"}``.
  A graded turn with no recorded answer for a model is a per-sample error (NoResponse).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from finetune_trainer.evaluate.errors import BadInput

PROMPT_EXCERPT_CHARS = 200

RecordedResponse = str | Mapping[str, str] | None


@dataclass(frozen=True)
class EvalTurn:
    """One answer to generate and grade."""

    example: int
    """0-based index of the example (non-blank line) in the dataset."""
    turn: int
    """0-based index of the graded assistant turn within its example (always 0 for instruction)."""
    references: tuple[str, ...]
    """Acceptable answers; the first is the dataset's own (assistant content or completion)."""
    messages: tuple[Mapping[str, str], ...] | None = None
    """chat: the conversation before this turn (role and content only)."""
    prompt: str | None = None
    """instruction: the prompt text."""
    recorded: RecordedResponse = field(default=None, compare=False)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def prompt_excerpt(self, limit: int = PROMPT_EXCERPT_CHARS) -> str:
        """The question in one line: the last user message (chat) or the prompt, cut to ``limit`` characters."""
        if self.messages is not None:
            users = [m["content"] for m in self.messages if m["role"] == "user"]
            text = users[-1] if users else self.messages[-1]["content"]
        else:
            text = self.prompt or ""
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def recorded_response(self, model: str) -> str | None:
        """The answer the dataset holds for ``model`` (regrade), or None when it holds none."""
        if self.recorded is None or isinstance(self.recorded, str):
            return self.recorded
        return self.recorded.get(model)


def _line_error(line: int, message: str) -> BadInput:
    return BadInput("InvalidDataset", f"line {line}: {message}")


def _check_response(value: object, line: int, where: str) -> RecordedResponse:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    raise _line_error(line, f"{where}.response must be a string or an object of model name to string")


def _check_references(value: object, line: int, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _line_error(line, f"{where}.references must be a list of strings")
    return tuple(value)


def _preference_turn(example: dict, index: int, line: int) -> EvalTurn:
    conversation = example.get("input")
    messages = conversation.get("messages") if isinstance(conversation, dict) else None
    if not isinstance(messages, list) or not messages:
        raise _line_error(line, "input.messages must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise _line_error(line, f"input.messages[{i}] needs a string role and a string content")
    preferred = example.get("preferred_output")
    if not isinstance(preferred, list) or len(preferred) != 1 or not isinstance(preferred[0], dict) or not isinstance(preferred[0].get("content"), str):
        raise _line_error(line, "preferred_output must be a list of one message with a string content")
    return EvalTurn(
        example=index,
        turn=0,
        references=(preferred[0]["content"],),
        messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
        recorded=_check_response(example.get("response"), line, "example"),
    )


def turns_of_example(example: object, index: int, line: int) -> list[EvalTurn]:
    """The graded turns of one parsed JSONL example (``line`` is 1-based, for error messages)."""
    if not isinstance(example, dict):
        raise _line_error(line, "an example must be a JSON object")
    if "preferred_output" in example:
        return [_preference_turn(example, index, line)]
    if "messages" in example:
        messages = example["messages"]
        if not isinstance(messages, list) or not messages:
            raise _line_error(line, "messages must be a non-empty list")
        context: list[dict[str, str]] = []
        turns: list[EvalTurn] = []
        last_assistant = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"), default=-1)
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise _line_error(line, f"messages[{i}] needs a string role and a string content")
            where = f"messages[{i}]"
            if message["role"] == "assistant" and context:
                recorded = _check_response(message.get("response"), line, where)
                if recorded is None and i == last_assistant:
                    recorded = _check_response(example.get("response"), line, "example")
                turns.append(
                    EvalTurn(
                        example=index,
                        turn=len(turns),
                        references=(message["content"], *_check_references(message.get("references"), line, where)),
                        messages=tuple(dict(m) for m in context),
                        recorded=recorded,
                    )
                )
            context.append({"role": message["role"], "content": message["content"]})
        return turns
    if "prompt" in example or "completion" in example:
        prompt, completion = example.get("prompt"), example.get("completion")
        if not isinstance(prompt, str):
            raise _line_error(line, "prompt must be a string")
        if completion is None:
            return []
        if not isinstance(completion, str):
            raise _line_error(line, "completion must be a string")
        return [
            EvalTurn(
                example=index,
                turn=0,
                references=(completion, *_check_references(example.get("references"), line, "example")),
                prompt=prompt,
                recorded=_check_response(example.get("response"), line, "example"),
            )
        ]
    if "text" in example:
        return []
    raise _line_error(line, "an example needs messages (chat), prompt and completion (instruction), or input and preferred_output (preference)")


def parse_dataset(data: bytes, max_examples: int | None = None, regrade: bool = False) -> list[EvalTurn]:
    """Every graded turn of a JSONL dataset, in dataset order.

    Raises ``BadInput`` for a file that is not UTF-8 JSONL (InvalidDataset), holds no example
    (EmptyDataset), holds no reference answer (NoReferences), or, when ``regrade``, holds no
    recorded response (NoResponses).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput("InvalidDataset", f"the dataset is not UTF-8 (byte {e.start})") from None
    turns: list[EvalTurn] = []
    examples = 0
    for line_number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if max_examples is not None and examples >= max_examples:
            break
        try:
            example = json.loads(raw)
        except json.JSONDecodeError as e:
            raise _line_error(line_number, f"not JSON ({e.msg})") from None
        turns.extend(turns_of_example(example, examples, line_number))
        examples += 1
    if examples == 0:
        raise BadInput("EmptyDataset", "the dataset holds no example")
    if not turns:
        raise BadInput(
            "NoReferences",
            f"none of the {examples} examples has a reference answer (an assistant message after the prompt, or a completion)",
        )
    if regrade and all(t.recorded is None for t in turns):
        raise BadInput("NoResponses", "regrade is set but no example holds a response to grade")
    return turns
