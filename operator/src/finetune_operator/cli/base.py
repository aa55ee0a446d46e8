"""What every command shares: exit codes, the one-line error, the registry of commands, the common flags.

A command is a ``Subcommand`` (group, name, help, a function that adds its arguments, a function that runs it
and returns the exit code) in a module's ``COMMANDS`` list; ``finetune_operator.cli`` builds the parser from
them. Reads take ``-o table|wide|json|yaml``; every command that talks to the cluster takes ``--kubeconfig``,
``--context`` and ``-n/--namespace`` exactly as kubectl does.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

EXIT_OK = 0
"""Done; for ``jobs watch``, the job Completed."""
EXIT_FAILED = 1
"""The operation failed (a check, an upload, an API call), or the job or evaluation it waited for failed."""
EXIT_USAGE = 2
"""Bad flags or arguments (argparse's own code)."""
EXIT_NOT_FOUND = 3
"""The named object (or checkpoint, or namespace) does not exist."""
EXIT_FORBIDDEN = 4
"""The cluster or the object store refused the credentials (401/403)."""
EXIT_NOT_READY = 5
"""The object exists but cannot do that yet: a download of a job that is not Completed, a chat with an
endpoint that is not Ready, a cancel of a job that has ended."""
EXIT_CORRUPT = 6
"""A downloaded file does not match the sha256 (or size) in its artifact's manifest.json."""
EXIT_UNREACHABLE = 7
"""The Kubernetes API, the object store or the endpoint cannot be reached."""
EXIT_INTERRUPTED = 130
"""Ctrl-C."""

EXIT_CODES: list[tuple[int, str]] = [
    (EXIT_OK, "done (jobs watch: the job Completed)"),
    (EXIT_FAILED, "the operation failed, or the job or evaluation waited for Failed or was Cancelled"),
    (EXIT_USAGE, "bad flags or arguments"),
    (EXIT_NOT_FOUND, "no such object, checkpoint or namespace"),
    (EXIT_FORBIDDEN, "the cluster or the object store refused the credentials"),
    (EXIT_NOT_READY, "not possible yet: e.g. download of a job that is not Completed, chat with an endpoint that is not Ready"),
    (EXIT_CORRUPT, "a downloaded file does not match its manifest's sha256"),
    (EXIT_UNREACHABLE, "the Kubernetes API, the object store or the endpoint cannot be reached"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
]


class CliError(Exception):
    """A failure reported in one line (no traceback), with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Subcommand:
    """One ``finetune GROUP NAME`` command (``name`` empty: the group itself is the command, e.g. ``chat``)."""

    group: str
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Group:
    name: str
    help: str
    aliases: list[str] = field(default_factory=list)


OUTPUT_FORMATS = ("table", "wide", "json", "yaml")


def add_kube_arguments(parser: argparse.ArgumentParser, all_namespaces: bool = False) -> None:
    """``--kubeconfig``, ``--context``, ``-n/--namespace`` (and ``-A`` for lists), as kubectl takes them."""
    parser.add_argument("--kubeconfig", default=None, metavar="PATH", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current context)")
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: the context's namespace, else default)")
    if all_namespaces:
        parser.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")


def add_output_argument(parser: argparse.ArgumentParser, default: str = "table") -> None:
    parser.add_argument("-o", "--output", default=default, choices=OUTPUT_FORMATS, help=f"output format (default {default})")


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """How the CLI reaches the object store where the operator's pods write (events, curves, artifacts).

    Default: the endpoint the operator gives its pods (read from a trainer's ConfigMap in the namespace) and
    the keys of the namespace's storage Secret, when the user may read it; flags and variables override."""
    parser.add_argument(
        "--storage-endpoint",
        default=os.environ.get("FINETUNE_STORAGE_ENDPOINT"),
        metavar="HOST:PORT",
        help="object store endpoint (default: $FINETUNE_STORAGE_ENDPOINT, else the one the operator gives its pods)",
    )
    parser.add_argument(
        "--storage-insecure",
        action="store_true",
        default=None,
        help="plain HTTP to the object store (default: $FINETUNE_STORAGE_SECURE=false, else as the operator's pods)",
    )
    parser.add_argument(
        "--credentials-file",
        default=None,
        metavar="PATH",
        help="object store keys: an AWS credentials file or a folder with accessKey and secretKey (default: "
        "$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY, else the namespace's storage Secret)",
    )


def list_subcommand(group: str, help: str, plural: str, columns: Sequence[Any], nothing: str) -> Subcommand:
    """``finetune GROUP list``: the objects of ``plural`` in the namespace (or all, ``-A``) as a table, wide,
    json or yaml; ``nothing`` names them in the line printed when there are none."""

    def arguments(parser: argparse.ArgumentParser) -> None:
        add_kube_arguments(parser, all_namespaces=True)
        add_output_argument(parser)

    def run(args: argparse.Namespace) -> int:
        from finetune_operator.cli.kube import Kube  # it imports this module
        from finetune_operator.cli.output import print_objects

        with Kube.from_args(args) as kube:
            items = kube.list(plural, all_namespaces=args.all_namespaces)
            print_objects(items, columns, args.output, args.all_namespaces, f"No {nothing} found in namespace {kube.namespace}.")
        return EXIT_OK

    return Subcommand(group, "list", help, arguments, run, aliases=["ls"])
