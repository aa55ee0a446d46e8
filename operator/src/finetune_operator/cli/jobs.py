"""``finetune jobs ...`` (``job`` is an alias): FineTuneJobs as the hosted services' fine-tuning commands show them.

``create`` writes the same FineTuneJob a user would apply (``--dry-run`` prints it); ``list``, ``get``;
``events`` merges the trainer's events.jsonl with the Kubernetes Events, oldest first; ``watch`` follows a job
until it ends (step, loss, eval loss, tokens/s, ETA and a loss sparkline); ``checkpoints``; ``cancel``,
``suspend``, ``resume``; ``download`` fetches the adapter, model, merged model or a checkpoint with every
file's sha256 verified against the artifact's manifest.json; ``delete [--artifacts]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from finetune_operator.cli.base import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_NOT_READY,
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
from finetune_operator.cli.output import Column, age, duration, dump, print_fields, size, sparkline, table

PLURAL = "finetunejobs"
TERMINAL = ("Completed", "Failed", "Cancelled")


def _status(o: dict[str, Any]) -> dict[str, Any]:
    return o.get("status") or {}


def _progress(o: dict[str, Any]) -> dict[str, Any]:
    return _status(o).get("progress") or {}


def _phase(o: dict[str, Any]) -> str:
    return _status(o).get("phase") or "Pending"


COLUMNS = [
    Column("NAME", lambda o: o["metadata"]["name"]),
    Column("PHASE", _phase),
    Column("PROGRESS", lambda o: _progress(o).get("summary")),
    Column("MODEL", lambda o: (_status(o).get("outputModel") or {}).get("name")),
    Column("METHOD", lambda o: (o.get("spec") or {}).get("method", "lora"), wide=True),
    Column("BASE MODEL", lambda o: ((o.get("spec") or {}).get("baseModel") or {}).get("uri"), wide=True),
    Column("DATASET", lambda o: (o.get("spec") or {}).get("dataset"), wide=True),
    Column("LOSS", lambda o: _progress(o).get("trainLoss"), wide=True),
    Column("EVAL LOSS", lambda o: _progress(o).get("evalLoss"), wide=True),
    Column("ETA", lambda o: duration(_progress(o).get("etaSeconds")) if _phase(o) == "Running" else None, wide=True),
    Column("AGE", age),
]


def _name_arguments(parser: argparse.ArgumentParser, output: bool = False, storage: bool = False) -> None:
    parser.add_argument("name", help="the FineTuneJob")
    add_kube_arguments(parser)
    if output:
        add_output_argument(parser)
    if storage:
        add_storage_arguments(parser)


def progress_line(job: dict[str, Any]) -> str:
    """``42% (21/50)  loss 0.546  eval loss 0.610  20542 tok/s  eta 12s``."""
    p = _progress(job)
    parts = [p.get("summary") or ""]
    if p.get("trainLoss") is not None:
        parts.append(f"loss {p['trainLoss']:.4f}")
    if p.get("evalLoss") is not None:
        parts.append(f"eval loss {p['evalLoss']:.4f}")
    if p.get("tokensPerSecond"):
        parts.append(f"{p['tokensPerSecond']:.0f} tok/s")
    if p.get("etaSeconds") is not None and _phase(job) == "Running":
        parts.append(f"eta {duration(p['etaSeconds'])}")
    return "  ".join(x for x in parts if x)


def jobs_get(args: argparse.Namespace) -> int:
    with Kube.from_args(args) as kube:
        job = kube.get(PLURAL, args.name)
    if args.output in ("json", "yaml"):
        print(dump(job, args.output))
        return EXIT_OK
    spec, status = job.get("spec") or {}, _status(job)
    model = status.get("outputModel") or {}
    hp = spec.get("hyperparameters") or {}
    print_fields([
        ("Name", f"{job['metadata']['namespace']}/{job['metadata']['name']}"),
        ("Phase", _phase(job)),
        ("Message", status.get("message")),
        ("Progress", progress_line(job) or None),
        ("Base model", (spec.get("baseModel") or {}).get("uri")),
        ("Dataset", spec.get("dataset")),
        ("Method", spec.get("method", "lora")),
        ("Hyperparameters", ", ".join(f"{k} {v}" for k, v in hp.items()) or "defaults"),
        ("From checkpoint", spec.get("fromCheckpoint")),
        ("Output model", model.get("name")),
        ("Output URI", model.get("uri")),
        ("Merged URI", model.get("mergedUri")),
        ("Checkpoints", ", ".join(str(c.get("step")) for c in status.get("checkpoints") or []) or None),
        ("Artifacts", status.get("artifactsUri") if args.output == "wide" else None),
        ("Retries", status.get("retries") or None),
        ("Started", status.get("startTime")),
        ("Ended", status.get("completionTime")),
        ("Age", age(job)),
    ])  # fmt: skip
    if args.output == "wide" and status.get("conditions"):
        print("\nConditions:")
        rows = [[c.get("type"), c.get("status"), c.get("reason"), c.get("message")] for c in status["conditions"]]
        print(table(rows, ["TYPE", "STATUS", "REASON", "MESSAGE"]))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# create


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="name of the FineTuneJob")
    parser.add_argument("--model", required=True, metavar="URI", help="base model: hf://org/name[@rev], s3://bucket/prefix or pvc://claim/path")
    parser.add_argument("--model-secret", default=None, metavar="SECRET", help="Secret with the base model's credentials (e.g. a Hugging Face token)")
    parser.add_argument("--dataset", required=True, help="a Dataset of the namespace to train on")
    parser.add_argument("--validation-dataset", default=None, metavar="NAME", help="a Dataset for validation loss")
    parser.add_argument("--validation-split", type=float, default=None, metavar="F", help="hold out this fraction for validation loss")
    parser.add_argument("--method", choices=("lora", "qlora", "full"), default=None, help="default lora")
    parser.add_argument("--objective", choices=("sft", "dpo"), default=None, help="sft (default) or dpo on a preference Dataset")
    parser.add_argument("--dpo-beta", type=float, default=None, metavar="F", help="objective dpo: beta (default 0.1)")
    parser.add_argument("--dpo-loss-type", choices=("sigmoid", "ipo"), default=None, help="objective dpo: the loss (default sigmoid)")
    parser.add_argument("--dpo-label-smoothing", type=float, default=None, metavar="F", help="objective dpo, sigmoid loss (default 0)")
    parser.add_argument("--dpo-sft-weight", type=float, default=None, metavar="F",
                        help="objective dpo: how much of the preferred answer's next-token loss to add (RPO; default 0)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=None, help="default 3")
    parser.add_argument("--learning-rate", type=float, default=None, help="default 1e-4 (lora), 1e-5 (full)")
    parser.add_argument("--batch-size", default=None, help="an integer or auto (default)")
    parser.add_argument("--max-seq-length", type=int, default=None, metavar="N", help="default 2048")
    parser.add_argument("--lr-scheduler", choices=("linear", "cosine", "constant"), default=None)
    parser.add_argument("--warmup-ratio", type=float, default=None)
    parser.add_argument("--n-checkpoints", type=int, default=None, metavar="N", help="evenly spaced checkpoints (default 1)")
    parser.add_argument("--n-evals", type=int, default=None, metavar="N", help="validation loss computations (default 0)")
    parser.add_argument("--no-packing", action="store_true", help="one example per row")
    parser.add_argument("--lora-r", type=int, default=None, metavar="R", help="default 16")
    parser.add_argument("--lora-alpha", type=int, default=None, metavar="A", help="default 32")
    parser.add_argument("--suffix", default=None, help="part of the output model's name")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs per node (default 1; 0 trains on CPU)")
    parser.add_argument("--gpu-type", default=None, help="a GPU type of the operator's configuration")
    parser.add_argument("--cpu", default=None, help="cpu per node, a Kubernetes quantity")
    parser.add_argument("--memory", default=None, help="memory per node, a Kubernetes quantity")
    parser.add_argument("--nodes", type=int, default=None, help="nodes to train on (default 1)")
    parser.add_argument("--merge", action="store_true", help="also upload the base model with the adapter merged in")
    parser.add_argument("--from-checkpoint", default=None, metavar="JOB[:STEP]", help="continue another job: its final model, or a checkpoint")
    parser.add_argument("--queue", default=None, help="Kueue LocalQueue")
    parser.add_argument("--watch", action="store_true", help="then follow the job until it ends, as jobs watch")
    parser.add_argument("--dry-run", action="store_true", help="print the FineTuneJob; create nothing")
    add_kube_arguments(parser)
    add_output_argument(parser, default="yaml")
    add_storage_arguments(parser)


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec from the flags: only what the user set, so the API's defaults stay the API's."""
    spec: dict[str, Any] = {"baseModel": {"uri": args.model}, "dataset": args.dataset}
    if args.model_secret:
        spec["baseModel"]["secretRef"] = {"name": args.model_secret}
    for key, value in (("validationDataset", args.validation_dataset), ("validationSplit", args.validation_split), ("method", args.method),
                       ("objective", args.objective), ("suffix", args.suffix), ("fromCheckpoint", args.from_checkpoint), ("queueName", args.queue), ("numNodes", args.nodes)):
        if value is not None:
            spec[key] = value
    options = (("beta", args.dpo_beta), ("lossType", args.dpo_loss_type), ("labelSmoothing", args.dpo_label_smoothing), ("sftWeight", args.dpo_sft_weight))
    dpo = {k: v for k, v in options if v is not None}
    if dpo:
        spec["dpo"] = dpo
    batch_size: Any = args.batch_size
    if batch_size is not None and batch_size != "auto":
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise CliError(f"--batch-size {batch_size!r}: must be an integer or auto", EXIT_USAGE) from None
    hp = {k: v for k, v in (("epochs", args.epochs), ("learningRate", args.learning_rate), ("batchSize", batch_size),
                            ("maxSeqLength", args.max_seq_length), ("lrScheduler", args.lr_scheduler), ("warmupRatio", args.warmup_ratio),
                            ("nCheckpoints", args.n_checkpoints), ("nEvals", args.n_evals)) if v is not None}  # fmt: skip
    if args.no_packing:
        hp["packing"] = False
    if hp:
        spec["hyperparameters"] = hp
    lora = {k: v for k, v in (("r", args.lora_r), ("alpha", args.lora_alpha)) if v is not None}
    if lora:
        spec["lora"] = lora
    resources = {k: v for k, v in (("gpus", args.gpus), ("gpuType", args.gpu_type), ("cpu", args.cpu), ("memory", args.memory)) if v is not None}
    if resources:
        spec["resources"] = resources
    if args.merge:
        spec["output"] = {"merge": True}
    return spec


