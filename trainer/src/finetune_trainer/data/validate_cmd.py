"""``finetune-trainer validate --config config.json``: the program of a Dataset's validation Job.

It reads the source once (``s3://``, ``https://`` or a local path), checking every line, hashing the bytes
(sha256) and writing each valid example, normalised, to a local ``train`` or ``validation`` file as it
goes. Then:

* passed: the files go to ``<outputUri>/<sha256>/`` with ``manifest.json`` written last (an artifact
  without one is incomplete, and FineTuneJobs refuse it); the same sha256 folder with a manifest of the
  same split is left as it is (a re-run uploads nothing);
* failed: nothing is written under ``<outputUri>/``;

and in both cases the ``DatasetCheckReport`` goes to ``reportUri`` and its message to the container's
termination message file (``$FINETUNE_TERMINATION_LOG``, default ``/dev/termination-log``). Exit codes:
``ExitCode.OK``, ``BAD_INPUT`` (the dataset or the config is wrong), ``RETRYABLE`` (the source or the
object store could not be reached: the operator keeps the Dataset pending and the Job retries).

Normalised files: JSONL becomes one compact JSON object per line, UTF-8 without byte-order mark, ``\\n``
line ends, no blank lines (``train.jsonl``, ``validation.jsonl``); Parquet stays Parquet
(``train.parquet``, ``validation.parquet``) with the valid rows.

The split is decided per example by a seeded hash (SHA-1 of the seed and the example) of its normalised
content: an example goes to validation when its hash falls below ``validationSplit`` of the hash range.
So the same examples and seed give the same split whatever their order, duplicates land on the same side
(no leak of a training example into validation), and the split streams in constant memory. The fraction
is met on average, not exactly; when chance leaves one side empty although there are two examples or
more, the example with the lowest (or highest) hash is moved across, so both sides are never empty.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from finetune_trainer.contract import (
    CheckError,
    DatasetCheckReport,
    ExitCode,
    MANIFEST_FILE,
    ValidateConfig,
    join_uri,
    write_termination_message,
)
from finetune_trainer.data.sources import SourceError, fetch_tokenizer, open_source, redact
from finetune_trainer.data.validate import (
    CheckOptions,
    ParquetChecker,
    TokenCounter,
    check_stream,
    is_parquet,
    precheck_size,
)
from finetune_trainer.storage import ObjectStore

HASH_RANGE = 1 << 64


# ----------------------------------------------------------------------------------------------
# The deterministic split


class DeterministicSplit:
    """Assigns an example to validation by a keyed hash of its bytes: order-independent, constant memory.

    >>> split = DeterministicSplit(0.5, seed=7)
    >>> split.is_validation(b'{"text":"a"}') == DeterministicSplit(0.5, seed=7).is_validation(b'{"text":"a"}')
    True
    """

    def __init__(self, fraction: float, seed: int):
        self.fraction = fraction
        self._seeded = hashlib.sha1(b"finetune-split:%d:" % seed, usedforsecurity=False)
        self.threshold = int(fraction * HASH_RANGE)

    def score(self, example: bytes) -> int:
        """The example's place in the hash range: the first 8 bytes of SHA-1(seed prefix + example)."""
        digest = self._seeded.copy()
        digest.update(example)
        return int.from_bytes(digest.digest()[:8], "big")

    def is_validation(self, example: bytes) -> bool:
        return self.score(example) < self.threshold


