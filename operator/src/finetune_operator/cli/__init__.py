"""``finetune``: the user's command line, also installed as ``kubectl-finetune`` (so ``kubectl finetune ...``).

    finetune jobs create|list|get|events|watch|checkpoints|cancel|suspend|resume|download|delete
    finetune datasets check|create|list|get|download|delete
    finetune endpoints create|list|get|delete
    finetune chat ENDPOINT [PROMPT] [--model M]
    finetune evaluations create|list|show [--samples N]|delete
    finetune console [--port P]
    finetune completion bash|zsh|fish

The singular group names (``job``, ``dataset``, ``endpoint``, ``evaluation``) are aliases, so the commands of
earlier releases (``finetune dataset check``, ``finetune evaluation show``) work as before.

One module per group (``jobs``, ``datasets``, ``endpoints``, ``chat``, ``evaluations``, ``console``,
``completion``), each with a ``COMMANDS`` list of ``Subcommand``s; ``kube`` is the door to the Kubernetes
API (the user's kubeconfig), ``store`` to the object store, ``reads`` assembles what the CLI and the console
show beyond status (merged events, the learning curve, evaluation samples), ``output`` prints. Heavy imports
happen inside the run functions, so ``finetune --help`` is instant, and nothing here imports torch.

Errors are one line on stderr (``error: ...``), never a traceback; the exit codes are in ``base.EXIT_CODES``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from finetune_operator.cli import chat, completion, datasets, endpoints, evaluations, jobs
from finetune_operator.cli.base import EXIT_CODES, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CliError, Group, Subcommand
from finetune_operator.cli.datasets import format_report
from finetune_operator.cli.evaluations import format_evaluation


def _console_arguments(parser: argparse.ArgumentParser) -> None:
    from finetune_operator.cli.base import add_kube_arguments, add_storage_arguments

    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 picks a free one)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    add_kube_arguments(parser)
    add_storage_arguments(parser)


def _console(args: argparse.Namespace) -> int:
    from finetune_operator.cli.console.server import run_console

    return run_console(args)


GROUPS = [
    Group("jobs", "fine-tuning jobs: create, follow, download", ["job"]),
    Group("datasets", "check training files locally, upload them, and inspect Datasets", ["dataset"]),
    Group("endpoints", "InferenceEndpoints: an OpenAI-compatible API for models and adapters", ["endpoint"]),
    Group("evaluations", "Evaluations: scores and answers side by side", ["evaluation"]),
]

SUBCOMMANDS: list[Subcommand] = [
    *jobs.COMMANDS,
    *datasets.COMMANDS,
    *endpoints.COMMANDS,
    *chat.COMMANDS,
    *evaluations.COMMANDS,
    Subcommand("console", "", "serve the web console on localhost with your kube credentials", _console_arguments, _console),
    *completion.COMMANDS,
]


def program_name(argv0: str | None = None) -> str:
    """``kubectl finetune`` when run as the kubectl plugin, else ``finetune``."""
    name = Path(argv0 or sys.argv[0]).name
    return "kubectl finetune" if name.startswith("kubectl-") else "finetune"


def _epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or program_name(), description="Fine-tuning on your own Kubernetes cluster.", epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    top = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    group_help = {g.name: g for g in GROUPS}
    group_parsers: dict[str, argparse._SubParsersAction] = {}
    for command in SUBCOMMANDS:
        if not command.name:
            sub = top.add_parser(command.group, help=command.help, description=command.help, aliases=command.aliases)
        else:
            if command.group not in group_parsers:
                info = group_help[command.group]
                group = top.add_parser(command.group, help=info.help, description=info.help, aliases=info.aliases)
                group_parsers[command.group] = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
            sub = group_parsers[command.group].add_parser(command.name, help=command.help, description=command.help, aliases=command.aliases)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["__complete"]:
        print("\n".join(completion.candidates(parser, argv[1:] or [""])))
        return EXIT_OK
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse gives an optional positional (chat's PROMPT) nothing when options come between it and the one
        # before: `finetune chat support --model m "a prompt"`. Such words are the prompt; anything else is an error.
        if hasattr(args, "prompt") and args.prompt is None and not any(word.startswith("-") for word in extra):
            args.prompt = " ".join(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args))
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `finetune jobs events x | head`
        sys.stderr.close()
        return EXIT_OK
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("FINETUNE_DEBUG"):
            raise
        text = " ".join(str(e).split())[:300]
        print(f"error: unexpected {type(e).__name__}: {text} (FINETUNE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_FAILED


__all__ = ["CliError", "SUBCOMMANDS", "build_parser", "format_evaluation", "format_report", "main", "program_name"]

if __name__ == "__main__":
    sys.exit(main())
