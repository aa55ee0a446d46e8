"""The validation Job's program, ``finetune-trainer validate --config``: check, hash, split, publish, report."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from finetune_trainer.contract import ExitCode, ValidateConfig
from finetune_trainer.data.validate_cmd import DeterministicSplit, validate_dataset
from finetune_trainer.storage import ObjectStore

from .conftest import CORPUS, PRIVATE_TOKEN, VALID, FileServer, ValidateRun, chat_line, load_expected, run_validate, write_chat

EXPECTED = load_expected(CORPUS)


def config_for(source: str | Path, out: Path, **more) -> dict:
    return {"source": str(source), "outputUri": str(out / "datasets" / "ns" / "d"), "reportUri": str(out / "report.json"), **more}


LOOPBACK = {"allowPrivateUrls": True}
"""The test's file server is on loopback, which a pod reaches only where the admin allows private addresses."""


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The console script costs a Python start-up and the contract's import (~0.3 s of CPU) per run: every
# corpus file goes through the command's entry point in-process, and one file of each kind through the
# installed ``finetune-trainer`` in a subprocess, exactly as the validation Job runs it.
THROUGH_SUBPROCESS = {
    "not_utf8.jsonl",
    "truncated_line.jsonl",
    "nesting_too_deep_pathological.jsonl",
    "unknown_role.jsonl",
    "too_few_samples.jsonl",
    "empty_file.jsonl",
    "bad_parquet.parquet",
    "length_mismatch.parquet",
}


def run_in_process(folder: Path, config: dict, monkeypatch) -> ValidateRun:
    """``finetune-trainer validate --config`` through its entry point, without a new interpreter."""
    from finetune_trainer.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.json"
    config_file.write_text(json.dumps(config))
    termination = folder / "termination-log"
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(termination))
    code = main(["validate", "--config", str(config_file)])
    report_file = Path(config["reportUri"])
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    return ValidateRun(code, "", "", report, termination.read_text() if termination.exists() else None)


def refusal_problems(run: ValidateRun, expected: dict, out: Path) -> list[str]:
    problems = []
    if run.returncode != ExitCode.BAD_INPUT:
        problems.append(f"exit code {run.returncode}: {run.stderr[-500:]}")
    if run.report is None:
        return problems + ["no report"]
    errors = run.report["errors"]
    line_errors = [e for e in errors if e.get("line") is not None]
    first = errors[0] if expected["line"] is None else (line_errors[0] if line_errors else {})
    if (first.get("line"), first.get("rule")) != (expected["line"], expected["rule"]):
        problems.append(f"first error {first}, expected {expected}")
    if run.report["isCheckPassed"] or run.report["retryable"]:
        problems.append("reported as passed or retryable")
    if files_under(out / "datasets"):
        problems.append(f"wrote {files_under(out / 'datasets')}")
    if not run.termination_message or f"[{errors[0]['rule']}]" not in run.termination_message:
        problems.append(f"termination message {run.termination_message!r}")
    return problems


def test_every_corpus_file_is_refused_by_the_validate_command_with_only_a_report_written(tmp_path: Path, monkeypatch):
    problems = {}
    for name, expected in sorted(EXPECTED.items()):
        out = tmp_path / name
        run = run_in_process(out, config_for(CORPUS / name, out, **expected.get("options", {})), monkeypatch)
        problems[name] = refusal_problems(run, expected, out)

    assert {name: p for name, p in problems.items() if p} == {}


def test_the_installed_command_refuses_each_kind_of_malformed_file(tmp_path: Path):
    def validate(name: str) -> tuple[str, list[str]]:
        expected = EXPECTED[name]
        out = tmp_path / name
        return name, refusal_problems(run_validate(out, config_for(CORPUS / name, out, **expected.get("options", {}))), expected, out)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(validate, sorted(THROUGH_SUBPROCESS)))

    assert {name: problems for name, problems in results.items() if problems} == {}


