"""The two ways an evaluation goes wrong: the whole run's input is bad, or one sample failed."""

from __future__ import annotations

from dataclasses import dataclass


class BadInput(Exception):
    """The config or the dataset cannot be evaluated; retrying cannot help (exit 42).

    ``reason`` is a stable CamelCase word (UnknownGrader, InvalidRegex, NoReferences, ...) that ends
    up in the termination message and the Evaluation's status.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SampleError:
    """One sample could not be answered or graded. Counted as an error, never as a score."""

    reason: str
    """GenerationFailed, NoResponse, JudgeUnreachable, JudgeUnparseable, JudgeOutOfRange, GraderFailed."""
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
