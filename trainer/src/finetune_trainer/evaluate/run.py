"""``finetune-trainer evaluate --config eval.json``: answer a dataset with each model, grade, summarise.

What it leaves under the config's ``outputUri``:

* ``progress.json`` (``Progress``): phase evaluating → uploading → done (or failed, with a reason);
  ``step`` counts (model, turn) samples answered and graded out of ``totalSteps``;
* ``results.jsonl``: one line per model and graded turn: ``model``, ``example`` (0-based), ``turn``
  (0-based), ``prompt`` (an excerpt), ``reference``, ``references`` (when there are several),
  ``response`` (null when the model failed to answer), ``error`` (why it failed), ``scores``
  (grader → score in [0, 1]) and ``errors`` (grader → why that grader could not score it);
* ``summary.json`` (``EvaluationSummary``): per model and grader the mean, its 95% bootstrap
  interval, n, errors and the delta against the baseline;
* ``manifest.json``, written last: the results are complete once it exists.

Exit codes: 0 done; 42 (BAD_INPUT) for a config or dataset that cannot be evaluated, with
``<Reason>: <message>`` in the termination message and on stderr; 143 on SIGTERM; 1 otherwise
(the Job may retry). A model or a judge that fails on some samples does not fail the run: those
samples are counted as errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetune_trainer.contract import (
    EvaluateConfig,
    EvaluationSummary,
    ExitCode,
    PROGRESS_FILE,
    Phase,
    Progress,
    RESULTS_FILE,
    SUMMARY_FILE,
    join_uri,
    write_termination_message,
)
from finetune_trainer.evaluate.errors import BadInput, SampleError
from finetune_trainer.evaluate.graders import GRADER_TYPES, GradeItem, Grader, build_graders, check_grader_specs
from finetune_trainer.evaluate.samples import EvalTurn, parse_dataset
from finetune_trainer.evaluate.summary import ScoreBook
from finetune_trainer.storage import ObjectStore, StorageError

log = logging.getLogger("finetune_trainer.evaluate")

PROGRESS_INTERVAL_SECONDS = 2.0
TURNS_PER_CHUNK = 32
"""Turns answered, graded and recorded together (the unit of progress)."""


class Preempted(BaseException):
    """SIGTERM arrived: stop now (an evaluation is cheap to redo, nothing to save)."""


# ----------------------------------------------------------------------------------------------
# Config


def _read_config_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput("InvalidConfig", f"cannot read {path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BadInput("InvalidConfig", f"{path} is neither JSON nor YAML: {e}") from None


def load_config(path: Path) -> EvaluateConfig:
    """Read and check an ``EvaluateConfig``; every problem is a ``BadInput`` naming the field."""
    raw = _read_config_file(path)
    if not isinstance(raw, dict):
        raise BadInput("InvalidConfig", f"{path} must hold an object")
    graders = raw.get("graders")
    if isinstance(graders, list):
        for i, grader in enumerate(graders):
            if isinstance(grader, dict) and "type" in grader and grader["type"] not in GRADER_TYPES:
                name = grader.get("name", f"graders[{i}]")
                raise BadInput("UnknownGrader", f"grader {name!r} has type {grader['type']!r}; known types: {', '.join(GRADER_TYPES)}")
    try:
        config = EvaluateConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise BadInput("InvalidConfig", f"{where}: {first['msg']}{more}") from None
    check_config(config)
    return config


def check_config(config: EvaluateConfig) -> None:
    """Cross-field rules the model cannot express: unique names, a known baseline, a way to reach each model."""
    check_grader_specs(config.graders)
    pairwise = [g.name for g in config.graders if g.type == "pairwise"]
    if pairwise and config.baseline is None:
        raise BadInput("InvalidGrader", f"grader {pairwise[0]!r} (pairwise) compares each model with the baseline: set baseline")
    names = [m.name for m in config.models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BadInput("InvalidModel", f"model names must be unique; repeated: {', '.join(duplicates)}")
    if config.baseline is not None and config.baseline not in names:
        raise BadInput("UnknownBaseline", f"baseline {config.baseline!r} is not one of the models ({', '.join(names)})")
    if config.storage is None:
        uris = [("dataset", config.dataset), ("outputUri", config.output_uri)]
        uris += [(f"models[{m.name}].modelUri", m.model_uri) for m in config.models]
        uris += [(f"models[{m.name}].adapterUri", m.adapter_uri) for m in config.models]
        uris += [(f"graders[{g.name}].embeddingModel", g.embedding_model) for g in config.graders]
        for field, uri in uris:
            if uri and uri.startswith("s3://"):
                raise BadInput("InvalidConfig", f"{field} is an s3:// URI but the config has no storage (endpoint and credentials)")
    if config.regrade:
        return
    for model in config.models:
        if model.endpoint and model.model_uri:
            raise BadInput("InvalidModel", f"model {model.name!r}: set either endpoint or modelUri, not both")
        if model.endpoint and not model.model:
            raise BadInput("InvalidModel", f"model {model.name!r}: an endpoint needs the model name to send (model)")
        if not model.endpoint and not model.model_uri:
            raise BadInput("InvalidModel", f"model {model.name!r} needs an endpoint (with model) or a modelUri")
        if model.adapter_uri and not model.model_uri:
            raise BadInput("InvalidModel", f"model {model.name!r}: adapterUri applies to a modelUri")


# ----------------------------------------------------------------------------------------------
# Reporting


class ProgressReporter:
    """Writes ``progress.json`` at phase changes and at most every few seconds in between."""

    def __init__(self, store: ObjectStore, output_uri: str, total_steps: int | None = None):
        self.store = store
        self.uri = join_uri(output_uri, PROGRESS_FILE)
        self.total_steps = total_steps
        self.step = 0
        self._last_write = 0.0

    def write(self, phase: Phase, force: bool = True, **fields: Any) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < PROGRESS_INTERVAL_SECONDS:
            return
        self._last_write = now
        self.store.write_json(self.uri, Progress(phase=phase, step=self.step, total_steps=self.total_steps, **fields))

    def advance(self, steps: int) -> None:
        self.step += steps
        self.write("evaluating", force=False)




# ----------------------------------------------------------------------------------------------
# The evaluation


def _record(model: str, turn: EvalTurn, answer: str | SampleError) -> dict[str, Any]:
    record: dict[str, Any] = {
        "model": model,
        "example": turn.example,
        "turn": turn.turn,
        "prompt": turn.prompt_excerpt(),
        "reference": turn.references[0],
    }
    if len(turn.references) > 1:
        record["references"] = list(turn.references)
    if isinstance(answer, SampleError):
        record.update(response=None, error=str(answer))
    else:
        record.update(response=answer, error=None)
    record.update(scores={}, errors={})
    return record


def _grade_safely(grader: Grader, items: Sequence[GradeItem]) -> list[float | SampleError]:
    try:
        scores = grader.grade(items)
    except Exception as e:  # a grader bug must not cost the other graders' results
        log.exception("grader %s failed on a batch", grader.name)
        return [SampleError("GraderFailed", f"{type(e).__name__}: {e}")] * len(items)
    if len(scores) != len(items):
        return [SampleError("GraderFailed", "the grader returned the wrong number of scores")] * len(items)
    return scores


Answers = dict[tuple[int, int], "str | SampleError"]
"""A model's answer (or why it has none) to each turn, by (example, turn)."""


