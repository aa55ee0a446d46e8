"""Means with bootstrap confidence intervals, the summary they make, and the table people read."""

from __future__ import annotations

import doctest

import pytest

from finetune_trainer.evaluate import table
from finetune_trainer.evaluate.stats import mean_with_ci
from finetune_trainer.evaluate.summary import ScoreBook
from finetune_trainer.evaluate.table import render_summary_table


def test_the_interval_holds_the_mean_narrows_with_more_samples_and_is_reproducible():
    small = mean_with_ci([1.0, 0.0] * 10)
    large = mean_with_ci([1.0, 0.0] * 500)
    assert small.mean == large.mean == 0.5
    assert small.ci_low < 0.5 < small.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low) / 4
    # Normal theory for a proportion: half-width ~ 1.96 * sqrt(p(1-p)/n) = 0.031 at n = 1000.
    assert large.ci_high - large.ci_low == pytest.approx(2 * 1.96 * (0.25 / 1000) ** 0.5, rel=0.1)
    assert mean_with_ci([1.0, 0.0] * 10) == small


def test_no_scores_no_mean_one_score_no_interval():
    assert mean_with_ci([]).mean is None and mean_with_ci([]).ci_low is None and mean_with_ci([]).n == 0
    one = mean_with_ci([0.7])
    assert (one.mean, one.ci_low, one.ci_high, one.n) == (0.7, None, None, 1)
    same = mean_with_ci([0.25] * 5)
    assert same.ci_low == same.ci_high == same.mean == 0.25


def test_summary_deltas_against_the_baseline_and_nothing_invented():
    book = ScoreBook(["base", "tuned", "broken"], ["em"])
    for value in (0.0, 1.0, 0.0, 0.0):
        book.add_score("base", "em", value)
    for value in (1.0, 1.0, 0.0, 1.0):
        book.add_score("tuned", "em", value)
    for _ in range(4):
        book.add_error("broken", "em")
    summary = book.summary(samples=4, baseline="base", results_uri="s3://b/e/results.jsonl")
    base, tuned, broken = summary.scores
    assert (base.mean, base.delta, base.n) == (0.25, None, 4)
    assert (tuned.mean, tuned.delta) == (0.75, 0.5)
    assert (broken.mean, broken.ci_low, broken.delta, broken.n, broken.errors) == (None, None, None, 0, 4)
    assert "broken: no successful sample for em" in summary.message

    text = render_summary_table(summary)
    lines = text.splitlines()
    assert lines[0].split(" | ") == ["model          ", "em"]
    assert lines[2].startswith("base (baseline) | 0.250 [")
    assert lines[3].startswith("tuned           | 0.750 [") and lines[3].endswith("+0.500")
    assert lines[4] == "broken          | n/a (4 errors)"
    assert "4 samples per model" in text


def test_table_docstring_example():
    result = doctest.testmod(table)
    assert result.attempted > 0 and result.failed == 0