class _SplitSink:
    """Common bookkeeping of the two writers: counts, and the extreme example of each side."""

    def __init__(self, folder: Path, fraction: float, seed: int, suffix: str):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.split = DeterministicSplit(fraction, seed) if fraction > 0 else None
        self.train_path = folder / f"train.{suffix}"
        self.validation_path = folder / f"validation.{suffix}"
        self.counts = {"train": 0, "validation": 0}
        # (score, index within its file) of the train example with the lowest score and of the
        # validation example with the highest: the ones that move if a side ends up empty.
        self.lowest_train: tuple[int, int] | None = None
        self.highest_validation: tuple[int, int] | None = None

    def _side(self, example: bytes) -> str:
        if self.split is None:
            self.counts["train"] += 1
            return "train"
        score = self.split.score(example)
        if score < self.split.threshold:
            index = self.counts["validation"]
            if self.highest_validation is None or score > self.highest_validation[0]:
                self.highest_validation = (score, index)
            self.counts["validation"] += 1
            return "validation"
        index = self.counts["train"]
        if self.lowest_train is None or score < self.lowest_train[0]:
            self.lowest_train = (score, index)
        self.counts["train"] += 1
        return "train"

    def rebalance(self) -> None:
        """Move one example across when a split left one side empty (small datasets)."""
        if self.split is None or self.counts["train"] + self.counts["validation"] < 2:
            return
        if self.counts["validation"] == 0 and self.lowest_train is not None:
            self._move(self.train_path, self.validation_path, self.lowest_train[1])
            self.counts["train"] -= 1
            self.counts["validation"] += 1
        elif self.counts["train"] == 0 and self.highest_validation is not None:
            self._move(self.validation_path, self.train_path, self.highest_validation[1])
            self.counts["validation"] -= 1
            self.counts["train"] += 1

    def _move(self, source: Path, target: Path, index: int) -> None:
        raise NotImplementedError

    def files(self) -> dict[str, Path]:
        """The files written, by side (a side with no example has none)."""
        return {side: path for side, path in (("train", self.train_path), ("validation", self.validation_path)) if self.counts[side]}


class JsonlSplitWriter(_SplitSink):
    """Writes each valid JSONL example to ``train.jsonl`` or ``validation.jsonl``."""

    def __init__(self, folder: Path, fraction: float, seed: int):
        super().__init__(folder, fraction, seed, "jsonl")
        self._out = {"train": open(self.train_path, "wb", buffering=1 << 20)}
        if self.split is not None:
            self._out["validation"] = open(self.validation_path, "wb", buffering=1 << 20)

    def add_line(self, line: bytes) -> None:
        self._out[self._side(line)].write(line)

    def add_rows(self, batch) -> None:  # pragma: no cover - the JSONL checker never calls it
        raise TypeError("a JSONL split receives lines, not Parquet rows")

    def finish(self) -> None:
        for out in self._out.values():
            out.close()
        self.rebalance()
        for side, path in (("train", self.train_path), ("validation", self.validation_path)):
            if not self.counts[side] and path.exists():
                path.unlink()

    def _move(self, source: Path, target: Path, index: int) -> None:
        rest = source.with_suffix(".rest")
        with open(source, "rb") as src, open(rest, "wb") as keep, open(target, "ab") as moved:
            for i, line in enumerate(src):
                (moved if i == index else keep).write(line)
        os.replace(rest, source)


class ParquetSplitWriter(_SplitSink):
    """Writes the valid rows of each Parquet batch to ``train.parquet`` or ``validation.parquet``."""

    def __init__(self, folder: Path, fraction: float, seed: int):
        super().__init__(folder, fraction, seed, "parquet")
        self._writers: dict[str, object] = {}

    def add_line(self, line: bytes) -> None:  # pragma: no cover - the Parquet checker never calls it
        raise TypeError("a Parquet split receives rows, not lines")

    def add_rows(self, batch) -> None:
        """Split one batch of valid rows by the hash of each row's ``input_ids`` (as int64 bytes)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = batch.column("input_ids")
        flat = pc.list_flatten(ids).cast(pa.int64()).to_numpy(zero_copy_only=False)
        offsets = ids.offsets.to_numpy()
        offsets = offsets - offsets[0]
        sides = [self._side(flat[offsets[row] : offsets[row + 1]].tobytes()) for row in range(batch.num_rows)]
        for side in ("train", "validation"):
            part = batch.filter(pa.array([s == side for s in sides]))
            if part.num_rows:
                self._writer(side, batch.schema).write_batch(part)

    def _writer(self, side: str, schema):
        import pyarrow.parquet as pq

        if side not in self._writers:
            path = self.train_path if side == "train" else self.validation_path
            self._writers[side] = pq.ParquetWriter(str(path), schema)
        return self._writers[side]

    def finish(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self.rebalance()

    def _move(self, source: Path, target: Path, index: int) -> None:
        """Move row ``index`` of ``source`` into ``target`` (which is empty: that is why it moves)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rest = source.with_suffix(".rest")
        moved = None
        with pq.ParquetFile(str(source)) as parquet:
            with pq.ParquetWriter(str(rest), parquet.schema_arrow) as keep:
                start = 0
                for batch in parquet.iter_batches():
                    end = start + batch.num_rows
                    if start <= index < end:
                        local = index - start
                        moved = batch.slice(local, 1)
                        batch = pa.concat_batches([batch.slice(0, local), batch.slice(local + 1)])
                    if batch.num_rows:
                        keep.write_batch(batch)
                    start = end
        pq.write_table(pa.Table.from_batches([moved]), str(target))
        os.replace(rest, source)