def check_from_checkpoint(kube: Kube, value: str) -> None:
    """``JOB`` must be a Completed job of the namespace, ``JOB:STEP`` one of its checkpoints."""
    job_name, _, step = value.partition(":")
    try:
        source = kube.get(PLURAL, job_name)
    except CliError as e:
        raise CliError(f"--from-checkpoint {value}: {e}", e.code) from None
    if step:
        steps = [c.get("step") for c in _status(source).get("checkpoints") or []]
        if int(step) not in steps:
            have = ", ".join(map(str, steps)) or "none yet"
            raise CliError(f"--from-checkpoint {value}: finetunejob {job_name} has no checkpoint at step {step} (its checkpoints: {have})", EXIT_NOT_FOUND)
    elif _phase(source) != "Completed":
        raise CliError(f"--from-checkpoint {value}: finetunejob {job_name} is {_phase(source)}, not Completed (name a checkpoint: {job_name}:STEP)", EXIT_NOT_READY)


def jobs_create(args: argparse.Namespace) -> int:
    from finetune_operator.cli.objects import build

    body = build("FineTuneJob", args.name, namespace_of(args), job_spec(args))
    if args.dry_run:
        print(dump(body, "json" if args.output == "json" else "yaml"))
        return EXIT_OK
    with Kube.from_args(args) as kube:
        kube.get("datasets", args.dataset)  # a missing Dataset is said now, not as a Pending job
        if args.from_checkpoint:
            check_from_checkpoint(kube, args.from_checkpoint)
        kube.create(PLURAL, body)
        print(f"finetunejob.finetune.dev/{args.name} created")
        if args.watch:
            return follow(kube, args, args.name)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# events, watch, checkpoints


