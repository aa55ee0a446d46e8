"""From per-sample scores to an ``EvaluationSummary``: mean, 95% CI, n, errors, delta vs the baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from finetune_trainer.contract import EvaluationSummary, ScoreRecord
from finetune_trainer.evaluate.stats import mean_with_ci


@dataclass
class ScoreTally:
    """The scores and the error count of one (model, grader) pair."""

    values: list[float] = field(default_factory=list)
    errors: int = 0


class ScoreBook:
    """Collects every (model, grader) tally in config order; ``not_graded`` pairs have none by design (the
    baseline's row of a pairwise grader, which compares the others with it)."""

    def __init__(self, models: Sequence[str], graders: Sequence[str], not_graded: set[tuple[str | None, str]] = frozenset()):
        self.models = list(models)
        self.graders = list(graders)
        self.tallies = {(m, g): ScoreTally() for m in self.models for g in self.graders if (m, g) not in not_graded}

    def add_score(self, model: str, grader: str, value: float) -> None:
        self.tallies[(model, grader)].values.append(value)

    def add_error(self, model: str, grader: str) -> None:
        self.tallies[(model, grader)].errors += 1

    def summary(self, samples: int, baseline: str | None, results_uri: str | None) -> EvaluationSummary:
        records: dict[tuple[str, str], ScoreRecord] = {}
        for (model, grader), tally in self.tallies.items():
            stats = mean_with_ci(tally.values)
            records[(model, grader)] = ScoreRecord(
                model=model,
                grader=grader,
                mean=stats.mean,
                ci_low=stats.ci_low,
                ci_high=stats.ci_high,
                n=stats.n,
                errors=tally.errors,
            )
        if baseline is not None:
            for (model, grader), record in records.items():
                base = records[(baseline, grader)].mean if (baseline, grader) in records else None
                if model != baseline and record.mean is not None and base is not None:
                    record.delta = record.mean - base
        notes = []
        for model in self.models:
            failed = [g for g in self.graders if (model, g) in records and records[(model, g)].mean is None]
            if failed:
                notes.append(f"{model}: no successful sample for {', '.join(failed)}")
        return EvaluationSummary(
            scores=list(records.values()),
            baseline=baseline,
            samples=samples,
            results_uri=results_uri,
            message="; ".join(notes) or None,
        )
