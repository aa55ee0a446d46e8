"""The checker itself: every malformed file is refused with its rule and line, odd but valid files pass."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune_trainer.data.validate import RULES, CheckOptions, check_file, check_stream

from .conftest import CORPUS, VALID, chat_line, load_expected, write_chat

EXPECTED = load_expected(CORPUS)
EXPECTED_VALID = load_expected(VALID)


def test_the_corpus_covers_every_line_rule_and_is_large_enough():
    assert len(EXPECTED) >= 40
    covered = {entry["rule"] for entry in EXPECTED.values()}
    # Rules the corpus cannot hold as a small committed file are covered by the tests below.
    elsewhere = {
        "not_found", "source_unreachable", "access_denied", "too_large", "line_too_long", "all_too_long",
        "tokenizer_unavailable", "upload_failed", "row_too_long",
    }  # fmt: skip
    assert set(RULES) - covered - elsewhere == set()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_malformed_file_is_refused_with_its_rule_and_line(name: str):
    expected = EXPECTED[name]
    report = check_file(CORPUS / name, CheckOptions(**expected.get("options", {})))

    assert not report.is_check_passed
    assert report.found
    assert_first_error(report.errors, expected)
    assert f"[{report.errors[0].rule}]" in report.message
    assert report.error_count >= 1


def assert_first_error(errors: list, expected: dict) -> None:
    """Whole-file problems come first in a report; a line's problem must be the first line problem."""
    if expected["line"] is None:
        first = errors[0]
    else:
        first = next(e for e in errors if e.line is not None)
    assert (first.line, first.rule) == (expected["line"], expected["rule"]), errors
    assert first.message


@pytest.mark.parametrize("name", sorted(EXPECTED_VALID))
def test_an_odd_but_valid_file_passes(name: str):
    expected = EXPECTED_VALID[name]
    report = check_file(VALID / name)

    assert report.is_check_passed, report.errors
    assert (report.format, report.num_samples) == (expected["format"], expected["num_samples"])
    assert report.errors == [] and report.error_count == 0
    assert report.has_min_samples and report.key_value and report.line_type


def test_the_report_has_the_shape_of_together_check_file():
    report = check_file(CORPUS / "not_utf8.jsonl")
    data = json.loads(report.to_json())

    assert data["isCheckPassed"] is False
    assert data["found"] is True and data["filetype"] == "jsonl"
    assert data["fileSize"] == (CORPUS / "not_utf8.jsonl").stat().st_size
    assert data["utf8"] is False and data["lineType"] is False
    assert data["hasMinSamples"] is True and data["numSamples"] == 12
    assert data["errors"] == [
        {"line": 3, "rule": "not_utf8", "message": "not valid UTF-8: byte 0xff at byte 47 of the line"}
    ]


def test_a_utf16_file_is_told_to_be_saved_as_utf8():
    report = check_file(CORPUS / "utf16.jsonl")
    assert "UTF-16" in next(e for e in report.errors if e.line == 1).message


def test_a_file_over_max_bytes_is_refused_from_its_size_without_reading_it(tmp_path: Path):
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:
        f.truncate((1 << 30) + 1)  # sparse: no disk, and all NUL bytes, which any read would flag

    report = check_file(huge)

    assert not report.is_check_passed
    assert [(e.line, e.rule) for e in report.errors] == [(None, "too_large")]
    assert report.file_size == (1 << 30) + 1
    assert report.num_samples is None  # nothing was read


def test_max_bytes_is_configurable(tmp_path: Path):
    data = write_chat(tmp_path / "data.jsonl", 20)
    assert check_file(data, CheckOptions(max_bytes=100)).errors[0].rule == "too_large"
    assert check_file(data, CheckOptions(max_bytes=100_000)).is_check_passed


def test_min_samples_is_configurable(tmp_path: Path):
    data = write_chat(tmp_path / "data.jsonl", 3)
    assert check_file(data).errors[0].rule == "too_few_samples"
    report = check_file(data, CheckOptions(min_samples=3))
    assert report.is_check_passed and report.num_samples == 3


def test_a_line_over_the_line_limit_is_refused_and_the_next_lines_still_checked(tmp_path: Path):
    lines = [chat_line(i) for i in range(12)]
    lines[4] = chat_line(4, answer="x" * 5000)
    lines[6] = "{broken"
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")

    report = check_file(data, CheckOptions(max_line_bytes=1000))

    assert [(e.line, e.rule) for e in report.errors] == [(5, "line_too_long"), (7, "not_json")]
    assert report.num_samples == 10


def test_only_the_first_errors_are_listed_but_all_are_counted(tmp_path: Path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(chat_line(i) + "\n" if i % 2 else "nope\n" for i in range(100)))

    report = check_file(data, CheckOptions(max_errors=5))

    assert [e.line for e in report.errors] == [1, 3, 5, 7, 9]
    assert report.error_count == 50
    assert "50 problems in all" in report.message


