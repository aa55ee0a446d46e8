"""A plain-text table of an ``EvaluationSummary``, for the CLI and the demo. Pure: no I/O, no torch.

>>> from finetune_trainer.contract import EvaluationSummary, ScoreRecord
>>> summary = EvaluationSummary(samples=40, baseline="base", scores=[
...     ScoreRecord(model="base", grader="exact_match", mean=0.25, ci_low=0.125, ci_high=0.4, n=40),
...     ScoreRecord(model="tuned", grader="exact_match", mean=0.5, ci_low=0.35, ci_high=0.65, n=38, errors=2, delta=0.25),
... ])
>>> print(render_summary_table(summary))
model           | exact_match
----------------+---------------------------------------
base (baseline) | 0.250 [0.125, 0.400]
tuned           | 0.500 [0.350, 0.650] +0.250 (2 errors)
<BLANKLINE>
40 samples per model; mean [95% CI]; +/- difference from the baseline.
"""

from __future__ import annotations

from finetune_trainer.contract import EvaluationSummary, ScoreRecord


def format_score(record: ScoreRecord | None, with_ci: bool = True) -> str:
    """One cell: ``0.500 [0.350, 0.650] +0.250 (2 errors)``; ``n/a`` when nothing was scored."""
    if record is None:
        return ""
    if record.mean is None:
        text = "n/a"
    else:
        text = f"{record.mean:.3f}"
        if with_ci and record.ci_low is not None and record.ci_high is not None:
            text += f" [{record.ci_low:.3f}, {record.ci_high:.3f}]"
        if record.delta is not None:
            text += f" {record.delta:+.3f}"
    if record.errors:
        text += f" ({record.errors} error{'s' if record.errors != 1 else ''})"
    return text


def render_summary_table(summary: EvaluationSummary, with_ci: bool = True) -> str:
    """``model | <grader> | ...``, one row per model (baseline marked), in the order the summary lists them."""
    models: list[str] = []
    graders: list[str] = []
    cells: dict[tuple[str, str], ScoreRecord] = {}
    for record in summary.scores:
        if record.model not in models:
            models.append(record.model)
        if record.grader not in graders:
            graders.append(record.grader)
        cells[(record.model, record.grader)] = record
    rows = [["model", *graders]]
    for model in models:
        label = f"{model} (baseline)" if model == summary.baseline else model
        rows.append([label, *(format_score(cells.get((model, g)), with_ci) for g in graders)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    out = [line(rows[0]), "-+-".join("-" * w for w in widths)]
    out += [line(row) for row in rows[1:]]
    legend = f"{summary.samples} samples per model; mean"
    legend += " [95% CI]" if with_ci else ""
    legend += "; +/- difference from the baseline." if summary.baseline else "."
    out += ["", legend]
    if summary.message:
        out.append(summary.message)
    return "\n".join(out)