def test_a_valid_file_is_normalised_split_and_published_with_its_manifest(tmp_path: Path):
    source = VALID / "bom.jsonl"  # a byte-order mark; the CRLF and blank-line files are covered below
    run = run_validate(tmp_path, config_for(source, tmp_path, validationSplit=0.25, splitSeed=7))

    assert run.returncode == ExitCode.OK, run.stderr
    report = run.report
    digest = sha256(source)
    folder = tmp_path / "datasets" / "ns" / "d" / digest
    assert report["isCheckPassed"] and report["sha256"] == digest
    assert report["numSamples"] == 12 == report["trainSamples"] + report["validationSamples"]
    assert report["trainSamples"] > 0 and report["validationSamples"] > 0
    assert report["trainUri"] == str(folder / "train.jsonl")
    assert report["validationUri"] == str(folder / "validation.jsonl")
    assert report["manifestUri"] == str(folder / "manifest.json")
    assert files_under(tmp_path / "datasets") == [f"ns/d/{digest}/{f}" for f in ("manifest.json", "train.jsonl", "validation.jsonl")]

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "dataset"
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        name: ((folder / name).stat().st_size, sha256(folder / name)) for name in ("train.jsonl", "validation.jsonl")
    }
    assert manifest["metadata"]["trainSamples"] == report["trainSamples"]
    assert manifest["metadata"]["validationSplit"] == 0.25 and manifest["metadata"]["splitSeed"] == 7

    normalised = (folder / "train.jsonl").read_bytes() + (folder / "validation.jsonl").read_bytes()
    originals = {json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False) for line in source.read_text("utf-8-sig").splitlines()}
    assert set(normalised.decode().splitlines()) == originals
    assert not normalised.startswith(b"\xef\xbb\xbf") and b"\r" not in normalised and b"\n\n" not in normalised
    assert "Dataset valid" in run.termination_message


def test_crlf_and_blank_lines_are_normalised_away(tmp_path: Path):
    for name in ("crlf.jsonl", "blank_lines.jsonl"):
        config = ValidateConfig.model_validate(config_for(VALID / name, tmp_path / name))
        report = validate_dataset(config, ObjectStore())
        train = Path(report.train_uri).read_bytes()
        assert report.is_check_passed and report.train_samples == 12
        assert b"\r" not in train and len(train.splitlines()) == 12 and not train.startswith(b"\n")


def test_the_split_depends_on_the_examples_and_the_seed_not_on_their_order(tmp_path: Path):
    lines = [chat_line(i) for i in range(400)]
    shuffled = list(lines)
    random.Random(3).shuffle(shuffled)
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(shuffled) + "\n")

    def validation_set(name: str, seed: int) -> set[str]:
        config = ValidateConfig.model_validate(
            config_for(tmp_path / name, tmp_path / f"out-{name}-{seed}", validationSplit=0.2, splitSeed=seed)
        )
        report = validate_dataset(config, ObjectStore())
        assert report.train_samples + report.validation_samples == 400
        return set(Path(report.validation_uri).read_text().splitlines())

    in_order, shuffled_order, other_seed = validation_set("a.jsonl", 1), validation_set("b.jsonl", 1), validation_set("a.jsonl", 2)
    assert in_order == shuffled_order
    assert in_order != other_seed
    assert 40 <= len(in_order) <= 120  # about 20 % of 400


def test_a_small_dataset_still_gets_both_sides_of_the_split(tmp_path: Path):
    data = write_chat(tmp_path / "small.jsonl", 10)
    # A seed for which no example of the ten hashes under 5 %: the split alone would leave validation empty.
    normalised = [orjson.dumps(json.loads(chat_line(i))) + b"\n" for i in range(10)]  # what the split hashes
    seed = next(s for s in range(1000) if not any(DeterministicSplit(0.05, s).is_validation(line) for line in normalised))

    config = ValidateConfig.model_validate(config_for(data, tmp_path, validationSplit=0.05, splitSeed=seed))
    report = validate_dataset(config, ObjectStore())

    assert (report.train_samples, report.validation_samples) == (9, 1)
    assert len(Path(report.train_uri).read_text().splitlines()) == 9
    assert len(Path(report.validation_uri).read_text().splitlines()) == 1


def test_validating_the_same_file_again_uploads_nothing(tmp_path: Path):
    data = write_chat(tmp_path / "data.jsonl", 20)
    config = ValidateConfig.model_validate(config_for(data, tmp_path, validationSplit=0.1))
    first = validate_dataset(config, ObjectStore())
    manifest = Path(first.manifest_uri)
    written = manifest.read_bytes()

    second = validate_dataset(config, ObjectStore())

    assert manifest.read_bytes() == written  # same createdAt: not rewritten
    assert second.train_uri == first.train_uri and second.train_samples == first.train_samples

    other = validate_dataset(config.model_copy(update={"validation_split": 0.5}), ObjectStore())
    assert json.loads(manifest.read_text())["metadata"]["validationSplit"] == 0.5
    assert other.validation_samples == len(Path(other.validation_uri).read_text().splitlines())


