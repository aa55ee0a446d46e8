"""SVG drawn on the server, so the console needs no charting library: the learning curve of a job (train loss
per logged step, validation loss where it was computed) and the interval bars of an evaluation's scores.

Each train point is a ``<circle class="train-point" data-step="N">`` and each validation point a
``<circle class="eval-point">``: the page shows exactly the steps in the trainer's metrics.jsonl.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    out = []
    value = start
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            out.append(round(value, 10))
        value += step
    return out


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def loss_chart(points: Sequence[Any], total_steps: int | None = None) -> str:
    """``points`` are StepMetrics (step, train_loss, eval_loss). The x axis runs to ``total_steps`` when known,
    so a running job's curve grows into its frame."""
    train = [(p.step, p.train_loss) for p in points if p.train_loss is not None and math.isfinite(p.train_loss)]
    evals = [(p.step, p.eval_loss) for p in points if p.eval_loss is not None and math.isfinite(p.eval_loss)]
    if not train and not evals:
        return '<p class="muted" id="loss-chart-empty">No step has been logged yet.</p>'
    values = [v for _, v in train + evals]
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.05
    low, high = max(0.0, low - pad), high + pad
    x_max = max([total_steps or 0] + [s for s, _ in train + evals] + [1])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(step: float) -> float:
        return LEFT + plot_w * step / x_max

    def y(value: float) -> float:
        return TOP + plot_h * (1 - (value - low) / (high - low))

    parts = [f'<svg id="loss-chart" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="training and validation loss per step">']
    for tick in _ticks(low, high):
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')
    for tick in _ticks(0, x_max, 8):
        if tick == int(tick):
            parts.append(f'<text class="tick" x="{x(tick):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{int(tick)}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}"/>')
    parts.append(f'<text class="label" x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle">step</text>')
    parts.append(f'<text class="label" transform="translate(14 {TOP + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle">loss</text>')
    if train:
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in train)
        parts.append(f'<polyline class="train-line" points="{path}"/>')
        radius = 2.5 if len(train) <= 200 else 1.2
        for s, v in train:
            parts.append(f'<circle class="train-point" data-step="{s}" data-loss="{v:.6g}" cx="{x(s):.1f}" cy="{y(v):.1f}" r="{radius}">'
                         f"<title>step {s}: train loss {v:.4f}</title></circle>")  # fmt: skip
    if evals:
        if len(evals) > 1:
            path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in evals)
            parts.append(f'<polyline class="eval-line" points="{path}"/>')
        for s, v in evals:
            parts.append(f'<circle class="eval-point" data-step="{s}" data-loss="{v:.6g}" cx="{x(s):.1f}" cy="{y(v):.1f}" r="4">'
                         f"<title>step {s}: validation loss {v:.4f}</title></circle>")  # fmt: skip
    legend_x = WIDTH - RIGHT - 190
    parts.append(f'<g class="legend"><line class="train-line" x1="{legend_x}" x2="{legend_x + 22}" y1="{TOP + 10}" y2="{TOP + 10}"/>'
                 f'<text x="{legend_x + 28}" y="{TOP + 14}">train loss</text>'
                 f'<circle class="eval-point" cx="{legend_x + 111}" cy="{TOP + 10}" r="4"/>'
                 f'<text x="{legend_x + 120}" y="{TOP + 14}">eval loss</text></g>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def interval_bar(mean: float | None, low: float | None, high: float | None, baseline: float | None = None) -> str:
    """A small [0, 1] scale with the 95% interval as a bar, the mean as a dot and the baseline's mean as a tick."""
    if mean is None:
        return ""
    w, h = 120, 14

    def x(v: float) -> float:
        return 2 + (w - 4) * max(0.0, min(1.0, v))

    parts = [f'<svg class="interval" viewBox="0 0 {w} {h}" width="{w}" height="{h}" aria-hidden="true">',
             f'<line class="scale" x1="2" x2="{w - 2}" y1="{h / 2}" y2="{h / 2}"/>']  # fmt: skip
    if low is not None and high is not None:
        parts.append(f'<rect class="ci" x="{x(low):.1f}" y="3" width="{max(1.5, x(high) - x(low)):.1f}" height="{h - 6}"/>')
    if baseline is not None:
        parts.append(f'<line class="base" x1="{x(baseline):.1f}" x2="{x(baseline):.1f}" y1="1" y2="{h - 1}"/>')
    parts.append(f'<circle class="mean" cx="{x(mean):.1f}" cy="{h / 2}" r="3"/></svg>')
    return "".join(parts)


def escape_attr(value: Any) -> str:
    return escape(str(value), quote=True)
