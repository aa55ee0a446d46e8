"""exact_match and f1 score exactly as the official SQuAD v1.1 evaluation script does."""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest

from finetune_trainer.evaluate.graders import (
    GradeItem,
    ReferenceMetricGrader,
    best_over_references,
    exact_match_score,
    f1_score,
    normalize_answer,
)
from finetune_trainer.evaluate.samples import EvalTurn

# ---- The oracle: functions of the official SQuAD v1.1 evaluate script (evaluate-v1.1.py), verbatim. ----


def squad_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def squad_f1_score(prediction, ground_truth):
    prediction_tokens = squad_normalize_answer(prediction).split()
    ground_truth_tokens = squad_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def squad_exact_match_score(prediction, ground_truth):
    return (squad_normalize_answer(prediction) == squad_normalize_answer(ground_truth))


def squad_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


# ---- Cases ----

WORDS = ["the", "The", "a", "An", "an", "cat", "Cat", "sat", "on", "mat", "Paris", "paris", "1,000", "U.S.", "it's",
         "theory", "anthem", "café", "naïve", "A.", "(the)", "well-known", "x", "42", "Ünïcode", "THE"]
SEPARATORS = [" ", "  ", "\t", "\n", ", ", ". ", "!", " - ", ""]


def random_answer(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(0, 6))]
    text = ""
    for word in words:
        text += word + rng.choice(SEPARATORS)
    if rng.random() < 0.3:
        text = rng.choice(["", " ", "?", "\"", "'"]) + text + rng.choice(["", ".", "!?", " "])
    return text


def generated_cases(count: int, seed: int = 1234) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        prediction = random_answer(rng)
        references = [random_answer(rng) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:  # near misses: a reference that is the prediction with case, articles or punctuation changed
            references.append(rng.choice([prediction.upper(), "The " + prediction + ".", prediction.replace(" ", "  ")]))
        cases.append((prediction, references))
    return cases


def test_normalisation_matches_squad_on_generated_text():
    for prediction, references in generated_cases(2000):
        for text in (prediction, *references):
            assert normalize_answer(text) == squad_normalize_answer(text), text


def test_exact_match_and_f1_match_squad_on_generated_cases():
    cases = generated_cases(3000)
    for prediction, references in cases:
        em = best_over_references(exact_match_score, prediction, references)
        f1 = best_over_references(f1_score, prediction, references)
        assert em == float(squad_metric_max_over_ground_truths(squad_exact_match_score, prediction, references)), (prediction, references)
        assert f1 == pytest.approx(squad_metric_max_over_ground_truths(squad_f1_score, prediction, references), abs=1e-12), (prediction, references)
    # The cases are not trivial: they hold exact matches, partial overlaps and misses alike.
    f1s = [best_over_references(f1_score, p, r) for p, r in cases]
    assert any(v == 1.0 for v in f1s) and any(v == 0.0 for v in f1s) and any(0.0 < v < 1.0 for v in f1s)


@pytest.mark.parametrize(
    ("prediction", "reference", "em", "f1"),
    [
        ("Paris", "paris", 1.0, 1.0),
        ("The Eiffel Tower.", "eiffel tower", 1.0, 1.0),
        ("an apple", "A   apple!", 1.0, 1.0),
        ("the cat sat", "cat sat on the mat", 0.0, 2 * (2 / 2) * (2 / 4) / ((2 / 2) + (2 / 4))),  # P=1, R=1/2: 2/3
        ("Denver Broncos", "Broncos", 0.0, 2 / 3),
        ("1,000 years", "1000 years", 1.0, 1.0),  # punctuation is removed, not split on
        ("", "Paris", 0.0, 0.0),  # an empty answer is graded as such: no match
        ("the", "a", 1.0, 0.0),  # both normalise to nothing: an exact match with F1 0, as the official script has it
        ("theory", "the ory", 0.0, 0.0),  # articles only as whole words
    ],
)
def test_known_values(prediction, reference, em, f1):
    assert exact_match_score(prediction, reference) == em == float(squad_exact_match_score(prediction, reference))
    assert f1_score(prediction, reference) == pytest.approx(f1)
    assert f1_score(prediction, reference) == pytest.approx(squad_f1_score(prediction, reference))


def test_graders_take_the_best_reference_like_squad():
    turn = EvalTurn(example=0, turn=0, prompt="Who wrote Hamlet?", references=("Shakespeare", "William Shakespeare"))
    item = GradeItem(turn, "william shakespeare")
    assert ReferenceMetricGrader("em", exact_match_score).grade([item]) == [1.0]
    partial = GradeItem(turn, "Shakespeare, probably")
    assert ReferenceMetricGrader("f1", f1_score).grade([partial]) == [pytest.approx(2 / 3)]
    assert ReferenceMetricGrader("f1", f1_score, threshold=0.5).grade([partial]) == [1.0]
    assert ReferenceMetricGrader("f1", f1_score, threshold=0.7).grade([partial]) == [0.0]