def test_token_and_message_statistics_with_a_tokenizer(tmp_path: Path, byte_tokenizer: Path):
    data = tmp_path / "data.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cde"}]},
        {"messages": [{"role": "system", "content": "é"}, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    report = check_file(data, CheckOptions(min_samples=2, tokenizer=byte_tokenizer))

    # One token per UTF-8 byte of the contents joined by newlines: "ab\ncde" = 6, "é\nx\ny" = 6 ("é" is 2 bytes).
    assert report.token_stats.model_dump() == {"min": 6, "mean": 6.0, "max": 6, "total": 12}
    assert report.message_stats.model_dump() == {"min": 2, "mean": 2.5, "max": 3, "total": 5}


def test_the_preference_corpus_has_its_own_rules_each_with_a_line():
    """Malformed preference pairs (DPO data): at least 15 files, each refused at its line with its rule."""
    preference = {name: entry for name, entry in EXPECTED.items() if name.startswith("preference_")}
    assert len(preference) >= 15
    rules = {entry["rule"] for entry in preference.values()}
    assert {"no_final_user", "identical_outputs", "bad_output", "output_not_assistant", "missing_key", "mixed_formats"} <= rules
    assert sum(entry["line"] is not None for entry in preference.values()) >= 15


def test_preference_statistics_count_the_conversation_and_the_longer_answer(tmp_path: Path, byte_tokenizer: Path):
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"input": {"messages": [{"role": "user", "content": "ab"}]},
         "preferred_output": [{"role": "assistant", "content": "cde"}], "non_preferred_output": [{"role": "assistant", "content": "f"}]},
        {"input": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]},
         "preferred_output": [{"role": "assistant", "content": "y"}], "non_preferred_output": [{"role": "assistant", "content": "zzzz"}]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    report = check_file(data, CheckOptions(min_samples=2, tokenizer=byte_tokenizer))

    assert report.is_check_passed and report.format == "preference" and report.num_samples == 2
    # "ab\ncde" = 6 bytes; "s\nx\nzzzz" = 8 bytes (the non-preferred answer is the longer one there)
    assert report.token_stats.model_dump() == {"min": 6, "mean": 7.0, "max": 8, "total": 14}
    assert report.message_stats.model_dump() == {"min": 1, "mean": 1.5, "max": 2, "total": 3}


def test_a_dataset_whose_every_example_is_too_long_is_refused(tmp_path: Path, byte_tokenizer: Path):
    data = write_chat(tmp_path / "data.jsonl", 12)  # each example is at least 20 bytes of content

    refused = check_file(data, CheckOptions(tokenizer=byte_tokenizer, max_seq_length=10))
    assert [(e.line, e.rule) for e in refused.errors] == [(None, "all_too_long")]

    passed = check_file(data, CheckOptions(tokenizer=byte_tokenizer, max_seq_length=26))
    assert passed.is_check_passed
    assert "will be truncated" in passed.message  # the longest are over 26 tokens, the shortest not


def test_parquet_rows_are_checked_across_row_groups_with_their_row_numbers(tmp_path: Path):
    rows = [[1, 2, 3]] * 50
    rows[37] = []
    path = tmp_path / "tokens.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(rows)}), path, row_group_size=10)

    report = check_file(path, CheckOptions(max_seq_length=2))

    assert [(e.line, e.rule) for e in report.errors] == [(None, "all_too_long"), (38, "empty_input_ids")]
    assert report.num_samples == 49
    assert report.token_stats.total == 49 * 3


def test_a_parquet_row_over_the_row_limit_is_refused_with_its_row_number(tmp_path: Path):
    rows = [[1, 2, 3]] * 12
    rows[4] = list(range(101))
    path = tmp_path / "tokens.parquet"
    pq.write_table(pa.table({"input_ids": pa.array(rows)}), path)

    report = check_file(path, CheckOptions(max_row_values=100))

    assert [(e.line, e.rule) for e in report.errors] == [(5, "row_too_long")]
    assert "101 values; the limit is 100 per row" in report.errors[0].message
    assert report.num_samples == 11 and report.token_stats.max == 3


def test_a_small_parquet_file_that_decodes_to_more_than_the_row_group_limit_is_refused_before_decoding(tmp_path: Path):
    """A compression bomb: 2 MiB of zeros per row group, a few KiB on disk."""
    path = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[0] * (1 << 16)] * 4, pa.list_(pa.int64()))}), path, row_group_size=2)
    assert path.stat().st_size < 64 << 10

    report = check_file(path, CheckOptions(min_samples=4, max_row_group_bytes=1 << 19))

    assert not report.is_check_passed
    assert [(e.line, e.rule) for e in report.errors] == [(None, "too_large")]
    message = report.errors[0].message
    assert "row group 1 of 2 decodes to 1048576 bytes" in message and "the limit is 524288 bytes per row group" in message
    assert report.num_samples == 0
    assert check_file(path, CheckOptions(min_samples=4)).is_check_passed  # within the default limit


def test_parquet_is_recognised_by_its_magic_without_the_extension(tmp_path: Path):
    path = tmp_path / "tokens.bin"
    pq.write_table(pa.table({"input_ids": pa.array([[5, 6]] * 12)}), path)
    report = check_file(path)
    assert report.is_check_passed and report.filetype == "parquet" and report.format == "parquet"


def test_a_missing_file_is_not_found(tmp_path: Path):
    report = check_file(tmp_path / "nope.jsonl")
    assert not report.found and report.errors[0].rule == "not_found"


def test_the_checker_streams_in_bounded_reads(tmp_path: Path):
    """Memory does not grow with the file: no read asks for more than the buffer, whatever the size."""

    class RecordingRaw(io.RawIOBase):
        def __init__(self, data: bytes):
            self.inner = io.BytesIO(data)
            self.largest = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            self.largest = max(self.largest, len(buffer))
            return self.inner.readinto(buffer)

    data = ("".join(chat_line(i) + "\n" for i in range(40_000))).encode()
    raw = RecordingRaw(data)
    report = check_stream(io.BufferedReader(raw, buffer_size=64 * 1024))

    assert report.is_check_passed and report.num_samples == 40_000
    assert len(data) > 2_000_000 and raw.largest <= 64 * 1024


def test_the_checker_imports_neither_torch_nor_transformers():
    code = (
        "import sys; from finetune_trainer.data import validate; "
        "validate.check_file(sys.argv[1]); "
        "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code, str(VALID / "bom.jsonl")], check=True, timeout=60)