def evaluate_model(
    model_name: str,
    generator,
    turns: Sequence[EvalTurn],
    graders: Sequence[Grader],
    book: ScoreBook,
    results,
    progress: ProgressReporter,
    baseline_answers: Answers | None = None,
) -> Answers:
    """Answer, grade and record every turn for one model, a chunk at a time; returns its answers. Pairwise
    graders compare with ``baseline_answers`` and skip the baseline itself (``baseline_answers`` None)."""
    given: Answers = {}
    if baseline_answers is None:
        graders = [g for g in graders if not getattr(g, "pairwise", False)]
    for start in range(0, len(turns), TURNS_PER_CHUNK):
        chunk = turns[start : start + TURNS_PER_CHUNK]
        answers = generator.generate(chunk)
        given.update(((turn.example, turn.turn), answer) for turn, answer in zip(chunk, answers, strict=True))
        records = [_record(model_name, turn, answer) for turn, answer in zip(chunk, answers, strict=True)]
        answered = [i for i, answer in enumerate(answers) if not isinstance(answer, SampleError)]
        items = [GradeItem(chunk[i], answers[i], _answer_or_none(baseline_answers, chunk[i])) for i in answered]
        for grader in graders:
            for i in range(len(chunk)):
                if isinstance(answers[i], SampleError):
                    records[i]["errors"][grader.name] = answers[i].reason
                    book.add_error(model_name, grader.name)
            for i, score in zip(answered, _grade_safely(grader, items), strict=True):
                if isinstance(score, SampleError):
                    records[i]["errors"][grader.name] = str(score)
                    book.add_error(model_name, grader.name)
                else:
                    records[i]["scores"][grader.name] = score
                    book.add_score(model_name, grader.name, score)
        for record in records:
            results.write(json.dumps(record, ensure_ascii=False) + "\n")
        progress.advance(len(chunk))
    return given