def jobs_events(args: argparse.Namespace) -> int:
    from finetune_operator.cli.reads import merged_events
    from finetune_operator.cli.store import Store

    with Kube.from_args(args) as kube:
        job = kube.get(PLURAL, args.name)
        store = Store.from_args(args, kube) if _status(job).get("artifactsUri") else None
        events = merged_events(kube, store, "FineTuneJob", job)
    if args.output in ("json", "yaml"):
        print(dump([e.as_dict() for e in events], args.output))
        return EXIT_OK
    if not events:
        print(f"No events for finetunejob {args.name} yet.", file=sys.stderr)
        return EXIT_OK
    rows = []
    for e in events:
        when = e.time.strftime("%Y-%m-%d %H:%M:%S") if e.time else "-"
        rows.append([when, e.source, e.type, e.reason, e.message] if args.output == "wide" else [when, e.type, e.reason, e.message])
    print(table(rows, ["TIME", "SOURCE", "TYPE", "REASON", "MESSAGE"] if args.output == "wide" else ["TIME", "TYPE", "REASON", "MESSAGE"]))
    return EXIT_OK


def watch_line(job: dict[str, Any], losses: list[float]) -> str:
    """One status line of ``jobs watch``."""
    line = f"{job['metadata']['name']}  {_phase(job):<10} {progress_line(job)}"
    spark = sparkline(losses, 30)
    if spark:
        line += f"  loss {spark}"
    return line


