"""The dataset checker: streams a JSONL or Parquet file and says, line by line, what is wrong with it.

One checker serves the trainer, the Dataset validation Job (``finetune-trainer validate``) and the
``finetune dataset check`` command on a laptop, so it is pure and light: no torch, no transformers, no
object store; ``orjson`` parses the lines, ``pyarrow`` reads Parquet and ``tokenizers`` counts tokens
(both imported only when needed). It never loads a file whole: memory does not grow with the file.

The verdict is a ``DatasetCheckReport`` in the shape of Together's ``check_file`` (``is_check_passed``,
``found``, ``file_size``, ``filetype``, ``utf8``, ``line_type``, ``key_value``, ``has_min_samples``,
``num_samples``) plus the first ``max_errors`` problems, each with its 1-based line (JSONL) or row
(Parquet) and a stable rule id from ``RULES``, and the total count of problems.

Accepted shapes (what Together and OpenAI accept for supervised fine-tuning):

* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str, "weight": 0|1}, ...]}``;
  a system message only first, no role twice in a row, the last message from the assistant; ``weight``
  (an integer, 0 or 1) only on assistant messages, as OpenAI documents it;
* instruction: ``{"prompt": str, "completion": str}`` (an empty prompt is allowed, an empty completion not);
* text: ``{"text": str}``;
* preference (Together's shape, for DPO): ``{"input": {"messages": [...]}, "preferred_output": [{"role":
  "assistant", "content": str}], "non_preferred_output": [...]}``: the conversation follows the chat rules
  (no weights) and ends with a user message; each output is a list of exactly one assistant message; the
  two answers differ. A line with either output key is a preference example;
* parquet: ``input_ids`` (non-empty list of non-negative integers), optional ``labels`` (as long, token ids
  or -100) and ``attention_mask`` (as long, 0 or 1).

Valid though odd: a UTF-8 byte-order mark, CRLF line endings, blank lines (skipped), non-ASCII text, a last
line without a newline. The format is given, or ``auto``: Parquet from the extension or the ``PAR1`` magic,
else the first JSON object whose keys name a format; a later line of another format is ``mixed_formats``.

Token statistics (min/mean/max/total per example) need a ``tokenizer.json`` (Hugging Face ``tokenizers``);
they count the text of an example (chat: the message contents joined by newlines; instruction: prompt and
completion; preference: the conversation and the longer answer, the longer of the two sequences DPO trains
on), without a chat template, so a templated example is a few tokens per message longer. Parquet
rows are counted from ``input_ids``. When a token limit is given too, a dataset whose every example is
longer is rejected (``all_too_long``): nothing of it would train untruncated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import orjson

from finetune_trainer.contract import CheckError, DatasetCheckReport, DatasetFormat, TokenStats

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.parquet

# ----------------------------------------------------------------------------------------------
# Rules

RULES: dict[str, str] = {
    # the file as a whole
    "not_found": "the source does not exist (404, no such key, no such file)",
    "source_unreachable": "the source could not be read (connection refused, timeout, 5xx): may heal by itself",
    "access_denied": "the object store refused the credentials",
    "too_large": "the file is larger than maxBytes (decided from its size, before reading), or a Parquet row group "
    "decodes to more than the row-group limit (decided from the file's metadata, before decoding)",
    "empty_file": "the file has no bytes, or only blank lines",
    "unknown_format": "no line is a JSON object with a known format's keys",
    "format_mismatch": "the file is not of the format asked for (JSONL asked as parquet, or the reverse)",
    "too_few_samples": "fewer valid examples than minSamples",
    "all_too_long": "every example is longer than maxSeqLength tokens",
    "bad_parquet": "not a readable Parquet file",
    "missing_column": "a Parquet file without an input_ids column",
    "unknown_column": "a Parquet column other than input_ids, labels, attention_mask",
    "bad_column_type": "a Parquet column that is not a list of integers",
    "tokenizer_unavailable": "the tokenizer named for token statistics could not be fetched or read",
    "upload_failed": "the normalised files could not be written to the object store: may heal by itself",
    # one line (JSONL) or row (Parquet)
    "not_utf8": "the line is not valid UTF-8",
    "not_json": "the line is not valid JSON",
    "truncated_line": "the last line has no newline and is not valid JSON: the file was cut short",
    "line_too_long": "the line is longer than the line limit",
    "not_object": "the line is JSON but not an object",
    "nesting_too_deep": "the JSON is nested deeper than the depth limit",
    "mixed_formats": "the line is of another format than the file's",
    "missing_key": "a required key is missing",
    "unknown_key": "a key the format does not know",
    "wrong_type": "a value of the wrong type (messages not a list, a message not an object, input not an object)",
    "empty_messages": "an empty messages list",
    "unknown_role": "a role other than system, user, assistant",
    "repeated_role": "the same role twice in a row",
    "system_not_first": "a system message that is not the first message",
    "no_final_assistant": "the last message is not from the assistant",
    "empty_content": "empty or whitespace-only content (or completion, or text)",
    "content_not_string": "content (or prompt, completion, text) that is not a string",
    "bad_weight": "a weight that is not the integer 0 or 1, or a weight on a non-assistant message",
    "no_final_user": "preference: the conversation (input.messages) does not end with a user message",
    "bad_output": "preference: preferred_output or non_preferred_output does not hold exactly one message",
    "output_not_assistant": "preference: an answer (preferred_output, non_preferred_output) that is not an assistant message",
    "identical_outputs": "preference: the preferred and the non-preferred answer are the same",
    "control_character": "a control character other than tab, newline, carriage return in the text",
    "null_value": "a null Parquet value",
    "empty_input_ids": "an empty input_ids list",
    "bad_token_id": "a negative token id in input_ids, or a label that is neither a token id nor -100",
    "length_mismatch": "labels or attention_mask not as long as input_ids",
    "row_too_long": "a Parquet row whose input_ids holds more values than the row limit",
    "bad_attention_mask": "an attention_mask value other than 0 or 1",
}

_LINE_TYPE_RULES = frozenset({"not_utf8", "not_json", "truncated_line", "line_too_long", "not_object", "nesting_too_deep"})
_FILE_RULES = frozenset(
    {"not_found", "source_unreachable", "access_denied", "too_large", "empty_file", "unknown_format", "format_mismatch", "bad_parquet"}
)

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = frozenset({"role", "content", "weight"})
FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "instruction": ("prompt", "completion"),
    "text": ("text",),
    "preference": ("input", "preferred_output", "non_preferred_output"),
}
PARQUET_COLUMNS = ("input_ids", "labels", "attention_mask")
PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"
IGNORED_LABEL = -100

# C0 controls but tab, newline and carriage return; DEL; C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# A control character can reach a decoded string only as an escape (\\b, \\f, \\u00XX), a raw DEL or a
# raw C1 (0xC2 0x80-0x9F); raw C0 controls are invalid JSON. Lines with none of these skip the regex.
_CONTROL_ESCAPE = re.compile(rb"\\[bfu]")


@dataclass(frozen=True)
class CheckOptions:
    """What to check and how strictly. Defaults match ``ValidateConfig``'s."""

    format: DatasetFormat = "auto"
    min_samples: int = 10
    max_bytes: int = 1 << 30
    max_errors: int = 20
    max_seq_length: int | None = None
    """Token limit: with a tokenizer (or Parquet), a dataset whose every example is longer fails."""
    tokenizer: str | Path | None = None
    """A local folder holding tokenizer.json, or the tokenizer.json file itself."""
    max_line_bytes: int = 16 << 20
    max_row_values: int = 2 << 20
    """Parquet: the most token ids one row may hold (16 MiB as int64, the line limit of JSONL)."""
    max_row_group_bytes: int = 1 << 30
    """Parquet: the most bytes one row group may decode to, by the file's metadata. The checker decodes a row
    group at a time, so this bounds its memory where a small, highly compressed file would not."""
    max_depth: int = 64
    token_batch: int = 256


