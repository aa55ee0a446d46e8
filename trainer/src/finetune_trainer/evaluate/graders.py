"""Graders: each scores an answer in [0, 1] against the turn's acceptable answers, or reports a per-sample error.

A grader is built from a ``GraderSpec`` and grades a batch of answers at once (the embedding model
and the judge work faster in batches). Where a turn has several acceptable answers, a grader keeps
the best score over them, as the SQuAD evaluation does.

| type | score |
|---|---|
| exact_match | 1 if the SQuAD-normalised answer equals a normalised reference, else 0 |
| f1 | SQuAD token F1 between answer and reference (thresholded to 0/1 when ``threshold`` is set) |
| contains | 1 if a reference occurs in the answer: as whole words after SQuAD normalisation, or, with ``caseSensitive``, as a raw substring |
| regex | 1 if ``pattern`` matches somewhere in the answer (``re.search``; case-insensitive unless ``caseSensitive``) |
| semantic_similarity | cosine similarity of sentence embeddings, clipped to [0, 1] (thresholded when ``threshold`` is set) |
| llm_judge | a judge model's ``SCORE: <n>`` for a rubric, mapped from [scoreMin, scoreMax] to [0, 1] (see ``judge.py``) |
| pairwise | a judge model's verdict between the answer and the baseline's, asked in both orders: 1 win, 0.5 tie, 0 loss (see ``pairwise.py``) |

``normalize_answer``, ``f1_score`` and ``exact_match_score`` follow the official SQuAD v1.1 evaluation
script exactly (including its quirk that two answers normalising to nothing match exactly with F1 0).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from finetune_trainer.contract import GenerationSettings, GraderSpec
from finetune_trainer.evaluate.errors import BadInput, SampleError
from finetune_trainer.evaluate.samples import EvalTurn

if TYPE_CHECKING:
    from finetune_trainer.storage import ObjectStore

GRADER_TYPES = ("exact_match", "f1", "contains", "regex", "semantic_similarity", "llm_judge", "pairwise")
JUDGED_TYPES = ("llm_judge", "pairwise")
THRESHOLDED_TYPES = ("f1", "semantic_similarity", "llm_judge")

Score = float | SampleError


# ----------------------------------------------------------------------------------------------
# SQuAD v1.1 normalisation and metrics


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text: str) -> str:
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (0 when no token is shared)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def best_over_references(metric: Callable[[str, str], float], prediction: str, references: Sequence[str]) -> float:
    """The best score of ``prediction`` against any acceptable answer (SQuAD's metric_max_over_ground_truths)."""
    return max(metric(prediction, reference) for reference in references)


def contains_score(answer: str, reference: str, case_sensitive: bool) -> float:
    """1.0 when ``reference`` occurs in ``answer``.

    Case-sensitive: a raw substring test. Otherwise both are SQuAD-normalised and the reference must
    occur as whole words (so "cat" is not found in "concatenate"); a reference that normalises to
    nothing is found only in an answer that normalises to nothing.
    """
    if case_sensitive:
        return float(reference in answer)
    ref, ans = normalize_answer(reference), normalize_answer(answer)
    if not ref:
        return float(not ans)
    return float(f" {ref} " in f" {ans} ")


# ----------------------------------------------------------------------------------------------
# Graders


@dataclass(frozen=True)
class GradeItem:
    """An answer to grade, with the turn it answers."""

    turn: EvalTurn
    response: str
    baseline: str | None = None
    """The baseline model's answer to the same turn (for a pairwise grader; None when it has none)."""


class Grader(Protocol):
    name: str
    """A grader with ``pairwise = True`` compares each answer with the baseline's (``GradeItem.baseline``)."""

    def grade(self, items: Sequence[GradeItem]) -> list[Score]:
        """One score in [0, 1] or one ``SampleError`` per item, in order."""
        ...


def apply_threshold(score: float, threshold: float | None) -> float:
    return score if threshold is None else float(score >= threshold)


@dataclass
class ReferenceMetricGrader:
    """exact_match, f1 and contains: a pure function of (answer, reference), best over the references."""

    name: str
    metric: Callable[[str, str], float]
    threshold: float | None = None

    def grade(self, items: Sequence[GradeItem]) -> list[Score]:
        return [apply_threshold(best_over_references(self.metric, item.response, item.turn.references), self.threshold) for item in items]


@dataclass
class RegexGrader:
    """1.0 when the compiled pattern is found in the answer."""

    name: str
    pattern: re.Pattern[str]

    def grade(self, items: Sequence[GradeItem]) -> list[Score]:
        return [float(self.pattern.search(item.response) is not None) for item in items]


class SemanticSimilarityGrader:
    """Cosine similarity between the answer's and the references' sentence embeddings."""

    def __init__(self, name: str, embedder, threshold: float | None = None):
        self.name = name
        self.embedder = embedder
        self.threshold = threshold

    def grade(self, items: Sequence[GradeItem]) -> list[Score]:
        texts: dict[str, int] = {}
        for item in items:
            for text in (item.response, *item.turn.references):
                texts.setdefault(text, len(texts))
        if not texts:
            return []
        try:
            vectors = self.embedder.encode(list(texts))
        except Exception as e:  # a failed batch is counted per sample, not a crash
            return [SampleError("GraderFailed", f"embedding failed: {e}") for _ in items]
        scores: list[Score] = []
        for item in items:
            answer = vectors[texts[item.response]]
            best = max(float(answer @ vectors[texts[ref]]) for ref in item.turn.references)
            scores.append(apply_threshold(min(1.0, max(0.0, best)), self.threshold))
        return scores


# ----------------------------------------------------------------------------------------------
# Building graders from specs


def compile_pattern(spec: GraderSpec) -> re.Pattern[str]:
    if not spec.pattern:
        raise BadInput("InvalidRegex", f"grader {spec.name!r}: a regex grader needs a pattern")
    try:
        return re.compile(spec.pattern, 0 if spec.case_sensitive else re.IGNORECASE)
    except re.error as e:
        raise BadInput("InvalidRegex", f"grader {spec.name!r}: pattern {spec.pattern!r} does not compile: {e}") from None


def check_grader_specs(specs: Sequence[GraderSpec]) -> None:
    """Reject what cannot be graded before any model is contacted (raises ``BadInput``)."""
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise BadInput("DuplicateGrader", f"two graders are named {spec.name!r}; names must be unique")
        seen.add(spec.name)
        if spec.threshold is not None:
            if spec.type not in THRESHOLDED_TYPES:
                raise BadInput("InvalidGrader", f"grader {spec.name!r}: threshold applies only to {', '.join(THRESHOLDED_TYPES)}")
            if not 0.0 <= spec.threshold <= 1.0:
                raise BadInput("InvalidGrader", f"grader {spec.name!r}: threshold must be within [0, 1], got {spec.threshold}")
        if spec.type == "regex":
            compile_pattern(spec)
        if spec.type in JUDGED_TYPES:
            judge = spec.judge
            if judge is None or not judge.endpoint or not judge.model:
                raise BadInput("InvalidGrader", f"grader {spec.name!r}: {spec.type} needs judge.endpoint and judge.model")
        if spec.type == "llm_judge":
            if not spec.score_max > spec.score_min:
                raise BadInput("InvalidGrader", f"grader {spec.name!r}: scoreMax ({spec.score_max}) must be greater than scoreMin ({spec.score_min})")


def build_graders(
    specs: Sequence[GraderSpec],
    settings: GenerationSettings,
    store: ObjectStore,
    workdir: Path,
    allow_private_urls: bool = False,
) -> list[Grader]:
    """Graders ready to grade, in spec order (loads the embedding model once if a grader needs it);
    ``allow_private_urls``: the admin's setting for a judge's URL (``finetune_trainer.outbound``)."""
    check_grader_specs(specs)
    graders: list[Grader] = []
    embedders: dict[str | None, object] = {}
    for spec in specs:
        if spec.type == "exact_match":
            graders.append(ReferenceMetricGrader(spec.name, exact_match_score))
        elif spec.type == "f1":
            graders.append(ReferenceMetricGrader(spec.name, f1_score, spec.threshold))
        elif spec.type == "contains":
            case_sensitive = spec.case_sensitive
            graders.append(ReferenceMetricGrader(spec.name, lambda a, r, cs=case_sensitive: contains_score(a, r, cs)))
        elif spec.type == "regex":
            graders.append(RegexGrader(spec.name, compile_pattern(spec)))
        elif spec.type == "semantic_similarity":
            if spec.embedding_model not in embedders:
                from finetune_trainer.evaluate.embeddings import load_sentence_embedder

                embedders[spec.embedding_model] = load_sentence_embedder(spec.embedding_model, store, workdir)
            graders.append(SemanticSimilarityGrader(spec.name, embedders[spec.embedding_model], spec.threshold))
        elif spec.type == "llm_judge":
            from finetune_trainer.evaluate.judge import LlmJudgeGrader

            graders.append(LlmJudgeGrader.from_spec(spec, concurrency=settings.concurrency, allow_private_urls=allow_private_urls))
        elif spec.type == "pairwise":
            from finetune_trainer.evaluate.pairwise import PairwiseGrader

            graders.append(PairwiseGrader.from_spec(spec, concurrency=settings.concurrency, allow_private_urls=allow_private_urls))
        else:  # unreachable: the config model admits only GRADER_TYPES
            raise BadInput("UnknownGrader", f"grader {spec.name!r}: unknown type {spec.type!r}")
    return graders