def _watch_arguments(parser: argparse.ArgumentParser) -> None:
    _name_arguments(parser, storage=True)


def follow(kube: Kube, args: argparse.Namespace, name: str) -> int:
    """Print the job's line each time it changes (one line rewritten in place on a terminal) until it ends:
    exit 0 when Completed, 1 when Failed or Cancelled. The learning curve is read from the store when the
    store can be reached; otherwise the sparkline is built from the losses seen while watching."""
    from finetune_operator.cli.reads import learning_curve
    from finetune_operator.cli.store import Store

    tty = sys.stdout.isatty()
    store: Store | None = None
    store_tried = False
    seen: list[float] = []
    last_line = ""
    last_step = None
    while True:  # a watch the server ends (timeout) is opened again
        for job in kube.watch(PLURAL, name, timeout_seconds=60):
            progress = _progress(job)
            losses: list[float] = []
            if _status(job).get("artifactsUri") and not store_tried:
                store_tried = True
                try:
                    store = Store.from_args(args, kube)
                except CliError:
                    store = None
            if store is not None and progress.get("step") != last_step:
                try:
                    losses = [m.train_loss for m in learning_curve(store, job) if m.train_loss is not None]
                except CliError:
                    store = None
            last_step = progress.get("step")
            if not losses:
                if progress.get("trainLoss") is not None and (not seen or seen[-1] != progress["trainLoss"]):
                    seen.append(progress["trainLoss"])
                losses = seen
            line = watch_line(job, losses)
            if line != last_line:
                if tty:
                    sys.stdout.write("\r\033[K" + line)
                else:
                    sys.stdout.write(line + "\n")
                sys.stdout.flush()
                last_line = line
            phase = _phase(job)
            if phase in TERMINAL:
                if tty:
                    sys.stdout.write("\n")
                message = _status(job).get("message")
                if message:
                    print(message)
                return EXIT_OK if phase == "Completed" else EXIT_FAILED


