"""The pairwise grader: a judge model picks the better of a model's answer and the baseline's, asked twice.

For each graded turn the judge (any OpenAI-compatible endpoint) sees the conversation and two answers, A and
B, and ends its reply with the line ``VERDICT: A``, ``VERDICT: B`` or ``VERDICT: TIE``. It is asked twice:
with the model's answer as A and the baseline's as B, then with the two swapped. Each reply gives the model
1 (its answer won), 0.5 (a tie) or 0; the turn's score is the mean of the two. A judge that always prefers
the answer shown first (or second) so scores every model 0.5: the order bias cancels, and only a preference
that survives the swap counts. The mean over the turns is the model's win rate against the baseline, ties
counting half; 0.5 is a draw.

The parse is as strict as the llm_judge grader's: a reply whose last non-empty line is not a verdict is a
per-sample error (JudgeUnparseable), as is a judge that cannot be reached (JudgeUnreachable) or answers with
an HTTP error (JudgeFailed); a turn the baseline could not answer is NoBaselineAnswer. None is ever a score.
The baseline's own row has no pairwise score: it is what the others are compared with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from finetune_trainer.contract import EvalModel, GraderSpec
from finetune_trainer.evaluate.endpoints import openai_client, request_error
from finetune_trainer.evaluate.errors import SampleError
from finetune_trainer.evaluate.graders import GradeItem, Score
from finetune_trainer.evaluate.judge import judge_question, last_line_match

VERDICT_LINE = re.compile(r"VERDICT:\s*(A|B|TIE)")

DEFAULT_CRITERIA = "It is more helpful and correct, and follows the instructions of the conversation more closely."

SYSTEM_PROMPT = (
    "You compare two answers to the same conversation and decide which one is better.\n\n"
    "What makes an answer better: {criteria}\n\n"
    "Judge the answers' content, not their order or their length. You may explain briefly. The last line of your "
    "reply must be exactly `VERDICT: A`, `VERDICT: B` or `VERDICT: TIE`."
)

USER_PROMPT = "Conversation:\n{question}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}"


def parse_verdict(reply: str | None) -> str | SampleError:
    """``A``, ``B`` or ``TIE`` from a judge's reply, or the SampleError that says why there is none."""
    match = last_line_match(reply, VERDICT_LINE, "VERDICT: A|B|TIE")
    return match if isinstance(match, SampleError) else match.group(1)


def win_score(first: str, second: str) -> float:
    """The model's score from the two verdicts: ``first`` with its answer as A, ``second`` with it as B.

    >>> win_score("A", "B"), win_score("A", "A"), win_score("TIE", "B"), win_score("B", "A")
    (1.0, 0.5, 0.75, 0.0)
    """
    points = {"A": 1.0, "TIE": 0.5, "B": 0.0}
    return (points[first] + 1.0 - points[second]) / 2


class PairwiseGrader:
    """Grades ``GradeItem``s whose ``baseline`` holds the baseline model's answer to the same turn."""

    pairwise = True
    """Graded against the baseline's answers: the run answers with the baseline first and skips its own row."""

    def __init__(self, name: str, judge: EvalModel, criteria: str, concurrency: int = 4, max_tokens: int = 512, allow_private_urls: bool = False):
        self.name = name
        self.judge = judge
        self.criteria = criteria
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self._client = openai_client(judge, allow_private_urls)  # a tenant's URL: the judge's fetch rules

    @classmethod
    def from_spec(cls, spec: GraderSpec, concurrency: int = 4, allow_private_urls: bool = False) -> PairwiseGrader:
        assert spec.judge is not None  # checked by check_grader_specs
        return cls(spec.name, spec.judge, spec.rubric or DEFAULT_CRITERIA, concurrency, spec.max_tokens, allow_private_urls)

    def messages(self, item: GradeItem, a: str, b: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT.format(criteria=self.criteria)},
            {"role": "user", "content": USER_PROMPT.format(question=judge_question(item), a=a, b=b)},
        ]

    def verdict(self, item: GradeItem, a: str, b: str) -> str | SampleError:
        try:
            completion = self._client.chat.completions.create(
                model=self.judge.model, messages=self.messages(item, a, b), temperature=0.0, max_tokens=self.max_tokens
            )
        except Exception as e:
            return request_error(e, "JudgeUnreachable", "JudgeFailed")
        choices = getattr(completion, "choices", None) or []
        return parse_verdict(choices[0].message.content if choices and choices[0].message is not None else None)

    def grade_one(self, item: GradeItem) -> Score:
        if item.baseline is None:
            return SampleError("NoBaselineAnswer", "the baseline model has no answer to this turn to compare with")
        first = self.verdict(item, item.response, item.baseline)
        if isinstance(first, SampleError):
            return first
        second = self.verdict(item, item.baseline, item.response)
        return second if isinstance(second, SampleError) else win_score(first, second)

    def grade(self, items: Sequence[GradeItem]) -> list[Score]:
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(self.grade_one, items))
