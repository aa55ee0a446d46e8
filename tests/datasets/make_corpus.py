"""Writes the malformed-dataset corpus under corpus/ and its expected.yaml (rule and line per file).

The files are committed; run this only to change them: ``python tests/datasets/make_corpus.py``.
Each malformed file holds enough good examples to pass ``minSamples`` and one problem at a known line, so
the report must name exactly that rule and line. corpus/valid/ holds files that are odd but valid.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

HERE = Path(__file__).parent / "corpus"


def chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You answer questions about the weather."},
            {"role": "user", "content": f"What is the weather like in city {i}?"},
            {"role": "assistant", "content": f"It is sunny in city {i}, {10 + i} degrees."},
        ]
    }


def instruction(i: int) -> dict:
    return {"prompt": f"Add {i} and {i}.", "completion": f"{2 * i}"}


def text(i: int) -> dict:
    return {"text": f"Example document number {i}. It has two sentences."}


def preference(i: int) -> dict:
    return {
        "input": {"messages": [{"role": "system", "content": "Answer politely."}, {"role": "user", "content": f"Where is parcel {i}?"}]},
        "preferred_output": [{"role": "assistant", "content": f"Parcel {i} is on its way and arrives tomorrow, thank you for waiting."}],
        "non_preferred_output": [{"role": "assistant", "content": f"Parcel {i}? No idea."}],
    }


def pref(conversation: list | object = None, preferred: object = None, non_preferred: object = None, **extra) -> bytes:
    """A preference line; each part defaults to a good one, ``extra`` adds or (with None) removes keys."""
    good_one = preference(0)
    record = {
        "input": {"messages": conversation} if isinstance(conversation, list) else (conversation or good_one["input"]),
        "preferred_output": good_one["preferred_output"] if preferred is None else preferred,
        "non_preferred_output": good_one["non_preferred_output"] if non_preferred is None else non_preferred,
    }
    for key, value in extra.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return line(record)


def answer(content: object, role: str = "assistant") -> list[dict]:
    return [{"role": role, "content": content}]


def line(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def good(kind=chat, n: int = 12) -> list[bytes]:
    return [line(kind(i)) for i in range(n)]


def with_bad(bad: bytes, at: int, kind=chat, n: int = 12) -> bytes:
    """n good lines with ``bad`` inserted so that it is line ``at`` (1-based)."""
    lines = good(kind, n)
    lines.insert(at - 1, bad)
    return b"\n".join(lines) + b"\n"


def msgs(*pairs, extra: dict | None = None) -> bytes:
    messages = []
    for pair in pairs:
        if isinstance(pair, dict):
            messages.append(pair)
        else:
            role, content = pair
            messages.append({"role": role, "content": content})
    return line({"messages": messages, **(extra or {})})


def parquet(path: Path, columns: dict[str, pa.Array]) -> None:
    pq.write_table(pa.table(columns), path)


def ids_rows(n: int = 12) -> list[list[int]]:
    return [[1, 20 + i, 30 + i, 2] for i in range(n)]


def main() -> None:
    HERE.mkdir(exist_ok=True)
    expected: dict[str, dict] = {}

    def add(name: str, content: bytes, rule: str, line_no: int | None, **more) -> None:
        (HERE / name).write_bytes(content)
        expected[name] = {"rule": rule, "line": line_no, **more}

    ok = (("user", "hi"), ("assistant", "hello"))
    # encoding
    add("not_utf8.jsonl", with_bad(b'{"messages": [{"role": "user", "content": "caf\xff"}, {"role": "assistant", "content": "x"}]}', 3), "not_utf8", 3)
    add("not_utf8_latin1.jsonl", with_bad(msgs(("user", "café"), ("assistant", "oui")).replace("é".encode(), b"\xe9"), 5), "not_utf8", 5)
    add("utf16.jsonl", ("\ufeff" + "\n".join(json.dumps(chat(i)) for i in range(12)) + "\n").encode("utf-16-le"), "not_utf8", 1)
    # JSON syntax
    add("not_json.jsonl", with_bad(b'{"messages": [}', 4), "not_json", 4)
    add("not_json_single_quotes.jsonl", with_bad(str(chat(0)).encode(), 2), "not_json", 2)
    add("not_json_trailing_comma.jsonl", with_bad(b'{"text": "a",}', 6, text), "not_json", 6)
    add("not_json_nan.jsonl", with_bad(b'{"prompt": "a", "completion": NaN}', 8, instruction), "not_json", 8)
    add("not_json_two_objects.jsonl", with_bad(line(chat(1)) + b" " + line(chat(2)), 3), "not_json", 3)
    add("truncated_line.jsonl", b"\n".join(good()) + b"\n" + line(chat(99))[:40], "truncated_line", 13)
    add("not_object_array.jsonl", with_bad(line([chat(1)]), 6), "not_object", 6)
    add("not_object_string.jsonl", with_bad(b'"hello"', 2), "not_object", 2)
    add("not_object_null.jsonl", with_bad(b"null", 10), "not_object", 10)
    add("nesting_too_deep.jsonl", with_bad(b'{"text": "a", "meta": ' + b"[" * 100 + b"]" * 100 + b"}", 4, text), "nesting_too_deep", 4)
    add("nesting_too_deep_pathological.jsonl", with_bad(b"[" * 20_000 + b"]" * 20_000, 2), "nesting_too_deep", 2)
    # formats and keys
    add("mixed_formats.jsonl", with_bad(line(instruction(1)), 7), "mixed_formats", 7)
    add("mixed_formats_text.jsonl", with_bad(line(text(1)), 3, instruction), "mixed_formats", 3)
    add("unknown_key_top.jsonl", with_bad(line({**chat(1), "metadata": {"id": 1}}), 5), "unknown_key", 5)
    add("unknown_key_message.jsonl", with_bad(msgs({"role": "user", "content": "hi", "name": "bob"}, ("assistant", "hey")), 9), "unknown_key", 9)
    add("unknown_key_instruction.jsonl", with_bad(line({**instruction(1), "id": 7}), 2, instruction), "unknown_key", 2)
    add("missing_key_role.jsonl", with_bad(msgs({"content": "hi"}, ("assistant", "hey")), 3), "missing_key", 3)
    add("missing_key_content.jsonl", with_bad(msgs(("user", "hi"), {"role": "assistant"}), 11), "missing_key", 11)
    add("missing_key_completion.jsonl", with_bad(line({"prompt": "hi"}), 4, instruction), "missing_key", 4)
    add("missing_key_no_format.jsonl", with_bad(line({"input": "hi", "output": "hey"}), 12), "missing_key", 12)
    add(
        "unknown_format.jsonl",
        b"\n".join(line({"input": f"q{i}", "output": f"a{i}"}) for i in range(12)) + b"\n",
        "unknown_format",
        None,
    )
    add("format_mismatch.jsonl", b"\n".join(good()) + b"\n", "format_mismatch", None, options={"format": "parquet"})
    add("format_mismatch_declared.jsonl", b"\n".join(good(instruction)) + b"\n", "mixed_formats", 1, options={"format": "chat"})
    add("wrong_type_messages_object.jsonl", with_bad(line({"messages": {"role": "user", "content": "hi"}}), 2), "wrong_type", 2)
    add("wrong_type_message_string.jsonl", with_bad(line({"messages": ["hi", "hello"]}), 8), "wrong_type", 8)
    add("empty_messages.jsonl", with_bad(line({"messages": []}), 5), "empty_messages", 5)
    # conversation rules
    add("unknown_role.jsonl", with_bad(msgs(("user", "hi"), ("bot", "hello")), 3), "unknown_role", 3)
    add("unknown_role_capitalized.jsonl", with_bad(msgs(("User", "hi"), ("assistant", "hello")), 6), "unknown_role", 6)
    add("unknown_role_tool.jsonl", with_bad(msgs(("user", "hi"), ("tool", "{}"), ("assistant", "ok")), 4), "unknown_role", 4)
    add("repeated_role_user.jsonl", with_bad(msgs(("user", "hi"), ("user", "again"), ("assistant", "hello")), 7), "repeated_role", 7)
    add("repeated_role_assistant.jsonl", with_bad(msgs(("user", "hi"), ("assistant", "a"), ("assistant", "b")), 12), "repeated_role", 12)
    add("system_not_first.jsonl", with_bad(msgs(("user", "hi"), ("system", "be brief"), ("assistant", "ok")), 2), "system_not_first", 2)
    add("no_final_assistant.jsonl", with_bad(msgs(("user", "hi"), ("assistant", "hello"), ("user", "bye")), 9), "no_final_assistant", 9)
    add("no_final_assistant_system_only.jsonl", with_bad(msgs(("system", "rules")), 1), "no_final_assistant", 1)
    add("empty_content.jsonl", with_bad(msgs(("user", "hi"), ("assistant", "")), 4), "empty_content", 4)
    add("empty_content_whitespace.jsonl", with_bad(msgs(("user", "  \n\t "), ("assistant", "ok")), 10), "empty_content", 10)
    add("empty_completion.jsonl", with_bad(line({"prompt": "hi", "completion": ""}), 3, instruction), "empty_content", 3)
    add("empty_text.jsonl", with_bad(line({"text": ""}), 5, text), "empty_content", 5)
    add("content_not_string_null.jsonl", with_bad(msgs(("user", None), ("assistant", "ok")), 6), "content_not_string", 6)
    add(
        "content_not_string_parts.jsonl",
        with_bad(msgs(("user", [{"type": "text", "text": "hi"}]), ("assistant", "ok")), 2),
        "content_not_string",
        2,
    )
    add("content_not_string_prompt.jsonl", with_bad(line({"prompt": 42, "completion": "x"}), 7, instruction), "content_not_string", 7)
    add("content_not_string_text.jsonl", with_bad(line({"text": ["a", "b"]}), 3, text), "content_not_string", 3)
    # weights (OpenAI: integer 0 or 1, assistant messages only)
    add("bad_weight_two.jsonl", with_bad(msgs(*ok[:1], {"role": "assistant", "content": "x", "weight": 2}), 3), "bad_weight", 3)
    add("bad_weight_string.jsonl", with_bad(msgs(*ok[:1], {"role": "assistant", "content": "x", "weight": "1"}), 4), "bad_weight", 4)
    add("bad_weight_float.jsonl", with_bad(msgs(*ok[:1], {"role": "assistant", "content": "x", "weight": 0.5}), 5), "bad_weight", 5)
    add("bad_weight_bool.jsonl", with_bad(msgs(*ok[:1], {"role": "assistant", "content": "x", "weight": True}), 6), "bad_weight", 6)
    add("bad_weight_on_user.jsonl", with_bad(msgs({"role": "user", "content": "hi", "weight": 1}, ok[1]), 7), "bad_weight", 7)
    # control characters (tab, newline, carriage return are fine)
    add("control_character_nul.jsonl", with_bad(msgs(("user", "a\u0000b"), ("assistant", "ok")), 3), "control_character", 3)
    add("control_character_escape.jsonl", with_bad(msgs(("user", "hi"), ("assistant", "\u001b[31mred")), 8), "control_character", 8)
    add("control_character_backspace.jsonl", with_bad(line({"prompt": "a\bb", "completion": "c"}), 2, instruction), "control_character", 2)
    add("control_character_c1.jsonl", with_bad(line({"text": "next\u0085line"}), 6, text), "control_character", 6)
    add("control_character_del.jsonl", with_bad(msgs(("user", "del\x7f"), ("assistant", "ok")), 11), "control_character", 11)
    # preference pairs (Together's shape, for DPO)
    user = [{"role": "user", "content": "hi"}]
    add("preference_no_final_user.jsonl", with_bad(pref([*user, {"role": "assistant", "content": "hello"}]), 4, preference), "no_final_user", 4)
    add("preference_no_final_user_system_only.jsonl", with_bad(pref([{"role": "system", "content": "rules"}]), 9, preference), "no_final_user", 9)
    add("preference_identical_outputs.jsonl", with_bad(pref(user, answer("same"), answer("same")), 6, preference), "identical_outputs", 6)
    add("preference_missing_preferred.jsonl", with_bad(pref(preferred_output=None), 3, preference), "missing_key", 3)
    add("preference_missing_non_preferred.jsonl", with_bad(pref(non_preferred_output=None), 11, preference), "missing_key", 11)
    add("preference_missing_input.jsonl", with_bad(pref(input=None), 2, preference), "missing_key", 2)
    add("preference_input_no_messages.jsonl", with_bad(pref({"conversation": user}), 5, preference), "unknown_key", 5)
    add("preference_input_empty_object.jsonl", with_bad(pref(input={}), 8, preference), "missing_key", 8)
    add("preference_input_not_object.jsonl", with_bad(pref(input=user), 7, preference), "wrong_type", 7)
    add("preference_input_empty_messages.jsonl", with_bad(pref([]), 10, preference), "empty_messages", 10)
    add("preference_empty_preferred.jsonl", with_bad(pref(user, answer("  ")), 4, preference), "empty_content", 4)
    add("preference_empty_output_list.jsonl", with_bad(pref(user, []), 12, preference), "bad_output", 12)
    add("preference_two_outputs.jsonl", with_bad(pref(user, None, answer("a") + answer("b")), 3, preference), "bad_output", 3)
    add("preference_output_user_role.jsonl", with_bad(pref(user, answer("a", role="user")), 6, preference), "output_not_assistant", 6)
    add("preference_output_not_list.jsonl", with_bad(pref(user, {"role": "assistant", "content": "a"}), 9, preference), "wrong_type", 9)
    add("preference_output_no_content.jsonl", with_bad(pref(user, None, [{"role": "assistant"}]), 5, preference), "missing_key", 5)
    add("preference_output_weight.jsonl", with_bad(pref(user, [{"role": "assistant", "content": "a", "weight": 1}]), 2, preference), "unknown_key", 2)
    add("preference_output_content_not_string.jsonl", with_bad(pref(user, None, answer(["a"])), 13, preference), "content_not_string", 13)
    add("preference_unknown_key.jsonl", with_bad(pref(id=7), 1, preference), "unknown_key", 1)
    add("preference_unknown_role.jsonl", with_bad(pref([{"role": "customer", "content": "hi"}]), 7, preference), "unknown_role", 7)
    add("preference_repeated_role.jsonl", with_bad(pref([*user, *user]), 4, preference), "repeated_role", 4)
    add("preference_system_not_first.jsonl", with_bad(pref([*user, {"role": "system", "content": "be kind"}, *user]), 6, preference), "system_not_first", 6)
    add("preference_control_character.jsonl", with_bad(pref(user, answer("bell\u0007")), 8, preference), "control_character", 8)
    add("preference_mixed_formats.jsonl", with_bad(line(chat(1)), 5, preference), "mixed_formats", 5)
    add("preference_in_chat_file.jsonl", with_bad(line(preference(1)), 9), "mixed_formats", 9)
    add("preference_declared_chat.jsonl", b"\n".join(good(preference)) + b"\n", "mixed_formats", 1, options={"format": "chat"})
    add("preference_too_few_samples.jsonl", b"\n".join(good(preference, n=4)) + b"\n", "too_few_samples", None)
    # the file as a whole
    add("empty_file.jsonl", b"", "empty_file", None)
    add("blank_lines_only.jsonl", b"\n\n   \n\r\n", "empty_file", None)
    add("too_few_samples.jsonl", b"\n".join(good(n=5)) + b"\n", "too_few_samples", None)
    add("too_few_samples_after_errors.jsonl", with_bad(b"{oops", 1, n=9), "too_few_samples", None)
    # Parquet (pre-tokenized)
    rows = ids_rows()
    (HERE / "bad_parquet.parquet").write_bytes(b"PAR1 this is not really parquet PAR1")
    expected["bad_parquet.parquet"] = {"rule": "bad_parquet", "line": None}
    parquet(HERE / "missing_column.parquet", {"tokens": pa.array(rows)})
    expected["missing_column.parquet"] = {"rule": "missing_column", "line": None}
    parquet(HERE / "unknown_column.parquet", {"input_ids": pa.array(rows), "text": pa.array(["x"] * 12)})
    expected["unknown_column.parquet"] = {"rule": "unknown_column", "line": None}
    parquet(HERE / "bad_column_type.parquet", {"input_ids": pa.array([[str(t) for t in r] for r in rows])})
    expected["bad_column_type.parquet"] = {"rule": "bad_column_type", "line": None}
    bad_rows = [list(r) for r in rows]
    bad_rows[2] = []
    parquet(HERE / "empty_input_ids.parquet", {"input_ids": pa.array(bad_rows)})
    expected["empty_input_ids.parquet"] = {"rule": "empty_input_ids", "line": 3}
    null_rows: list = [list(r) for r in rows]
    null_rows[1] = None
    parquet(HERE / "null_input_ids.parquet", {"input_ids": pa.array(null_rows, pa.list_(pa.int32()))})
    expected["null_input_ids.parquet"] = {"rule": "null_value", "line": 2}
    negative = [list(r) for r in rows]
    negative[4] = [1, -5, 2]
    parquet(HERE / "bad_token_id.parquet", {"input_ids": pa.array(negative)})
    expected["bad_token_id.parquet"] = {"rule": "bad_token_id", "line": 5}
    labels = [list(r) for r in rows]
    labels[1] = labels[1][:-1]
    parquet(HERE / "length_mismatch.parquet", {"input_ids": pa.array(rows), "labels": pa.array(labels)})
    expected["length_mismatch.parquet"] = {"rule": "length_mismatch", "line": 2}
    masks = [[1] * len(r) for r in rows]
    masks[3][1] = 2
    parquet(HERE / "bad_attention_mask.parquet", {"input_ids": pa.array(rows), "attention_mask": pa.array(masks)})
    expected["bad_attention_mask.parquet"] = {"rule": "bad_attention_mask", "line": 4}
    bad_labels = [list(r) for r in rows]
    bad_labels[6] = [-7] * len(bad_labels[6])
    parquet(HERE / "bad_label.parquet", {"input_ids": pa.array(rows), "labels": pa.array(bad_labels)})
    expected["bad_label.parquet"] = {"rule": "bad_token_id", "line": 7}
    parquet(HERE / "too_few_rows.parquet", {"input_ids": pa.array(rows[:3])})
    expected["too_few_rows.parquet"] = {"rule": "too_few_samples", "line": None}
    parquet(HERE / "chat_asked_parquet_is.parquet", {"input_ids": pa.array(rows)})
    expected["chat_asked_parquet_is.parquet"] = {"rule": "format_mismatch", "line": None, "options": {"format": "chat"}}

    header = (
        "# Each malformed file: the rule it breaks and the 1-based line (JSONL) or row (Parquet) where;\n"
        "# line null: the whole file. options: what the check is run with. Written by ../make_corpus.py.\n"
    )
    (HERE / "expected.yaml").write_text(header + yaml.safe_dump(expected, sort_keys=True))

    # Valid though odd.
    valid = HERE / "valid"
    valid.mkdir(exist_ok=True)
    valid_expected: dict[str, dict] = {}

    def add_valid(name: str, content: bytes, fmt: str, samples: int) -> None:
        (valid / name).write_bytes(content)
        valid_expected[name] = {"format": fmt, "num_samples": samples}

    lines = good()
    add_valid("bom.jsonl", b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n", "chat", 12)
    add_valid("crlf.jsonl", b"\r\n".join(lines) + b"\r\n", "chat", 12)
    add_valid("blank_lines.jsonl", b"\n\n" + b"\n\n  \n".join(lines) + b"\n\n\n", "chat", 12)
    add_valid("no_final_newline.jsonl", b"\n".join(lines), "chat", 12)
    non_ascii = [
        msgs(("system", "Réponds en français."), ("user", f"Quelle heure est-il à Zürich ? {i}"), ("assistant", "Il est midi. 🕛"))
        for i in range(6)
    ] + [msgs(("user", f"東京の天気は？{i}"), ("assistant", "晴れです。\t気温は２０度。\r\n")) for i in range(6)]
    add_valid("non_ascii.jsonl", b"\n".join(non_ascii) + b"\n", "chat", 12)
    weighted = [
        msgs(
            ("user", f"q{i}"),
            {"role": "assistant", "content": "draft", "weight": 0},
            ("user", "better?"),
            {"role": "assistant", "content": f"answer {i}", "weight": 1},
        )
        for i in range(12)
    ]
    add_valid("weights.jsonl", b"\n".join(weighted) + b"\n", "chat", 12)
    add_valid("escaped_newlines.jsonl", b"\n".join(msgs(("user", f"line one\nline two {i}"), ("assistant", "a\\nb\\tc")) for i in range(12)) + b"\n", "chat", 12)
    add_valid("instruction.jsonl", b"\n".join(good(instruction)) + b"\n", "instruction", 12)
    add_valid("empty_prompt.jsonl", b"\n".join(line({"prompt": "", "completion": f"c{i}"}) for i in range(12)) + b"\n", "instruction", 12)
    add_valid("text.jsonl", b"\n".join(good(text)) + b"\n", "text", 12)
    add_valid("preference.jsonl", b"\n".join(good(preference)) + b"\n", "preference", 12)
    multi_turn = [
        line({"input": {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "and?"}]},
              "preferred_output": answer(f"more {i}"), "non_preferred_output": answer("no")})
        for i in range(12)
    ]
    add_valid("preference_multi_turn.jsonl", b"\n".join(multi_turn) + b"\n", "preference", 12)
    add_valid("ascii_escapes.jsonl", b"\n".join(json.dumps(chat(i) | {"messages": chat(i)["messages"][1:]} ).encode() for i in range(12)) + b"\n", "chat", 12)
    parquet(
        valid / "tokens.parquet",
        {
            "input_ids": pa.array(rows),
            "labels": pa.array([[-100, -100] + r[2:] for r in rows]),
            "attention_mask": pa.array([[1] * len(r) for r in rows]),
        },
    )
    valid_expected["tokens.parquet"] = {"format": "parquet", "num_samples": 12}
    (valid / "expected.yaml").write_text("# Valid though odd: the format and number of examples each must give.\n" + yaml.safe_dump(valid_expected, sort_keys=True))
    print(f"{len(expected)} malformed files, {len(valid_expected)} valid ones")


if __name__ == "__main__":
    main()
