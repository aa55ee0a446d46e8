"""Reading training examples: conversational, instruction and generic-text JSONL, and pre-tokenized Parquet.

The operator hands the trainer files the dataset validator has already checked and normalised (one JSON
object per line), so this module is a strict reader, not a second validator: the first line it cannot use
stops the run with a ``DatasetError`` naming the file, the line and the rule.

Accepted shapes (those the hosted fine-tuning services accept):

* conversational: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str, "weight": 0|1}, ...]}``
* instruction: ``{"prompt": str, "completion": str}``
* generic text: ``{"text": str}``
* preference (DPO): ``{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": str}],
  "non_preferred_output": [...]}``: the conversation ends with a user turn, each output is one assistant message
* Parquet: columns ``input_ids`` (list of int) and optionally ``labels`` (list of int, -100 = ignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROLES = ("system", "user", "assistant")

ExampleKind = Literal["chat", "instruction", "text", "preference", "tokens"]


class DatasetError(ValueError):
    """An example the trainer cannot use; ``line`` is 1-based (JSONL line or Parquet row)."""

    def __init__(self, source: str, line: int | None, message: str):
        self.source = source
        self.line = line
        where = f"{source} line {line}" if line is not None else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    weight: int = 1


@dataclass
class RawExample:
    """One example as read from a file, before tokenization."""

    kind: ExampleKind
    source: str
    line: int
    messages: list[Message] = field(default_factory=list)
    prompt: str = ""
    completion: str = ""
    text: str = ""
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] | None = None
    preferred: str = ""
    """preference: the preferred answer (``messages`` is the conversation before it)."""
    non_preferred: str = ""
    """preference: the non-preferred answer."""


def parse_record(record: object, source: str, line: int) -> RawExample:
    """Turn one decoded JSON object into a ``RawExample``, or raise ``DatasetError`` saying which rule it breaks."""
    if not isinstance(record, dict):
        raise DatasetError(source, line, f"expected a JSON object, got {type(record).__name__}")
    if "preferred_output" in record or "non_preferred_output" in record:
        return _preference_example(record, source, line)
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DatasetError(source, line, "'messages' must be a non-empty list")
        parsed: list[Message] = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise DatasetError(source, line, f"messages[{i}] must be an object")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise DatasetError(source, line, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            if not isinstance(content, str):
                raise DatasetError(source, line, f"messages[{i}].content must be a string")
            weight = message.get("weight", 1)
            if weight not in (0, 1) or isinstance(weight, bool):
                raise DatasetError(source, line, f"messages[{i}].weight must be 0 or 1, got {weight!r}")
            parsed.append(Message(role=role, content=content, weight=int(weight)))
        if not any(m.role == "assistant" for m in parsed):
            raise DatasetError(source, line, "a conversation needs at least one assistant message")
        return RawExample(kind="chat", source=source, line=line, messages=parsed)
    if "prompt" in record or "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DatasetError(source, line, "'prompt' and 'completion' must both be strings")
        return RawExample(kind="instruction", source=source, line=line, prompt=prompt, completion=completion)
    if "text" in record:
        if not isinstance(record["text"], str) or not record["text"]:
            raise DatasetError(source, line, "'text' must be a non-empty string")
        return RawExample(kind="text", source=source, line=line, text=record["text"])
    if "input_ids" in record:
        return _tokens_example(record.get("input_ids"), record.get("labels"), source, line)
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise DatasetError(
        source, line, f"unknown example format (keys: {keys}); expected messages, prompt/completion, text or preferred_output/non_preferred_output"
    )


def _preference_example(record: dict, source: str, line: int) -> RawExample:
    conversation = record.get("input")
    messages = conversation.get("messages") if isinstance(conversation, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DatasetError(source, line, "'input.messages' must be a non-empty list")
    parsed: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise DatasetError(source, line, f"input.messages[{i}] must have a role ({', '.join(ROLES)}) and a string content")
        parsed.append(Message(role=message["role"], content=message["content"]))
    if parsed[-1].role != "user":
        raise DatasetError(source, line, "input.messages must end with a user message")
    answers = []
    for key in ("preferred_output", "non_preferred_output"):
        output = record.get(key)
        if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
            raise DatasetError(source, line, f"'{key}' must be a list of one assistant message")
        if output[0].get("role") != "assistant" or not isinstance(output[0].get("content"), str):
            raise DatasetError(source, line, f"{key}[0] must be an assistant message with a string content")
        answers.append(output[0]["content"])
    if answers[0] == answers[1]:
        raise DatasetError(source, line, "the preferred and the non-preferred answer are the same")
    return RawExample(kind="preference", source=source, line=line, messages=parsed, preferred=answers[0], non_preferred=answers[1])


def _tokens_example(input_ids: object, labels: object, source: str, line: int) -> RawExample:
    if not isinstance(input_ids, list) or not input_ids or not all(isinstance(t, int) and t >= 0 for t in input_ids):
        raise DatasetError(source, line, "'input_ids' must be a non-empty list of non-negative integers")
    if labels is not None:
        if not isinstance(labels, list) or len(labels) != len(input_ids) or not all(isinstance(t, int) for t in labels):
            raise DatasetError(source, line, "'labels' must be a list of integers as long as 'input_ids'")
        if any(t < 0 and t != -100 for t in labels):
            raise DatasetError(source, line, "'labels' may hold token ids or -100 (ignored), nothing else")
    return RawExample(kind="tokens", source=source, line=line, input_ids=list(input_ids), labels=labels)


def read_jsonl(path: Path, source: str | None = None) -> Iterator[RawExample]:
    """Stream the examples of a JSONL file; blank lines are skipped."""
    source = source or str(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DatasetError(source, number, "not valid UTF-8") from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise DatasetError(source, number, f"not valid JSON ({e.msg})") from None
            yield parse_record(record, source, number)


def read_parquet(path: Path, source: str | None = None) -> Iterator[RawExample]:
    """Stream the rows of a pre-tokenized Parquet file (``input_ids``, optional ``labels``)."""
    import pyarrow.parquet as pq

    source = source or str(path)
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DatasetError(source, None, f"not a readable Parquet file ({e})") from None
    columns = set(table.schema_arrow.names)
    if "input_ids" not in columns:
        raise DatasetError(source, None, f"a Parquet dataset needs an 'input_ids' column (has: {', '.join(sorted(columns))})")
    wanted = ["input_ids"] + (["labels"] if "labels" in columns else [])
    row = 0
    for batch in table.iter_batches(columns=wanted, batch_size=1024):
        data = batch.to_pydict()
        for i, input_ids in enumerate(data["input_ids"]):
            row += 1
            labels = data["labels"][i] if "labels" in data else None
            yield _tokens_example(input_ids, labels, source, row)


def read_examples(path: Path, source: str | None = None) -> Iterator[RawExample]:
    """Examples of one local file, by its extension (``.parquet`` or JSONL)."""
    path = Path(path)
    if path.suffix.lower() in {".parquet", ".pq"}:
        return read_parquet(path, source)
    return read_jsonl(path, source)
