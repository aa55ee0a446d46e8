"""Means with 95% confidence intervals, by the percentile bootstrap with a fixed seed.

The interval is the 2.5th and 97.5th percentile of the means of ``resamples`` resamples (with
replacement) of the scores. The seed is fixed, so the same scores always give the same interval.
No scores: no mean and no interval. One score: its value and no interval (one sample says nothing
about spread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
_CHUNK_CELLS = 2_000_000
"""Resampled values drawn at once (bounds memory for large evaluations)."""


@dataclass(frozen=True)
class MeanWithCI:
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


def mean_with_ci(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> MeanWithCI:
    """The mean of ``values`` and its percentile-bootstrap confidence interval."""
    import numpy as np

    n = len(values)
    if n == 0:
        return MeanWithCI(None, None, None, 0)
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if n == 1:
        return MeanWithCI(mean, None, None, 1)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    per_chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        means[start : start + count] = data[rng.integers(0, n, size=(count, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    # Rounding noise must not put the interval outside the observed range, nor the mean outside it.
    low = min(float(low), mean)
    high = max(float(high), mean)
    return MeanWithCI(mean, low, high, n)
