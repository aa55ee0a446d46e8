"""Shell completion: ``finetune completion bash|zsh|fish`` prints a script that asks the program itself
(``finetune __complete WORDS...``) for the commands, flags and object names that fit the word being typed;
object names come from the cluster, with the ``--kubeconfig``, ``--context`` and ``-n`` already typed.

    source <(finetune completion bash)          # ~/.bashrc
    source <(finetune completion zsh)           # ~/.zshrc
    finetune completion fish | source           # ~/.config/fish/config.fish
"""

from __future__ import annotations

import argparse
import sys

from finetune_operator.cli.base import EXIT_OK, CliError, Subcommand

BASH = r"""# finetune shell completion (bash; zsh with bashcompinit)
_finetune_complete() {
    local IFS=$'\n'
    COMPREPLY=( $(finetune __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null) )
}
complete -o default -F _finetune_complete finetune
complete -o default -F _finetune_complete kubectl-finetune
"""

ZSH = "autoload -U +X bashcompinit && bashcompinit\n" + BASH

FISH = r"""# finetune shell completion (fish)
complete -c finetune -f -a '(finetune __complete (commandline -opc)[2..-1] (commandline -ct) 2>/dev/null)'
complete -c kubectl-finetune -f -a '(kubectl-finetune __complete (commandline -opc)[2..-1] (commandline -ct) 2>/dev/null)'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}

NAME_PLURALS = {"jobs": "finetunejobs", "datasets": "datasets", "endpoints": "inferenceendpoints", "evaluations": "evaluations", "chat": "inferenceendpoints"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every name (aliases too) a subcommand answers to."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _primary_names(parser: argparse.ArgumentParser) -> list[str]:
    """The subcommands' own names, without their aliases (what completion offers)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return [choice.dest for choice in action._choices_actions]
    return []


def _flag_value(words: list[str], *flags: str) -> str | None:
    for i, word in enumerate(words):
        for flag in flags:
            if word == flag and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(flag + "="):
                return word.split("=", 1)[1]
    return None


def candidates(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """What may come next: ``words`` are the words typed after the program's name, the last being the one
    under the cursor (possibly empty)."""
    done, current = words[:-1], words[-1] if words else ""
    path: list[str] = []
    for word in done:
        children = _subparsers(parser)
        if word in children:
            parser = children[word]
            path.append(word)
    children = _subparsers(parser)
    if current.startswith("-"):
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--") or len(o) == 2]
        return sorted(o for o in set(options) if o.startswith(current))
    if children:
        return sorted(c for c in _primary_names(parser) if c.startswith(current) and not c.startswith("_"))
    if path and path[-1] == "completion":
        return [s for s in SCRIPTS if s.startswith(current)]
    group = path[0] if path else ""
    positional = [w for w in done[len(path) :] if not w.startswith("-")]
    if group in NAME_PLURALS and not positional and not (path[-1:] == ["create"] and group != "chat"):
        return [n for n in object_names(NAME_PLURALS[group], done) if n.startswith(current)]
    return []


def object_names(plural: str, words: list[str]) -> list[str]:
    """Names of the objects of that kind in the namespace the typed flags select; none when that fails."""
    from finetune_operator.cli.kube import Kube

    try:
        with Kube(_flag_value(words, "--kubeconfig"), _flag_value(words, "--context"), _flag_value(words, "-n", "--namespace")) as kube:
            return [o["metadata"]["name"] for o in kube.list(plural)]
    except (CliError, Exception):  # completion never prints an error into the user's prompt
        return []


def _completion_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=sorted(SCRIPTS), help="the shell to print the script for")


def completion(args: argparse.Namespace) -> int:
    sys.stdout.write(SCRIPTS[args.shell])
    return EXIT_OK


COMMANDS = [Subcommand("completion", "", "print the shell completion script (bash, zsh, fish)", _completion_arguments, completion)]
