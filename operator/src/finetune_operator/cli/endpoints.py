"""``finetune endpoints create|list|get|delete`` (``endpoint`` is an alias): InferenceEndpoints, an OpenAI-compatible
API for a base model and the LoRA adapters of FineTuneJobs."""

from __future__ import annotations

import argparse
from typing import Any

from finetune_operator.cli.base import EXIT_OK, EXIT_USAGE, CliError, Subcommand, add_kube_arguments, add_output_argument, list_subcommand
from finetune_operator.cli.kube import Kube, namespace_of
from finetune_operator.cli.output import Column, age, dump, print_fields, table

PLURAL = "inferenceendpoints"


def _status(o: dict[str, Any]) -> dict[str, Any]:
    return o.get("status") or {}


COLUMNS = [
    Column("NAME", lambda o: o["metadata"]["name"]),
    Column("PHASE", lambda o: _status(o).get("phase") or "Pending"),
    Column("READY", lambda o: f"{_status(o).get('readyReplicas', 0)}/{((o.get('spec') or {}).get('replicas') or {}).get('min', 1)}"),
    Column("MODELS", lambda o: ",".join(_status(o).get("models") or []) or None),
    Column("RUNTIME", lambda o: _status(o).get("runtime") or (o.get("spec") or {}).get("runtime"), wide=True),
    Column("BASE MODEL", lambda o: ((o.get("spec") or {}).get("baseModel") or {}).get("uri"), wide=True),
    Column("URL", lambda o: _status(o).get("url"), wide=True),
    Column("AGE", age),
]


def _get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the InferenceEndpoint")
    add_kube_arguments(parser)
    add_output_argument(parser)


def endpoints_get(args: argparse.Namespace) -> int:
    with Kube.from_args(args) as kube:
        endpoint = kube.get(PLURAL, args.name)
    if args.output in ("json", "yaml"):
        print(dump(endpoint, args.output))
        return EXIT_OK
    spec, status = endpoint.get("spec") or {}, _status(endpoint)
    key = spec.get("apiKeySecretRef")
    print_fields([
        ("Name", f"{endpoint['metadata']['namespace']}/{endpoint['metadata']['name']}"),
        ("Phase", status.get("phase") or "Pending"),
        ("Message", status.get("message")),
        ("Base model", (spec.get("baseModel") or {}).get("uri")),
        ("Models", ", ".join(status.get("models") or []) or None),
        ("Replicas", f"{status.get('readyReplicas', 0)} ready of {status.get('replicas', 0)}"),
        ("Runtime", status.get("runtime") or spec.get("runtime")),
        ("URL", status.get("url")),
        ("API key", f"Secret {key['name']} (key {key.get('key') or 'apiKey'})" if key else "none"),
        ("Age", age(endpoint)),
    ])  # fmt: skip
    adapters = status.get("adapters") or []
    if adapters:
        print("\nAdapters:")
        rows = [[a.get("name"), "yes" if a.get("ready") else "no", a.get("reason") or "", a.get("uri") if args.output == "wide" else a.get("message") or ""] for a in adapters]
        print(table(rows, ["NAME", "SERVED", "REASON", "URI" if args.output == "wide" else "MESSAGE"]))
    return EXIT_OK


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="name of the InferenceEndpoint")
    parser.add_argument("--model", required=True, metavar="URI", help="base model: hf://, s3:// or pvc://")
    parser.add_argument("--served-name", default=None, help="the name clients send for the base model (default: the endpoint's name)")
    parser.add_argument(
        "--adapter", dest="adapters", action="append", default=[], metavar="NAME[=JOB|=s3://...]",
        help="a LoRA adapter to serve (repeat): a FineTuneJob's (NAME=JOB, or NAME alone for the job of that name) or a folder URI",
    )  # fmt: skip
    parser.add_argument("--runtime", choices=("vllm", "builtin"), default=None, help="default: vllm with GPUs, else builtin")
    parser.add_argument("--replicas", type=int, default=None, help="replicas (min and max)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs per replica (default 0)")
    parser.add_argument("--cpu", default=None)
    parser.add_argument("--memory", default=None)
    parser.add_argument("--api-key-secret", default=None, metavar="SECRET", help="a Secret whose key apiKey clients must send")
    parser.add_argument("--max-model-len", type=int, default=None, metavar="N")
    parser.add_argument("--dry-run", action="store_true", help="print the InferenceEndpoint; create nothing")
    add_kube_arguments(parser)
    add_output_argument(parser, default="yaml")


def endpoint_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"baseModel": {"uri": args.model}}
    if args.served_name:
        spec["servedModelName"] = args.served_name
    adapters = []
    for text in args.adapters:
        name, sep, source = text.partition("=")
        if not name:
            raise CliError(f"--adapter {text!r}: write NAME, NAME=JOB or NAME=s3://...", EXIT_USAGE)
        source = source if sep else name
        adapters.append({"name": name, "uri": source} if "://" in source else {"name": name, "fineTuneJob": source})
    if adapters:
        spec["adapters"] = adapters
    if args.runtime:
        spec["runtime"] = args.runtime
    if args.replicas is not None:
        spec["replicas"] = {"min": args.replicas, "max": max(1, args.replicas)}
    resources = {k: v for k, v in (("gpus", args.gpus), ("cpu", args.cpu), ("memory", args.memory)) if v is not None}
    if resources:
        spec["resources"] = resources
    if args.api_key_secret:
        spec["apiKeySecretRef"] = {"name": args.api_key_secret}
    if args.max_model_len is not None:
        spec["maxModelLen"] = args.max_model_len
    return spec


def endpoints_create(args: argparse.Namespace) -> int:
    from finetune_operator.cli.objects import build

    body = build("InferenceEndpoint", args.name, namespace_of(args), endpoint_spec(args))
    if args.dry_run:
        print(dump(body, "json" if args.output == "json" else "yaml"))
        return EXIT_OK
    with Kube.from_args(args) as kube:
        kube.create(PLURAL, body)
    print(f"inferenceendpoint.finetune.dev/{args.name} created")
    return EXIT_OK


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the InferenceEndpoint")
    add_kube_arguments(parser)


def endpoints_delete(args: argparse.Namespace) -> int:
    with Kube.from_args(args) as kube:
        kube.delete(PLURAL, args.name)
    print(f"inferenceendpoint.finetune.dev/{args.name} deleted")
    return EXIT_OK


COMMANDS = [
    Subcommand("endpoints", "create", "create an InferenceEndpoint (--dry-run prints it)", _create_arguments, endpoints_create),
    list_subcommand("endpoints", "list InferenceEndpoints", PLURAL, COLUMNS, "inference endpoints"),
    Subcommand("endpoints", "get", "show an InferenceEndpoint: models, replicas, adapters", _get_arguments, endpoints_get),
    Subcommand("endpoints", "delete", "delete an InferenceEndpoint", _delete_arguments, endpoints_delete),
]