# ----------------------------------------------------------------------------------------------
# The run


def options_of(config: ValidateConfig, tokenizer: Path | None = None) -> CheckOptions:
    return CheckOptions(
        format=config.format,
        min_samples=config.min_samples,
        max_bytes=config.max_bytes,
        max_errors=config.max_errors,
        max_seq_length=config.max_seq_length,
        tokenizer=tokenizer,
    )


def _failure(rule: str, message: str, *, found: bool = True, retryable: bool = False, **fields) -> DatasetCheckReport:
    return DatasetCheckReport(
        is_check_passed=False,
        message=f"{message} [{rule}]",
        found=found,
        retryable=retryable,
        errors=[CheckError(line=None, rule=rule, message=message)],
        error_count=1,
        **fields,
    )


def check_source(config: ValidateConfig, workdir: Path) -> tuple[DatasetCheckReport, _SplitSink | None]:
    """Read and check the source once; the valid examples land, split, under ``workdir/out``."""
    tokenizer_path = None
    if config.tokenizer:
        try:
            tokenizer_path = fetch_tokenizer(config.tokenizer, config.storage, workdir / "tokenizer", config.allow_private_urls)
            counter = TokenCounter.load(tokenizer_path)
        except SourceError as e:
            return _failure("tokenizer_unavailable", f"tokenizer: {e.message}", retryable=e.retryable), None
        except Exception as e:  # a tokenizer.json the tokenizers library cannot read
            return _failure("tokenizer_unavailable", f"tokenizer {redact(config.tokenizer)}: {e}"), None
    else:
        counter = None
    options = options_of(config, tokenizer_path)
    try:
        source = open_source(
            config.source,
            config.storage,
            credentials_dir=config.source_credentials_dir,
            max_bytes=config.max_bytes,
            allow_private_urls=config.allow_private_urls,
        )
    except SourceError as e:
        return _failure(e.rule, e.message, found=e.found, retryable=e.retryable), None
    out = workdir / "out"
    with source:
        early = precheck_size(source.size, options)
        if early is not None:
            return early, None
        try:
            if is_parquet(source.name, source.head(4)):
                if options.format not in ("auto", "parquet"):
                    report = _failure("format_mismatch", f"the format is {options.format} but the file is Parquet", filetype="parquet")
                    return report, None
                local = workdir / "source.parquet"
                source.copy_to(local)
                sink: _SplitSink = ParquetSplitWriter(out, config.validation_split, config.split_seed)
                report = ParquetChecker(options, sink).check(local, source.reader.bytes_read)
            else:
                sink = JsonlSplitWriter(out, config.validation_split, config.split_seed)
                report = check_stream(source.stream, options, file_size=source.size, sink=sink, counter=counter)
                source.drain()
        except SourceError as e:
            return _failure(e.rule, e.message, found=e.found, retryable=e.retryable, file_size=source.reader.bytes_read), None
        report.sha256 = source.sha256()
        if report.file_size is None:
            report.file_size = source.reader.bytes_read
    sink.finish()
    return report, sink


def _same_split(manifest_metadata: dict, metadata: dict) -> bool:
    keys = ("format", "validationSplit", "splitSeed", "trainSamples", "validationSamples")
    return all(manifest_metadata.get(k) == metadata.get(k) for k in keys)