class ExampleSink(Protocol):
    """Receives every valid example as the checker finds it (the caller splits and writes them)."""

    def add_line(self, line: bytes) -> None:
        """One JSONL example as compact JSON, ending with ``\\n``."""

    def add_rows(self, batch: pyarrow.RecordBatch) -> None:
        """The valid rows of one Parquet batch."""


# ----------------------------------------------------------------------------------------------
# Token counting


class TokenCounter:
    """Counts tokens with a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library, no transformers)."""

    def __init__(self, tokenizer_file: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))

    @classmethod
    def load(cls, path: str | Path) -> TokenCounter:
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        return cls(file)

    def count(self, texts: list[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(texts)]


class _Stats:
    """Running min/mean/max/total of a count per example, in constant memory."""

    __slots__ = ("n", "total", "low", "high")

    def __init__(self) -> None:
        self.n = 0
        self.total = 0
        self.low = 0
        self.high = 0

    def add(self, value: int) -> None:
        if self.n == 0 or value < self.low:
            self.low = value
        if value > self.high:
            self.high = value
        self.n += 1
        self.total += value

    def add_many(self, n: int, total: int, low: int, high: int) -> None:
        if n == 0:
            return
        if self.n == 0 or low < self.low:
            self.low = low
        self.high = max(self.high, high)
        self.n += n
        self.total += total

    def result(self) -> TokenStats | None:
        if self.n == 0:
            return None
        return TokenStats(min=self.low, mean=round(self.total / self.n, 2), max=self.high, total=self.total)


# ----------------------------------------------------------------------------------------------
# Findings


class _Findings:
    """The problems found so far, all counted. Kept in full: every whole-file problem (listed first, as
    the verdict's headline) and the first line problems, up to ``limit`` in all."""

    def __init__(self, limit: int):
        self.limit = limit
        self.file_errors: list[CheckError] = []
        self.line_errors: list[CheckError] = []
        self.count = 0
        self.rules: set[str] = set()

    def add(self, line: int | None, rule: str, message: str) -> None:
        self.count += 1
        self.rules.add(rule)
        if line is None:
            self.file_errors.append(CheckError(line=None, rule=rule, message=message))
        elif len(self.line_errors) < self.limit:
            self.line_errors.append(CheckError(line=line, rule=rule, message=message))

    @property
    def errors(self) -> list[CheckError]:
        room = max(self.limit - len(self.file_errors), 0)
        return self.file_errors + self.line_errors[:room]


class _LineError(Exception):
    """One line breaks a rule; raised inside the per-format checks, caught once per line."""

    def __init__(self, rule: str, message: str):
        self.rule = rule
        self.message = message


def _summary(findings: _Findings, num_samples: int, fmt: str | None, unit: str) -> str:
    if findings.count == 0:
        return f"Checks passed: {num_samples} {fmt or ''} examples".replace("  ", " ")
    first = findings.errors[0]
    where = f"{unit} {first.line}: " if first.line is not None else ""
    more = f" ({findings.count} problems in all)" if findings.count > 1 else ""
    return f"{where}{first.message} [{first.rule}]{more}"


def _failed(message_rule: str, message: str, **fields) -> DatasetCheckReport:
    return DatasetCheckReport(
        is_check_passed=False,
        message=f"{message} [{message_rule}]",
        errors=[CheckError(line=None, rule=message_rule, message=message)],
        error_count=1,
        **fields,
    )


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ----------------------------------------------------------------------------------------------
# JSONL


def _format_of(record: dict) -> str | None:
    if "preferred_output" in record or "non_preferred_output" in record:
        return "preference"
    if "messages" in record:
        return "chat"
    if "prompt" in record or "completion" in record:
        return "instruction"
    if "text" in record:
        return "text"
    return None


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (the top-level object is depth 1). Iterative."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if type(node) is dict:
            children = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def _check_text_value(value: object, name: str, allow_empty: bool = False) -> None:
    if type(value) is not str:
        raise _LineError("content_not_string", f"'{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and (not value or value.isspace()):
        raise _LineError("empty_content", f"'{name}' is empty")


def _check_control(value: str, name: str) -> None:
    found = _CONTROL.search(value)
    if found is not None:
        raise _LineError(
            "control_character",
            f"{name} holds control character U+{ord(found.group()):04X} at character {found.start()} "
            "(only tab, newline and carriage return are allowed)",
        )


def _check_chat(record: dict, may_have_control: bool) -> tuple[list[str], int]:
    """Raise ``_LineError`` for the first problem; return the texts to count and the number of messages."""
    if len(record) != 1:
        for key in record:
            if key != "messages":
                raise _LineError("unknown_key", f"unknown key '{key}' (a chat example has only 'messages')")
    messages = record["messages"]
    last = _check_messages(messages, "messages", may_have_control, weights=True)
    if last != "assistant":
        raise _LineError("no_final_assistant", f"the last message is a {last} message; it must be from the assistant")
    return [m["content"] for m in messages], len(messages)


def _check_messages(messages: object, name: str, may_have_control: bool, weights: bool) -> str:
    """The rules every conversation follows (``name`` is where it is, e.g. ``messages``); returns the last role."""
    if type(messages) is not list:
        raise _LineError("wrong_type", f"'{name}' must be a list, got {type(messages).__name__}")
    if not messages:
        raise _LineError("empty_messages", f"'{name}' is empty")
    allowed = MESSAGE_KEYS if weights else MESSAGE_KEYS - {"weight"}
    previous = None
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise _LineError("wrong_type", f"{name}[{i}] must be an object, got {type(message).__name__}")
        if len(message) != 2 or "role" not in message or "content" not in message:
            for key in message:
                if key not in allowed:
                    raise _LineError("unknown_key", f"{name}[{i}] has unknown key '{key}' (allowed: {', '.join(sorted(allowed, key=_KEY_ORDER.index))})")
            for key in ("role", "content"):
                if key not in message:
                    raise _LineError("missing_key", f"{name}[{i}] has no '{key}'")
        role = message["role"]
        if role not in ROLES:
            raise _LineError("unknown_role", f"{name}[{i}] has unknown role {_describe(role)} (allowed: {', '.join(ROLES)})")
        content = message["content"]
        if type(content) is not str:
            raise _LineError("content_not_string", f"{name}[{i}].content must be a string, got {type(content).__name__}")
        if not content or content.isspace():
            raise _LineError("empty_content", f"{name}[{i}] ({role}) has empty content")
        if role == "system" and i > 0:
            raise _LineError("system_not_first", f"{name}[{i}] is a system message; only the first message may be one")
        if role == previous:
            raise _LineError("repeated_role", f"{name}[{i - 1}] and {name}[{i}] are both {role} messages; roles must alternate")
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant":
                raise _LineError("bad_weight", f"{name}[{i}] ({role}) has a weight; only assistant messages may have one")
            if type(weight) is not int or weight not in (0, 1):
                raise _LineError("bad_weight", f"{name}[{i}].weight must be the integer 0 or 1, got {_describe(weight)}")
        if may_have_control:
            _check_control(content, f"{name}[{i}].content")
        previous = role
    return previous  # type: ignore[return-value]


_KEY_ORDER = ("role", "content", "weight")
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")


def _check_preference(record: dict, may_have_control: bool) -> tuple[list[str], int]:
    """Together's preference shape: ``input.messages`` ending with a user turn, and two different one-message
    assistant answers, ``preferred_output`` and ``non_preferred_output``."""
    if len(record) != 3 or any(key not in record for key in PREFERENCE_KEYS):
        for key in record:
            if key not in PREFERENCE_KEYS:
                raise _LineError("unknown_key", f"unknown key '{key}' (a preference example has only 'input', 'preferred_output' and 'non_preferred_output')")
        for key in PREFERENCE_KEYS:
            if key not in record:
                raise _LineError("missing_key", f"no '{key}' key")
    conversation = record["input"]
    if type(conversation) is not dict:
        raise _LineError("wrong_type", f"'input' must be an object with 'messages', got {type(conversation).__name__}")
    for key in conversation:
        if key != "messages":
            raise _LineError("unknown_key", f"input has unknown key '{key}' (it has only 'messages')")
    if "messages" not in conversation:
        raise _LineError("missing_key", "input has no 'messages'")
    messages = conversation["messages"]
    last = _check_messages(messages, "input.messages", may_have_control, weights=False)
    if last != "user":
        raise _LineError("no_final_user", f"input.messages ends with {_article(last)} {last} message; the conversation must end with the user's turn")
    answers = [_check_answer(record[key], key, may_have_control) for key in PREFERENCE_KEYS[1:]]
    if answers[0] == answers[1]:
        raise _LineError("identical_outputs", "preferred_output and non_preferred_output are the same answer; a pair must differ")
    # Tokens are counted for the longer of the two sequences trained: the conversation and one answer.
    return [m["content"] for m in messages] + [max(answers, key=len)], len(messages)


def _check_answer(output: object, name: str, may_have_control: bool) -> str:
    """One answer of a preference pair: a list of exactly one assistant message; returns its content."""
    if type(output) is not list:
        raise _LineError("wrong_type", f"'{name}' must be a list holding one assistant message, got {type(output).__name__}")
    if len(output) != 1:
        raise _LineError("bad_output", f"'{name}' must hold exactly one message, has {len(output)}")
    _check_messages(output, name, may_have_control, weights=False)
    if output[0]["role"] != "assistant":
        raise _LineError("output_not_assistant", f"{name}[0] is a {output[0]['role']} message; an answer is the assistant's")
    return output[0]["content"]


def _check_instruction(record: dict, may_have_control: bool) -> tuple[list[str], int]:
    if len(record) != 2 or "prompt" not in record or "completion" not in record:
        for key in record:
            if key not in ("prompt", "completion"):
                raise _LineError("unknown_key", f"unknown key '{key}' (an instruction example has only 'prompt' and 'completion')")
        for key in ("prompt", "completion"):
            if key not in record:
                raise _LineError("missing_key", f"no '{key}' key")
    prompt, completion = record["prompt"], record["completion"]
    _check_text_value(prompt, "prompt", allow_empty=True)
    _check_text_value(completion, "completion")
    if may_have_control:
        _check_control(prompt, "prompt")
        _check_control(completion, "completion")
    return [prompt, completion], 0


def _check_text(record: dict, may_have_control: bool) -> tuple[list[str], int]:
    if len(record) != 1:
        for key in record:
            if key != "text":
                raise _LineError("unknown_key", f"unknown key '{key}' (a text example has only 'text')")
    text = record["text"]
    _check_text_value(text, "text")
    if may_have_control:
        _check_control(text, "text")
    return [text], 0


_FORMAT_CHECKS: dict[str, Callable[[dict, bool], tuple[list[str], int]]] = {
    "chat": _check_chat,
    "instruction": _check_instruction,
    "text": _check_text,
    "preference": _check_preference,
}


def _json_problem(body: bytes, error: orjson.JSONDecodeError, last_unterminated: bool) -> tuple[str, str]:
    """Rule and message for a line orjson refused."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = ""
        if body.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in body:
            hint = " (the file looks like UTF-16: save it as UTF-8)"
        return "not_utf8", f"not valid UTF-8: byte 0x{body[e.start]:02x} at byte {e.start + 1} of the line{hint}"
    reason = str(error).split(":", 1)[0]
    if "depth limit exceeded" in reason or "recursion" in reason:
        return "nesting_too_deep", "the JSON is nested too deeply"
    if last_unterminated:
        return "truncated_line", f"the last line has no newline and is not valid JSON ({reason}): the file looks cut short"
    return "not_json", f"not valid JSON: {reason} at character {error.pos + 1}"


class JsonlChecker:
    """Checks one JSONL stream line by line; hands valid examples (compact JSON) to a sink."""

    def __init__(self, options: CheckOptions, sink: ExampleSink | None = None, counter: TokenCounter | None = None):
        self.options = options
        self.sink = sink
        self.counter = counter
        self.findings = _Findings(options.max_errors)
        self.format: str | None = None if options.format == "auto" else options.format
        self.format_line: int | None = None
        self.samples = 0
        self.nonblank_lines = 0
        self.token_stats = _Stats()
        self.message_stats = _Stats()
        self.too_long = 0
        self._pending_texts: list[str] = []

    # The hot loop: one call per line, no per-line allocation beyond the line and its parsed object.
    def check(self, stream: BinaryIO, file_size: int | None = None) -> DatasetCheckReport:
        options = self.options
        findings = self.findings
        add_error = findings.add
        loads = orjson.loads
        dumps = orjson.dumps
        append_newline = orjson.OPT_APPEND_NEWLINE
        sink_add = self.sink.add_line if self.sink is not None else None
        count_tokens = self.counter is not None
        control_escape = _CONTROL_ESCAPE.search
        limit = options.max_line_bytes
        readline = stream.readline
        line_no = 0
        while True:
            raw = readline(limit + 1)
            if not raw:
                break
            line_no += 1
            terminated = raw.endswith(b"\n")
            if not terminated and len(raw) > limit:
                while True:  # skip the rest of the oversized line, in bounded reads
                    rest = readline(limit + 1)
                    if not rest or rest.endswith(b"\n"):
                        break
                self.nonblank_lines += 1
                add_error(line_no, "line_too_long", f"the line is longer than {limit} bytes")
                continue
            body = raw[:-1] if terminated else raw
            if line_no == 1 and body.startswith(UTF8_BOM):
                body = body[3:]
            if body.endswith(b"\r"):
                body = body[:-1]
            if not body or body.isspace():
                continue
            self.nonblank_lines += 1
            try:
                record = loads(body)
            except orjson.JSONDecodeError as e:
                rule, message = _json_problem(body, e, not terminated)
                add_error(line_no, rule, message)
                continue
            if type(record) is not dict:
                self._reject(line_no, record, "not_object", f"the line is a JSON {type(record).__name__}, not an object")
                continue
            line_format = _format_of(record)
            fmt = self.format
            if fmt is None:
                if line_format is None:
                    self._reject(line_no, record, "missing_key", f"no key of a known format ({_known_keys()}); keys: {_keys(record)}")
                    continue
                fmt = self.format = line_format
                self.format_line = line_no
            elif line_format != fmt and not any(key in record for key in FORMAT_KEYS[fmt]):
                if line_format is None:
                    wanted = " and ".join(f"'{k}'" for k in FORMAT_KEYS[fmt])
                    self._reject(line_no, record, "missing_key", f"no {wanted} key ({fmt} format); keys: {_keys(record)}")
                else:
                    since = f" (from line {self.format_line})" if self.format_line else ""
                    self._reject(line_no, record, "mixed_formats", f"{_article(line_format)} {line_format} example in {_article(fmt)} {fmt} file{since}")
                continue
            may_have_control = b"\xc2" in body or b"\x7f" in body or control_escape(body) is not None
            try:
                texts, n_messages = _FORMAT_CHECKS[fmt](record, may_have_control)
            except _LineError as e:
                self._reject(line_no, record, e.rule, e.message)
                continue
            self.samples += 1
            if n_messages:
                self.message_stats.add(n_messages)
            if count_tokens:
                self._pending_texts.append("\n".join(texts))
                if len(self._pending_texts) >= options.token_batch:
                    self._count_pending()
            if sink_add is not None:
                sink_add(dumps(record, option=append_newline))
        if count_tokens:
            self._count_pending()
        return self._report(file_size)

    def _reject(self, line_no: int, record: object, rule: str, message: str) -> None:
        """Record a line's problem. A valid example nests 3 levels at most, so only a rejected line can
        be pathologically deep: its depth is measured here, off the hot path, and wins over the rule."""
        depth = self.options.max_depth
        if _depth_exceeds(record, depth):
            rule, message = "nesting_too_deep", f"the JSON is nested deeper than {depth} levels"
        self.findings.add(line_no, rule, message)

    def _count_pending(self) -> None:
        if not self._pending_texts:
            return
        limit = self.options.max_seq_length
        for n in self.counter.count(self._pending_texts):
            self.token_stats.add(n)
            if limit is not None and n > limit:
                self.too_long += 1
        self._pending_texts.clear()

    def _report(self, file_size: int | None) -> DatasetCheckReport:
        options, findings = self.options, self.findings
        if self.nonblank_lines == 0:
            findings.add(None, "empty_file", "the file has no examples (it is empty or has only blank lines)")
        elif self.format is None and "missing_key" in findings.rules:
            findings.add(None, "unknown_format", f"no line has the keys of a known format ({_known_keys()})")
        has_min = self.samples >= options.min_samples
        if not has_min and self.nonblank_lines:
            findings.add(None, "too_few_samples", f"{self.samples} valid examples; at least {options.min_samples} are needed")
        if options.max_seq_length is not None and self.samples and self.too_long == self.samples:
            findings.add(
                None,
                "all_too_long",
                f"every example is longer than maxSeqLength {options.max_seq_length} tokens (shortest: {self.token_stats.low})",
            )
        rules = findings.rules
        message = _summary(findings, self.samples, self.format, "line")
        if not findings.count and self.too_long:
            message += f"; {self.too_long} longer than {options.max_seq_length} tokens will be truncated"
        return DatasetCheckReport(
            is_check_passed=findings.count == 0,
            message=message,
            found=True,
            file_size=file_size,
            filetype="jsonl",
            utf8="not_utf8" not in rules,
            line_type=not (rules & _LINE_TYPE_RULES),
            key_value=not (rules - _LINE_TYPE_RULES - _FILE_RULES - {"too_few_samples", "all_too_long"}),
            has_min_samples=has_min,
            num_samples=self.samples,
            format=self.format,
            errors=findings.errors,
            error_count=findings.count,
            token_stats=self.token_stats.result(),
            message_stats=self.message_stats.result(),
        )


def _keys(record: dict) -> str:
    keys = ", ".join(_describe(k) for k in list(record)[:8])
    return keys or "none"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _known_keys() -> str:
    return "'messages', 'prompt'/'completion', 'text' or 'preferred_output'/'non_preferred_output'"


# ----------------------------------------------------------------------------------------------
# Parquet


class ParquetChecker:
    """Checks a Parquet file row-wise, one batch (within a row group) at a time, with pyarrow compute."""

    def __init__(self, options: CheckOptions, sink: ExampleSink | None = None, batch_rows: int = 8192):
        self.options = options
        self.sink = sink
        self.batch_rows = batch_rows
        self.findings = _Findings(options.max_errors)
        self.samples = 0
        self.rows = 0
        self.token_stats = _Stats()
        self.too_long = 0

    def check(self, path: str | Path, file_size: int | None = None) -> DatasetCheckReport:
        import pyarrow as pa
        import pyarrow.parquet as pq

        base = dict(found=True, file_size=file_size, filetype="parquet", format="parquet")
        try:
            parquet = pq.ParquetFile(str(path))
        except (pa.ArrowException, OSError) as e:
            return _failed("bad_parquet", f"not a readable Parquet file: {e}", utf8=None, **base)
        schema = parquet.schema_arrow
        problems: list[tuple[str, str]] = []
        if "input_ids" not in schema.names:
            problems.append(("missing_column", f"no 'input_ids' column (columns: {', '.join(schema.names) or 'none'})"))
        for name in schema.names:
            if name not in PARQUET_COLUMNS:
                problems.append(("unknown_column", f"unknown column '{name}' (allowed: {', '.join(PARQUET_COLUMNS)})"))
            elif not _is_int_list(schema.field(name).type):
                problems.append(("bad_column_type", f"column '{name}' must be a list of integers, is {schema.field(name).type}"))
        oversized = _oversized_row_group(parquet.metadata, self.options.max_row_group_bytes)
        if oversized is not None:
            problems.append(("too_large", oversized))
        if problems:
            for rule, message in problems:
                self.findings.add(None, rule, message)
            return self._report(base, key_value=False)
        with parquet:
            for batch in parquet.iter_batches(batch_size=self.batch_rows):
                self._check_batch(batch)
        return self._report(base, key_value=True)

    def _check_batch(self, batch: pyarrow.RecordBatch) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        n = batch.num_rows
        offset = self.rows
        self.rows += n
        ids = batch.column("input_ids")
        lengths = pc.fill_null(pc.list_value_length(ids), 0)
        bad = pa.array([False] * n)

        def flag(mask: pa.Array, rule: str, message: Callable[[int], str]) -> None:
            nonlocal bad
            mask = pc.fill_null(mask, False)
            newly = pc.and_(mask, pc.invert(bad))
            for index in pc.indices_nonzero(newly).to_pylist():
                self.findings.add(offset + index + 1, rule, message(index))
            bad = pc.or_(bad, mask)

        def any_in_row(column: pa.Array, element_mask: pa.Array) -> pa.Array:
            """Rows of a list column where some element matches ``element_mask`` (over the flattened values)."""
            parents = pc.list_parent_indices(column)
            hit_rows = pc.filter(parents, pc.fill_null(element_mask, False))
            return pc.is_in(pa.array(range(n), pa.int64()), value_set=pc.unique(hit_rows).cast(pa.int64()))

        limit = self.options.max_row_values
        flag(pc.greater(lengths, limit), "row_too_long", lambda i: f"input_ids has {lengths[i].as_py()} values; the limit is {limit} per row")
        flag(ids.is_null(), "null_value", lambda i: "input_ids is null")
        flag(pc.equal(lengths, 0), "empty_input_ids", lambda i: "input_ids is empty")
        flat_ids = pc.list_flatten(ids)
        flag(any_in_row(ids, flat_ids.is_null()), "null_value", lambda i: "input_ids holds a null")
        flag(any_in_row(ids, pc.less(flat_ids, 0)), "bad_token_id", lambda i: "input_ids holds a negative token id")
        names = batch.schema.names
        for name in ("labels", "attention_mask"):
            if name not in names:
                continue
            column = batch.column(name)
            other_lengths = pc.list_value_length(column)
            flag(column.is_null(), "null_value", lambda i, name=name: f"{name} is null")
            flag(
                pc.not_equal(other_lengths, lengths),
                "length_mismatch",
                lambda i, name=name, ol=other_lengths: f"{name} has {ol[i].as_py()} values, input_ids {lengths[i].as_py()}",
            )
            flat = pc.list_flatten(column)
            flag(any_in_row(column, flat.is_null()), "null_value", lambda i, name=name: f"{name} holds a null")
            if name == "labels":
                wrong = pc.and_(pc.less(flat, 0), pc.not_equal(flat, IGNORED_LABEL))
                flag(any_in_row(column, wrong), "bad_token_id", lambda i: "labels hold a value that is neither a token id nor -100")
            else:
                wrong = pc.invert(pc.is_in(flat, value_set=pa.array([0, 1], flat.type)))
                flag(any_in_row(column, wrong), "bad_attention_mask", lambda i: "attention_mask holds a value other than 0 or 1")
        good = pc.invert(bad)
        valid = batch.filter(good)
        if valid.num_rows:
            good_lengths = pc.filter(lengths, good)
            self.samples += valid.num_rows
            low_high = pc.min_max(good_lengths).as_py()
            self.token_stats.add_many(valid.num_rows, int(pc.sum(good_lengths).as_py()), low_high["min"], low_high["max"])
            if self.options.max_seq_length is not None:
                self.too_long += int(pc.sum(pc.greater(good_lengths, self.options.max_seq_length).cast(pa.int64())).as_py() or 0)
            if self.sink is not None:
                self.sink.add_rows(valid)

    def _report(self, base: dict, key_value: bool) -> DatasetCheckReport:
        options, findings = self.options, self.findings
        if key_value and self.rows == 0:
            findings.add(None, "empty_file", "the Parquet file has no rows")
        has_min = self.samples >= options.min_samples
        if key_value and not has_min and self.rows:
            findings.add(None, "too_few_samples", f"{self.samples} valid rows; at least {options.min_samples} are needed")
        if options.max_seq_length is not None and self.samples and self.too_long == self.samples:
            findings.add(
                None,
                "all_too_long",
                f"every row is longer than maxSeqLength {options.max_seq_length} tokens (shortest: {self.token_stats.low})",
            )
        message = _summary(findings, self.samples, "parquet", "row")
        if not findings.count and self.too_long:
            message += f"; {self.too_long} longer than {options.max_seq_length} tokens will be truncated"
        row_rules = findings.rules - _FILE_RULES - {"too_few_samples", "all_too_long"}
        return DatasetCheckReport(
            is_check_passed=findings.count == 0,
            message=message,
            utf8=None,
            line_type=True,
            key_value=key_value and not row_rules,
            has_min_samples=has_min,
            num_samples=self.samples,
            errors=findings.errors,
            error_count=findings.count,
            token_stats=self.token_stats.result(),
            **base,
        )


def _is_int_list(data_type: pyarrow.DataType) -> bool:
    import pyarrow as pa

    return (pa.types.is_list(data_type) or pa.types.is_large_list(data_type)) and pa.types.is_integer(data_type.value_type)


# ----------------------------------------------------------------------------------------------
# Entry points


def _oversized_row_group(metadata: pyarrow.parquet.FileMetaData, limit: int) -> str | None:
    """Why the first row group whose values (counted by the file's metadata, 8 bytes each as int64) take more than
    ``limit`` bytes is refused; None when none does."""
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        values = sum(group.column(c).num_values for c in range(group.num_columns))
        if values * 8 > limit:  # the values decoded, whatever their encoding and compression on disk
            return (
                f"row group {index + 1} of {metadata.num_row_groups} decodes to {values * 8} bytes ({values} values of 8 "
                f"bytes); the limit is {limit} bytes per row group"
            )
    return None


def is_parquet(name: str | None, head: bytes) -> bool:
    """Parquet by extension, else by the ``PAR1`` magic at the start of the file."""
    if name and name.lower().rsplit("?", 1)[0].endswith((".parquet", ".pq")):
        return True
    return head.startswith(PARQUET_MAGIC)


def check_stream(
    stream: BinaryIO,
    options: CheckOptions = CheckOptions(),
    *,
    file_size: int | None = None,
    sink: ExampleSink | None = None,
    counter: TokenCounter | None = None,
) -> DatasetCheckReport:
    """Check a JSONL byte stream (buffered: it needs ``readline``). Size limits are the caller's job."""
    if options.format == "parquet":
        return _failed("format_mismatch", "the format is parquet but the file is not a Parquet file", file_size=file_size, filetype="jsonl")
    if counter is None and options.tokenizer is not None:
        counter = TokenCounter.load(options.tokenizer)
    return JsonlChecker(options, sink, counter).check(stream, file_size)


def precheck_size(size: int | None, options: CheckOptions) -> DatasetCheckReport | None:
    """The verdict decided from the size alone (too large, empty), or None when the file must be read."""
    if size is None:
        return None
    if size > options.max_bytes:
        return _failed(
            "too_large",
            f"the file has {size} bytes ({size / (1 << 30):.2f} GiB); the limit is {options.max_bytes} bytes",
            file_size=size,
        )
    if size == 0:
        return _failed("empty_file", "the file is empty", file_size=0, has_min_samples=False, num_samples=0)
    return None


def check_file(path: str | Path, options: CheckOptions = CheckOptions(), sink: ExampleSink | None = None) -> DatasetCheckReport:
    """Check a local JSONL or Parquet file. The size is checked first, from ``stat``, without reading."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return _failed("not_found", f"no such file: {path}", found=False)
    early = precheck_size(size, options)
    if early is not None:
        return early
    with open(path, "rb", buffering=1 << 20) as f:
        parquet = is_parquet(path.name, f.peek(4)[:4])
        if parquet:
            if options.format not in ("auto", "parquet"):
                return _failed(
                    "format_mismatch", f"the format is {options.format} but the file is Parquet", file_size=size, filetype="parquet"
                )
        else:
            return check_stream(f, options, file_size=size, sink=sink)
    return ParquetChecker(options, sink).check(path, size)


def iter_rules() -> Iterator[tuple[str, str]]:
    """The rule ids and what each means, for documentation and ``--help``."""
    return iter(RULES.items())


__all__ = [
    "RULES",
    "CheckOptions",
    "ExampleSink",
    "JsonlChecker",
    "ParquetChecker",
    "TokenCounter",
    "check_file",
    "check_stream",
    "is_parquet",
    "precheck_size",
]
