"""Typed failures of a training run: a reason the operator shows, a message, and the exit code.

``BAD_INPUT`` (42) failures are the user's to fix (the operator does not retry them); every other
failure is retryable and the next attempt resumes from the newest complete checkpoint.
"""

from __future__ import annotations

from finetune_trainer.contract import ExitCode


class TrainerFailure(Exception):
    """A failure with a reason (``InvalidDataset``, ``ImpossibleConfig``, ``BaseModelNotFound``...)."""

    def __init__(self, reason: str, message: str, exit_code: ExitCode = ExitCode.RETRYABLE):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.exit_code = exit_code


def bad_input(reason: str, message: str) -> TrainerFailure:
    """A failure retrying cannot fix: the dataset or the job's settings must change."""
    return TrainerFailure(reason, message, ExitCode.BAD_INPUT)


class Preempted(Exception):
    """SIGTERM arrived (preemption, Job suspended, deleted): save what is cheap and stop with PREEMPTED."""
