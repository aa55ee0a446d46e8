"""``finetune evaluations create|list|show|delete`` (``evaluation`` is an alias).

``show NAME`` prints the score table (means, 95% intervals, deltas against the baseline) and the pass
criterion's verdict; with ``--samples N`` also the first N samples: the prompt, the reference and each
model's answer side by side with every grader's score (from the evaluator's results.jsonl).
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
from typing import Any

from finetune_operator.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Subcommand,
    add_kube_arguments,
    add_output_argument,
    add_storage_arguments,
    list_subcommand,
)
from finetune_operator.cli.kube import Kube, namespace_of
from finetune_operator.cli.output import Column, age, dump

PLURAL = "evaluations"
GRADER_TYPES = ("exact_match", "f1", "contains", "semantic_similarity")


def format_evaluation(evaluation: dict[str, Any]) -> str:
    """The Evaluation's phase and message, its score table (as ``finetune-trainer evaluate`` prints it),
    the results URI and the pass criterion's verdict."""
    from finetune_trainer.contract import EvaluationSummary, ScoreRecord
    from finetune_trainer.evaluate.table import render_summary_table

    meta, spec, status = evaluation["metadata"], evaluation.get("spec") or {}, evaluation.get("status") or {}
    phase = status.get("phase") or "Pending"
    lines = [f"Evaluation {meta['namespace']}/{meta['name']}: {phase}"]
    if status.get("message"):
        lines.append(status["message"])
    scores = status.get("scores") or []
    if scores:
        summary = EvaluationSummary(
            scores=[ScoreRecord.model_validate({"mean": None, **row}) for row in scores],
            baseline=spec.get("baseline"),
            samples=status.get("samples") or 0,
        )
        lines += ["", render_summary_table(summary)]
    if status.get("resultsUri"):
        lines.append(f"Per-sample results: {status['resultsUri']}")
    passed = next((c for c in status.get("conditions") or [] if c.get("type") == "Passed"), None)
    if passed is not None:
        verdict = "PASSED" if passed.get("status") == "True" else "NOT PASSED"
        lines.append(f"Pass criterion: {verdict} ({passed.get('reason')}): {passed.get('message', '')}")
    return "\n".join(lines)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_samples(evaluation: dict[str, Any], samples: list[Any], width: int | None = None) -> str:
    """Each sample: the prompt and reference, then one column per model (baseline first) with its answer
    and each grader's score."""
    from finetune_operator.cli.reads import grader_names, model_order

    models = model_order(evaluation)
    graders = grader_names(evaluation)
    width = width or max(60, min(160, shutil.get_terminal_size((120, 24)).columns))
    column = max(20, (width - 3 * (len(models) - 1)) // max(1, len(models)))
    out: list[str] = []
    for sample in samples:
        out.append(f"--- sample {sample.example + 1}" + (f", turn {sample.turn + 1}" if sample.turn else ""))
        out.append("prompt:    " + " ".join(sample.prompt.split())[: width - 11])
        if sample.reference is not None:
            out.append("reference: " + " ".join(str(sample.reference).split())[: width - 11])
        cells = []
        for model in models:
            answer = sample.answers.get(model)
            lines = [model, "-" * min(column, max(len(model), 8))]
            if answer is None:
                lines.append("(not answered)")
            else:
                text = answer["response"] if answer["response"] is not None else f"(error: {answer.get('error') or 'no answer'})"
                lines += textwrap.wrap(" ".join(str(text).split()) or "(empty)", column) or [""]
                for grader in graders:
                    if grader in answer["scores"]:
                        score = answer["scores"][grader]
                        mark = "✓" if score >= 1 else ("✗" if score <= 0 else "~")
                        lines.append(f"{mark} {grader} {_score(score)}")
                    elif grader in answer["errors"]:
                        lines.append(f"! {grader}: {answer['errors'][grader]}"[:column])
            cells.append(lines)
        height = max(len(c) for c in cells)
        for i in range(height):
            out.append("   ".join((c[i] if i < len(c) else "").ljust(column) for c in cells).rstrip())
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# commands


COLUMNS = [
    Column("NAME", lambda o: o["metadata"]["name"]),
    Column("PHASE", lambda o: (o.get("status") or {}).get("phase") or "Pending"),
    Column("SCORE", lambda o: (o.get("status") or {}).get("headline")),
    Column("PASSED", lambda o: next((c.get("status") for c in (o.get("status") or {}).get("conditions") or [] if c.get("type") == "Passed"), None)),
    Column("DATASET", lambda o: (o.get("spec") or {}).get("dataset"), wide=True),
    Column("MODELS", lambda o: ",".join(m["name"] for m in (o.get("spec") or {}).get("models") or []), wide=True),
    Column("SAMPLES", lambda o: (o.get("status") or {}).get("samples"), wide=True),
    Column("AGE", age),
]


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the Evaluation")
    parser.add_argument("--samples", type=int, default=0, metavar="N", help="also show the first N samples, the models' answers side by side")
    add_kube_arguments(parser)
    add_output_argument(parser)
    add_storage_arguments(parser)


def evaluation_show(args: argparse.Namespace) -> int:
    if args.samples < 0:
        raise CliError(f"--samples {args.samples}: must be 0 or more", EXIT_USAGE)
    with Kube.from_args(args) as kube:
        evaluation = kube.get(PLURAL, args.name)
        samples: list[Any] = []
        if args.samples:
            from finetune_operator.cli.reads import evaluation_samples
            from finetune_operator.cli.store import Store

            samples = evaluation_samples(Store.from_args(args, kube), evaluation, args.samples)
    if args.output in ("json", "yaml"):
        data: dict[str, Any] = dict(evaluation)
        if args.samples:
            data = {"evaluation": evaluation, "samples": [s.__dict__ for s in samples]}
        print(dump(data, args.output))
    else:
        print(format_evaluation(evaluation))
        if samples:
            print(f"\nThe first {len(samples)} samples (✓ pass, ✗ fail, ~ partial):")
            print(format_samples(evaluation, samples))
    return EXIT_FAILED if (evaluation.get("status") or {}).get("phase") == "Failed" else EXIT_OK


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="name of the Evaluation")
    parser.add_argument("--dataset", required=True, help="a Ready Dataset of the namespace")
    parser.add_argument(
        "--model", dest="models", action="append", required=True, metavar="ROW=SOURCE",
        help="a model to evaluate (repeat for each row): ROW=endpoint:ENDPOINT[:MODEL], ROW=job:FINETUNEJOB or "
        "ROW=hf://...|s3://...|pvc://... (a base model)",
    )  # fmt: skip
    parser.add_argument("--baseline", default=None, metavar="ROW", help="the row the others are compared with")
    parser.add_argument("--grader", dest="graders", action="append", choices=GRADER_TYPES, metavar="TYPE",
                        help=f"a grader (repeat): {', '.join(GRADER_TYPES)} (default exact_match and f1; regex, llm_judge and pairwise: write YAML)")
    parser.add_argument("--split", choices=("validation", "train"), default=None, help="split of the Dataset (default validation)")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N", help="evaluate the first N samples")
    parser.add_argument("--max-tokens", type=int, default=None, metavar="N", help="tokens per answer (default 128)")
    parser.add_argument("--temperature", type=float, default=None, help="0 decodes greedily (default)")
    parser.add_argument("--pass-grader", default=None, metavar="GRADER", help="the grader of the pass criterion")
    parser.add_argument("--min-delta", type=float, default=None, help="pass when every model beats the baseline by this much")
    parser.add_argument("--min-score", type=float, default=None, help="pass when every model reaches this score")
    parser.add_argument("--dry-run", action="store_true", help="print the Evaluation; create nothing")
    add_kube_arguments(parser)
    add_output_argument(parser, default="yaml")