def test_a_parquet_dataset_stays_parquet(tmp_path: Path):
    source = tmp_path / "tokens.parquet"
    rows = [[1, i, i + 1, 2] for i in range(100)]
    rows[10] = []  # one bad row, with enough good ones left: the file is still refused
    pq.write_table(pa.table({"input_ids": pa.array(rows), "labels": pa.array(rows)}), source)
    refused = validate_dataset(ValidateConfig.model_validate(config_for(source, tmp_path / "bad")), ObjectStore())
    assert [(e.line, e.rule) for e in refused.errors] == [(11, "empty_input_ids")]
    assert files_under(tmp_path / "bad") == []

    rows[10] = [1, 2]
    pq.write_table(pa.table({"input_ids": pa.array(rows), "labels": pa.array(rows)}), source)
    config = ValidateConfig.model_validate(config_for(source, tmp_path / "good", validationSplit=0.3))
    report = validate_dataset(config, ObjectStore())

    assert report.is_check_passed, report.errors
    assert report.train_uri.endswith("train.parquet") and report.validation_uri.endswith("validation.parquet")
    train, validation = pq.read_table(report.train_uri), pq.read_table(report.validation_uri)
    assert train.num_rows + validation.num_rows == 100 and validation.num_rows == report.validation_samples > 0
    assert train.column_names == ["input_ids", "labels"]
    assert sorted(train.column("input_ids").to_pylist() + validation.column("input_ids").to_pylist()) == sorted(rows)
    assert report.token_stats.total == sum(len(r) for r in rows)
    assert report.sha256 == sha256(source)


def test_a_small_parquet_dataset_still_gets_both_sides_of_the_split(tmp_path: Path):
    source = tmp_path / "tokens.parquet"
    rows = [[1, i, 2] for i in range(10)]
    pq.write_table(pa.table({"input_ids": pa.array(rows)}), source)
    key = lambda row: pa.array(row, pa.int64()).to_numpy().tobytes()  # noqa: E731 (what the split hashes)
    seed = next(s for s in range(1000) if not any(DeterministicSplit(0.05, s).is_validation(key(r)) for r in rows))

    config = ValidateConfig.model_validate(config_for(source, tmp_path, validationSplit=0.05, splitSeed=seed))
    report = validate_dataset(config, ObjectStore())

    assert (report.train_samples, report.validation_samples) == (9, 1)
    assert pq.read_table(report.train_uri).num_rows == 9 and pq.read_table(report.validation_uri).num_rows == 1


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path):
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:
        f.truncate((1 << 30) + 10)

    run = run_validate(tmp_path, config_for(huge, tmp_path))

    assert run.returncode == ExitCode.BAD_INPUT
    assert [(e.get("line"), e["rule"]) for e in run.report["errors"]] == [(None, "too_large")]
    assert "sha256" not in run.report  # never read, so never hashed
    assert files_under(tmp_path / "datasets") == []


def test_an_https_source_is_streamed(tmp_path: Path, file_server: FileServer):
    shutil.copy(VALID / "non_ascii.jsonl", file_server.root / "data.jsonl")

    run = run_validate(tmp_path, config_for(f"{file_server.url}/data.jsonl?X-Amz-Signature=abc123", tmp_path, **LOOPBACK))

    assert run.returncode == ExitCode.OK, run.stderr
    assert run.report["sha256"] == sha256(VALID / "non_ascii.jsonl")
    assert run.report["numSamples"] == 12
    assert "abc123" not in run.stdout + run.stderr + json.dumps(run.report)  # a presigned signature is a credential


def test_a_source_of_unannounced_size_is_cut_off_at_the_limit(tmp_path: Path, file_server: FileServer):
    write_chat(file_server.root / "data.jsonl", 500)
    uri = f"{file_server.url}/nolength/data.jsonl"

    limited = validate_dataset(ValidateConfig.model_validate(config_for(uri, tmp_path / "small", maxBytes=4096, **LOOPBACK)), ObjectStore())
    assert limited.errors[0].rule == "too_large" and not limited.retryable
    assert files_under(tmp_path / "small") == []

    whole = validate_dataset(ValidateConfig.model_validate(config_for(uri, tmp_path / "big", **LOOPBACK)), ObjectStore())
    assert whole.is_check_passed and whole.num_samples == 500
    assert whole.file_size == (file_server.root / "data.jsonl").stat().st_size