def jobs_watch(args: argparse.Namespace) -> int:
    with Kube.from_args(args) as kube:
        kube.get(PLURAL, args.name)  # a wrong name fails at once, not after a watch timeout
        return follow(kube, args, args.name)


def jobs_checkpoints(args: argparse.Namespace) -> int:
    from finetune_operator.cli.reads import job_artifacts

    with Kube.from_args(args) as kube:
        job = kube.get(PLURAL, args.name)
    artifacts = job_artifacts(job)
    if args.output in ("json", "yaml"):
        print(dump([{"type": a.label, "step": a.step, "uri": a.uri} for a in artifacts], args.output))
        return EXIT_OK
    if not artifacts:
        print(f"finetunejob {args.name} has no checkpoints yet.", file=sys.stderr)
        return EXIT_OK
    total = _progress(job).get("totalSteps")
    rows = []
    for a in artifacts:
        step = a.step if a.step is not None else (total or "final")
        download = f"--checkpoint {a.step}" if a.label == "checkpoint" else ("--merged" if a.label == "merged" else "")
        row = [a.label, step, f"finetune jobs download {args.name} {download}".rstrip()]
        rows.append(row + [a.uri] if args.output == "wide" else row)
    print(table(rows, ["TYPE", "STEP", "DOWNLOAD", "URI"] if args.output == "wide" else ["TYPE", "STEP", "DOWNLOAD"]))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# cancel, suspend, resume


def jobs_cancel(args: argparse.Namespace) -> int:
    with Kube.from_args(args) as kube:
        job = kube.get(PLURAL, args.name)
        if _phase(job) in TERMINAL:
            raise CliError(f"finetunejob {args.name} has already ended ({_phase(job)}): nothing to cancel", EXIT_NOT_READY)
        kube.patch_spec(PLURAL, args.name, {"cancel": True})
    print(f"finetunejob.finetune.dev/{args.name} cancelled (checkpoints are kept)")
    return EXIT_OK


def _set_suspend(args: argparse.Namespace, suspend: bool) -> int:
    with Kube.from_args(args) as kube:
        job = kube.get(PLURAL, args.name)
        if _phase(job) in TERMINAL:
            raise CliError(f"finetunejob {args.name} has ended ({_phase(job)}): it cannot be {'suspended' if suspend else 'resumed'}", EXIT_NOT_READY)
        if bool((job.get("spec") or {}).get("suspend")) == suspend:
            print(f"finetunejob.finetune.dev/{args.name} is already {'suspended' if suspend else 'running (not suspended)'}")
            return EXIT_OK
        kube.patch_spec(PLURAL, args.name, {"suspend": suspend})
    print(f"finetunejob.finetune.dev/{args.name} {'suspended' if suspend else 'resumed (from its last checkpoint)'}")
    return EXIT_OK


def jobs_suspend(args: argparse.Namespace) -> int:
    return _set_suspend(args, True)


def jobs_resume(args: argparse.Namespace) -> int:
    return _set_suspend(args, False)


