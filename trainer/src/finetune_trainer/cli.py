"""``finetune-trainer``: one entry point for the trainer image.

Each subcommand lives in its own module and is imported only when it runs, so ``validate`` does not
pay for importing torch and ``--help`` is instant. A subcommand module exposes ``main(argv) -> int``
and returns an ``ExitCode``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("finetune_trainer.data.validate_cmd", "check a dataset, hash and split it, upload the normalised files"),
    "train": ("finetune_trainer.train.recipe", "fine-tune a model (LoRA, QLoRA or full) from a config file"),
    "evaluate": ("finetune_trainer.evaluate.run", "generate answers for a dataset and grade them"),
    "serve": ("finetune_trainer.serve.server", "serve a base model and LoRA adapters behind an OpenAI-compatible API"),
    "fetch": ("finetune_trainer.fetch", "download models and adapters (manifest checked) from the object store"),
    "upload": ("finetune_trainer.upload", "upload a model or adapter folder to the object store, manifest last"),
    "vllm-adapters": ("finetune_trainer.vllm_adapters", "load and unload a running vLLM server's LoRA adapters (sidecar)"),
}


def usage() -> str:
    lines = ["usage: finetune-trainer COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `finetune-trainer COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"finetune-trainer: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