def publish(config: ValidateConfig, store: ObjectStore, report: DatasetCheckReport, sink: _SplitSink) -> DatasetCheckReport:
    """Upload the normalised files under ``<outputUri>/<sha256>/``, manifest last; fill in the URIs."""
    folder_uri = join_uri(config.output_uri, report.sha256)
    files = sink.files()
    metadata = {
        "format": report.format,
        "numSamples": report.num_samples,
        "trainSamples": sink.counts["train"],
        "validationSamples": sink.counts["validation"],
        "validationSplit": config.validation_split,
        "splitSeed": config.split_seed,
        "source": redact(config.source),
        "sourceSha256": report.sha256,
    }
    existing = store.read_manifest(folder_uri)
    if existing is not None and _same_split(existing.metadata, metadata):
        print(f"{folder_uri} already holds this dataset with this split: nothing to upload", flush=True)
    else:
        if existing is not None:  # same data, another split: make the folder incomplete before rewriting it
            store.delete(join_uri(folder_uri, MANIFEST_FILE))
        upload = sink.folder
        for stale in [p for p in upload.iterdir() if p not in files.values()]:
            stale.unlink()
        store.upload_artifact(upload, folder_uri, kind="dataset", **metadata)
    report.train_samples = sink.counts["train"]
    report.validation_samples = sink.counts["validation"]
    report.train_uri = join_uri(folder_uri, files["train"].name) if "train" in files else None
    report.validation_uri = join_uri(folder_uri, files["validation"].name) if "validation" in files else None
    report.manifest_uri = join_uri(folder_uri, MANIFEST_FILE)
    return report


def validate_dataset(config: ValidateConfig, store: ObjectStore, workdir: Path | None = None) -> DatasetCheckReport:
    """Check, split and publish; the report says how it went (it is not written here)."""
    with tempfile.TemporaryDirectory(prefix="finetune-validate-", dir=workdir) as tmp:
        report, sink = check_source(config, Path(tmp))
        if not report.is_check_passed or sink is None:
            return report
        try:
            return publish(config, store, report, sink)
        except Exception as e:  # the object store went away mid-upload: the manifest was not written
            failed = _failure("upload_failed", f"writing to {redact(config.output_uri)} failed: {e}", retryable=True)
            failed.sha256 = report.sha256
            return failed


def exit_code_of(report: DatasetCheckReport) -> ExitCode:
    if report.is_check_passed:
        return ExitCode.OK
    return ExitCode.RETRYABLE if report.retryable else ExitCode.BAD_INPUT




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="finetune-trainer validate",
        description="Check a dataset, hash and split it, and upload the normalised files with a manifest.",
    )
    parser.add_argument("--config", required=True, type=Path, help="a ValidateConfig JSON file")
    args = parser.parse_args(argv)
    try:
        config = ValidateConfig.model_validate_json(args.config.read_bytes())
    except OSError as e:
        message = f"cannot read the config {args.config}: {e.strerror}"
        print(message, file=sys.stderr)
        write_termination_message(message)
        return ExitCode.BAD_INPUT
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        message = f"invalid config {args.config}: {problems}"
        print(message, file=sys.stderr)
        write_termination_message(message)
        return ExitCode.BAD_INPUT

    print(f"validating {redact(config.source)}", flush=True)
    store = ObjectStore(config.storage)
    report = validate_dataset(config, store)
    code = exit_code_of(report)
    print(report.to_json(), flush=True)
    try:
        store.write_json(config.report_uri, report)
    except Exception as e:  # the report is the operator's only news of this run: failing to write it is retryable
        message = f"cannot write the report to {redact(config.report_uri)}: {type(e).__name__}: {e}"
        print(message, file=sys.stderr)
        write_termination_message(message)
        return ExitCode.RETRYABLE
    verdict = "Dataset valid" if report.is_check_passed else "Dataset invalid"
    write_termination_message(f"{verdict}: {report.message}")
    return code


if __name__ == "__main__":
    sys.exit(main())