def _answer_or_none(answers: Answers | None, turn: EvalTurn) -> str | None:
    answer = (answers or {}).get((turn.example, turn.turn))
    return None if answer is None or isinstance(answer, SampleError) else answer


def run_evaluation(config: EvaluateConfig, store: ObjectStore, workdir: Path) -> EvaluationSummary:
    """The whole evaluation; returns the uploaded summary. Raises ``BadInput`` before any upload."""
    from finetune_trainer.evaluate.generate import open_generator

    progress = ProgressReporter(store, config.output_uri)
    progress.write("evaluating")
    try:
        data = store.read_bytes(config.dataset)
    except StorageError as e:
        if "NoSuch" in str(e):
            raise BadInput("DatasetNotFound", f"dataset {config.dataset}: no such object") from None
        raise
    turns = parse_dataset(data, max_examples=config.max_samples, regrade=config.regrade)
    graders = build_graders(config.graders, config.generation, store, workdir, config.allow_private_urls)
    progress.total_steps = len(turns) * len(config.models)
    progress.write("evaluating")
    log.info("evaluating %d models on %d turns with graders %s", len(config.models), len(turns), ", ".join(g.name for g in graders))

    artifact = workdir / "artifact"
    artifact.mkdir(parents=True, exist_ok=True)
    pairwise = [g.name for g in graders if getattr(g, "pairwise", False)]
    book = ScoreBook([m.name for m in config.models], [g.name for g in graders], not_graded={(config.baseline, g) for g in pairwise})
    # With a pairwise grader the baseline answers first: the others' answers are compared with its.
    order = sorted(config.models, key=lambda m: m.name != config.baseline) if pairwise else config.models
    baseline_answers: Answers | None = None
    with open(artifact / RESULTS_FILE, "w", encoding="utf-8") as results:
        for model in order:
            generator = open_generator(model, config.generation, config.regrade, store, workdir / "models", config.allow_private_urls)
            try:
                is_baseline = pairwise and model.name == config.baseline
                given = evaluate_model(model.name, generator, turns, graders, book, results, progress, None if is_baseline else baseline_answers or {})
            finally:
                generator.close()
            if is_baseline:
                baseline_answers = given
            log.info("model %s: %d turns answered and graded", model.name, len(turns))

    summary = book.summary(samples=len(turns), baseline=config.baseline, results_uri=join_uri(config.output_uri, RESULTS_FILE))
    # Nulls are kept: a grader with no successful sample shows "mean": null, not a missing field.
    (artifact / SUMMARY_FILE).write_text(summary.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8")
    progress.write("uploading")
    store.upload_artifact(
        artifact,
        config.output_uri,
        kind="evaluation",
        models=[m.name for m in config.models],
        graders=[g.name for g in graders],
        samples=len(turns),
    )
    progress.write("done")
    return summary


# ----------------------------------------------------------------------------------------------
# Entry point


def _fail(config: EvaluateConfig | None, store: ObjectStore | None, reason: str, message: str, code: ExitCode) -> int:
    line = f"{reason}: {message}"
    print(f"finetune-trainer evaluate: {line}", file=sys.stderr)
    write_termination_message(line)
    if config is not None and store is not None:
        try:
            ProgressReporter(store, config.output_uri).write("failed", reason=reason, message=message, exit_code=int(code))
        except Exception:  # the store may be what failed; the termination message still says why
            pass
    return int(code)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finetune-trainer evaluate", description="Generate answers for a dataset and grade them.")
    parser.add_argument("--config", required=True, type=Path, help="EvaluateConfig as JSON (or YAML)")
    parser.add_argument("--quiet", action="store_true", help="do not print the results table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    def on_sigterm(signum, frame):
        raise Preempted()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    config: EvaluateConfig | None = None
    store: ObjectStore | None = None
    try:
        config = load_config(args.config)
        store = ObjectStore(config.storage)
        with tempfile.TemporaryDirectory(prefix="finetune-evaluate-") as workdir:
            summary = run_evaluation(config, store, Path(workdir))
        if not args.quiet:
            from finetune_trainer.evaluate.table import render_summary_table

            print(render_summary_table(summary))
        return int(ExitCode.OK)
    except BadInput as e:
        return _fail(config, store, e.reason, e.message, ExitCode.BAD_INPUT)
    except Preempted:
        return _fail(config, store, "Preempted", "stopped by SIGTERM", ExitCode.PREEMPTED)
    except StorageError as e:
        return _fail(config, store, "StorageError", str(e), ExitCode.RETRYABLE)
    except Exception as e:
        traceback.print_exc()
        return _fail(config, store, "Error", f"{type(e).__name__}: {e}", ExitCode.RETRYABLE)
    finally:
        signal.signal(signal.SIGTERM, previous)