# ----------------------------------------------------------------------------------------------
# download, delete


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the FineTuneJob")
    parser.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="a checkpoint instead of the final model")
    parser.add_argument("--merged", action="store_true", help="the merged model (jobs created with --merge)")
    parser.add_argument("-d", "--dir", default=None, metavar="DIR", help="folder to download into (default ./NAME, ./NAME-step-STEP)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_kube_arguments(parser)
    add_storage_arguments(parser)


def jobs_download(args: argparse.Namespace) -> int:
    from finetune_operator.cli.reads import artifact_to_download
    from finetune_operator.cli.store import Store

    if args.checkpoint is not None and args.merged:
        raise CliError("--checkpoint and --merged: choose one", EXIT_USAGE)
    with Kube.from_args(args) as kube:
        job = kube.get(PLURAL, args.name)
        artifact = artifact_to_download(job, args.checkpoint, args.merged)
        store = Store.from_args(args, kube)
    dest = Path(args.dir or (f"{args.name}-step-{artifact.step}" if artifact.label == "checkpoint" else args.name))
    manifest = store.download_artifact(artifact.uri, dest, progress=not args.no_progress)
    what = f"checkpoint at step {artifact.step}" if artifact.label == "checkpoint" else artifact.label
    print(f"downloaded the {what} of {args.name}: {len(manifest.files)} files ({size(manifest.total_size)}) to {dest}/, each sha256 verified")
    lora = (job.get("spec") or {}).get("method", "lora") != "full"
    folder = dest / ("adapter" if lora else "model") if artifact.label == "checkpoint" else dest  # a checkpoint's weights are in a subfolder
    base = ((job.get("spec") or {}).get("baseModel") or {}).get("uri")
    if lora and artifact.label in ("adapter", "checkpoint"):
        print(f"load it with peft: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<{base}>), {str(folder)!r})")
    else:
        print(f"load it with transformers: AutoModelForCausalLM.from_pretrained({str(folder)!r})")
    return EXIT_OK


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the FineTuneJob")
    parser.add_argument("--artifacts", action="store_true", help="also delete its checkpoints and model from the object store")
    add_kube_arguments(parser)
    add_storage_arguments(parser)


def jobs_delete(args: argparse.Namespace) -> int:
    from finetune_operator.cli.store import Store

    with Kube.from_args(args) as kube:
        job = kube.get(PLURAL, args.name)
        artifacts = _status(job).get("artifactsUri")
        store = Store.from_args(args, kube) if args.artifacts and artifacts else None
        kube.delete(PLURAL, args.name)
    print(f"finetunejob.finetune.dev/{args.name} deleted")
    if args.artifacts:
        if store is None:
            print(f"finetunejob {args.name} had no artifacts in the object store")
        else:
            print(f"deleted {store.delete_prefix(artifacts)} objects under {artifacts}")
    return EXIT_OK


COMMANDS = [
    Subcommand("jobs", "create", "create a FineTuneJob (--dry-run prints it)", _create_arguments, jobs_create),
    list_subcommand("jobs", "list FineTuneJobs", PLURAL, COLUMNS, "fine-tuning jobs"),
    Subcommand("jobs", "get", "show a FineTuneJob", lambda p: _name_arguments(p, output=True), jobs_get, aliases=["retrieve"]),
    Subcommand("jobs", "events", "the trainer's event log and the Kubernetes Events, oldest first", lambda p: _name_arguments(p, True, True), jobs_events),
    Subcommand("jobs", "watch", "follow a job until it ends (exit 0 Completed, 1 Failed or Cancelled)", _watch_arguments, jobs_watch),
    Subcommand("jobs", "checkpoints", "a job's checkpoints and final model", lambda p: _name_arguments(p, output=True), jobs_checkpoints),
    Subcommand("jobs", "cancel", "stop a job for good (its checkpoints are kept)", _name_arguments, jobs_cancel),
    Subcommand("jobs", "suspend", "stop a job's pods; resume continues from the last checkpoint", _name_arguments, jobs_suspend),
    Subcommand("jobs", "resume", "resume a suspended job", _name_arguments, jobs_resume),
    Subcommand("jobs", "download", "download the model, merged model or a checkpoint (sha256 verified)", _download_arguments, jobs_download),
    Subcommand("jobs", "delete", "delete a job (--artifacts: and its files in the object store)", _delete_arguments, jobs_delete),
]