def test_an_https_source_that_is_not_there_is_not_found_and_not_retried(tmp_path: Path, file_server: FileServer):
    run = run_validate(tmp_path, config_for(f"{file_server.url}/missing.jsonl", tmp_path, **LOOPBACK))

    assert run.returncode == ExitCode.BAD_INPUT
    report = run.report
    assert report["found"] is False and report["retryable"] is False
    assert report["errors"][0]["rule"] == "not_found" and "404" in report["message"]
    assert files_under(tmp_path / "datasets") == []


def test_an_unreachable_or_failing_server_is_retryable(tmp_path: Path, file_server: FileServer):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]

    refused = run_validate(tmp_path / "refused", config_for(f"http://127.0.0.1:{closed_port}/data.jsonl", tmp_path / "refused", **LOOPBACK))
    assert refused.returncode == ExitCode.RETRYABLE
    assert refused.report["retryable"] is True and refused.report["found"] is False
    assert refused.report["errors"][0]["rule"] == "source_unreachable"

    config = ValidateConfig.model_validate(config_for(f"{file_server.url}/status/503/data.jsonl", tmp_path / "5xx", **LOOPBACK))
    report = validate_dataset(config, ObjectStore())
    assert report.retryable and report.errors[0].rule == "source_unreachable" and "503" in report.message


def test_an_https_source_with_a_token_secret(tmp_path: Path, https_file_server: FileServer):
    shutil.copy(VALID / "text.jsonl", https_file_server.root / "data.jsonl")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "token").write_text(PRIVATE_TOKEN + "\n")
    uri = f"{https_file_server.url}/private/data.jsonl"

    without = run_validate(tmp_path / "without", config_for(uri, tmp_path / "without", **LOOPBACK))
    assert without.returncode == ExitCode.BAD_INPUT and without.report["errors"][0]["rule"] == "access_denied"

    run = run_validate(tmp_path / "with", config_for(uri, tmp_path / "with", sourceCredentialsDir=str(secret), **LOOPBACK))
    assert run.returncode == ExitCode.OK, run.stderr
    assert PRIVATE_TOKEN not in run.stdout + run.stderr + json.dumps(run.report)


def test_token_statistics_with_a_tokenizer_fetched_from_a_hub(tmp_path: Path, file_server: FileServer, byte_tokenizer: Path):
    hub_folder = file_server.root / "org" / "tiny" / "resolve" / "main"
    hub_folder.mkdir(parents=True)
    shutil.copy(byte_tokenizer / "tokenizer.json", hub_folder / "tokenizer.json")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": "ab" * i, "completion": "c"}) + "\n" for i in range(1, 13)))

    run = run_validate(
        tmp_path, config_for(data, tmp_path, tokenizer="hf://org/tiny", maxSeqLength=5, **LOOPBACK), env={"HF_ENDPOINT": file_server.url}
    )

    assert run.returncode == ExitCode.OK, run.stderr
    # prompt + "\n" + completion, one token per byte: 2i + 2 for i = 1..12
    assert run.report["tokenStats"] == {"min": 4, "mean": 15.0, "max": 26, "total": 180}
    assert "11 longer than 5 tokens will be truncated" in run.report["message"]


def test_a_tokenizer_that_cannot_be_fetched_is_reported(tmp_path: Path, file_server: FileServer, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", file_server.url)
    data = write_chat(tmp_path / "data.jsonl", 12)
    config = ValidateConfig.model_validate(config_for(data, tmp_path, tokenizer="hf://org/missing", **LOOPBACK))

    report = validate_dataset(config, ObjectStore())

    assert report.errors[0].rule == "tokenizer_unavailable" and "404" in report.message and not report.retryable
    assert files_under(tmp_path / "datasets") == []


def test_a_bad_config_is_bad_input_with_the_field_named(tmp_path: Path):
    run = run_validate(tmp_path, {"source": "x.jsonl", "reportUri": str(tmp_path / "r.json"), "validationSplit": 2})

    assert run.returncode == ExitCode.BAD_INPUT
    assert "validationSplit" in run.termination_message or "validation_split" in run.termination_message
    assert "outputUri" in run.termination_message or "output_uri" in run.termination_message
