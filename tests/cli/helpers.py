"""Assertions every CLI test makes: success with its output, or a failure in one line with its exit code."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import yaml


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def fails(done: subprocess.CompletedProcess, code: int, *phrases: str) -> str:
    """The command exited with ``code`` and said why in one line on stderr (no traceback), naming ``phrases``."""
    assert done.returncode == code, f"exit {done.returncode}, expected {code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = [line for line in done.stderr.splitlines() if line.strip() and "it/s]" not in line and "B/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for phrase in phrases:
        assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"
    return lines[0]


def as_json(done: subprocess.CompletedProcess) -> Any:
    return json.loads(ok(done))


def as_yaml(done: subprocess.CompletedProcess) -> Any:
    return yaml.safe_load(ok(done))


def rows(text: str) -> list[list[str]]:
    """A kubectl-style table as lists of cells (columns are separated by at least three spaces... or two)."""
    import re

    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]