def parse_model(text: str) -> dict[str, Any]:
    row, sep, source = text.partition("=")
    if not sep or not row or not source:
        raise CliError(f"--model {text!r}: write ROW=SOURCE, e.g. tuned=endpoint:support:ticket-router or base=hf://org/model", EXIT_USAGE)
    if source.startswith("endpoint:"):
        _, _, rest = source.partition(":")
        endpoint, _, model = rest.partition(":")
        return {"name": row, "inferenceEndpoint": endpoint, **({"model": model} if model else {})}
    if source.startswith("job:"):
        return {"name": row, "fineTuneJob": source[len("job:") :]}
    if "://" in source:
        return {"name": row, "baseModel": source}
    raise CliError(f"--model {text!r}: SOURCE must be endpoint:NAME[:MODEL], job:NAME or a model URI (hf://, s3://, pvc://)", EXIT_USAGE)


def evaluation_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"models": [parse_model(m) for m in args.models], "dataset": args.dataset}
    graders = args.graders or ["exact_match", "f1"]
    spec["graders"] = [{"name": g, "type": g} for g in dict.fromkeys(graders)]
    if args.baseline:
        spec["baseline"] = args.baseline
    if args.split:
        spec["split"] = args.split
    if args.max_samples is not None:
        spec["maxSamples"] = args.max_samples
    generation = {k: v for k, v in (("maxTokens", args.max_tokens), ("temperature", args.temperature)) if v is not None}
    if generation:
        spec["generation"] = generation
    if args.pass_grader or args.min_delta is not None or args.min_score is not None:
        criterion: dict[str, Any] = {"grader": args.pass_grader or graders[0]}
        if args.min_delta is not None:
            criterion["minDelta"] = args.min_delta
        if args.min_score is not None:
            criterion["minScore"] = args.min_score
        spec["passCriterion"] = criterion
    return spec


def evaluations_create(args: argparse.Namespace) -> int:
    from finetune_operator.cli.objects import build

    body = build("Evaluation", args.name, namespace_of(args), evaluation_spec(args))
    if args.dry_run:
        print(dump(body, "json" if args.output == "json" else "yaml"))
        return EXIT_OK
    with Kube.from_args(args) as kube:
        kube.get("datasets", args.dataset)  # a missing Dataset is said now, not as a Pending Evaluation
        kube.create(PLURAL, body)
    print(f"evaluation.finetune.dev/{args.name} created")
    return EXIT_OK


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the Evaluation")
    add_kube_arguments(parser)


def evaluations_delete(args: argparse.Namespace) -> int:
    with Kube.from_args(args) as kube:
        kube.delete(PLURAL, args.name)
    print(f"evaluation.finetune.dev/{args.name} deleted")
    return EXIT_OK


COMMANDS = [
    Subcommand("evaluations", "create", "create an Evaluation of models on a Dataset", _create_arguments, evaluations_create),
    list_subcommand("evaluations", "list Evaluations", PLURAL, COLUMNS, "evaluations"),
    Subcommand(
        "evaluations", "show", "an Evaluation's score table (exit 1 when it Failed); --samples N: answers side by side",
        _show_arguments, evaluation_show, aliases=["get"],
    ),  # fmt: skip
    Subcommand("evaluations", "delete", "delete an Evaluation", _delete_arguments, evaluations_delete),
]
