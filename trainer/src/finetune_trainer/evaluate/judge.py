"""The llm_judge grader: a rubric prompt to a judge model behind an OpenAI-compatible endpoint.

The judge must end its reply with a line ``SCORE: <n>``, ``n`` a number within the grader's
[scoreMin, scoreMax]; the score is ``(n - scoreMin) / (scoreMax - scoreMin)``. The parse is strict:
an empty reply, a reply whose last non-empty line is anything else, or a number out of range is a
per-sample error (JudgeUnparseable, JudgeOutOfRange), as is a judge that cannot be reached
(JudgeUnreachable) or answers with an HTTP error (JudgeFailed). None of them is ever a score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from finetune_trainer.contract import EvalModel, GraderSpec
from finetune_trainer.evaluate.endpoints import openai_client, request_error
from finetune_trainer.evaluate.errors import SampleError
from finetune_trainer.evaluate.graders import GradeItem, Score, apply_threshold

SCORE_LINE = re.compile(r"SCORE:\s*([+-]?\d+(?:\.\d+)?)")
QUESTION_CHARS = 6000

DEFAULT_RUBRIC = (
    "Judge whether the answer is correct and complete given the question and the reference answer. "
    "The lowest score means wrong or no answer; the highest means fully correct."
)

SYSTEM_PROMPT = (
    "You grade answers to questions.\n\n"
    "Rubric: {rubric}\n\n"
    "Scores range from {low:g} (worst) to {high:g} (best). You may explain briefly. "
    "The last line of your reply must be exactly `SCORE: <n>`, with <n> a number from {low:g} to {high:g}."
)

USER_PROMPT = "Question:\n{question}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{response}"


def last_line_match(reply: str | None, pattern: re.Pattern[str], shape: str) -> re.Match[str] | SampleError:
    """The judge's verdict line: its reply's last non-empty line matched whole by ``pattern``, or the
    SampleError (JudgeUnparseable) that names the ``shape`` it should have had."""
    lines = [line.strip() for line in (reply or "").splitlines() if line.strip()]
    if not lines:
        return SampleError("JudgeUnparseable", "the judge's reply is empty")
    match = pattern.fullmatch(lines[-1])
    if match is None:
        return SampleError("JudgeUnparseable", f"the judge's last line is not '{shape}': {lines[-1][:120]!r}")
    return match


def parse_judge_score(reply: str | None, score_min: float, score_max: float) -> Score:
    """The normalised score of a judge's reply, or the SampleError that says why there is none."""
    match = last_line_match(reply, SCORE_LINE, "SCORE: <n>")
    if isinstance(match, SampleError):
        return match
    value = float(match.group(1))
    if not score_min <= value <= score_max:
        return SampleError("JudgeOutOfRange", f"the judge's score {value:g} is outside [{score_min:g}, {score_max:g}]")
    return (value - score_min) / (score_max - score_min)


def judge_question(item: GradeItem) -> str:
    """The question as the judge sees it: the conversation so far (chat) or the prompt."""
    turn = item.turn
    if turn.messages is not None:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in turn.messages)
    else:
        text = turn.prompt or ""
    return text if len(text) <= QUESTION_CHARS else "…" + text[-QUESTION_CHARS:]


class LlmJudgeGrader:
    def __init__(
        self,
        name: str,
        judge: EvalModel,
        rubric: str,
        score_min: float,
        score_max: float,
        threshold: float | None = None,
        concurrency: int = 4,
        max_tokens: int = 512,
        allow_private_urls: bool = False,
    ):
        self.name = name
        self.judge = judge
        self.rubric = rubric
        self.score_min = score_min
        self.score_max = score_max
        self.threshold = threshold
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self._client = openai_client(judge, allow_private_urls)

    @classmethod
    def from_spec(cls, spec: GraderSpec, concurrency: int = 4, allow_private_urls: bool = False) -> LlmJudgeGrader:
        assert spec.judge is not None  # checked by check_grader_specs
        return cls(
            spec.name,
            spec.judge,
            spec.rubric or DEFAULT_RUBRIC,
            spec.score_min,
            spec.score_max,
            spec.threshold,
            concurrency,
            spec.max_tokens,
            allow_private_urls,
        )

    def messages(self, item: GradeItem) -> list[dict[str, str]]:
        reference = item.turn.references[0]
        if len(item.turn.references) > 1:
            reference += "\n(also acceptable: " + " | ".join(item.turn.references[1:]) + ")"
        return [
            {"role": "system", "content": SYSTEM_PROMPT.format(rubric=self.rubric, low=self.score_min, high=self.score_max)},
            {"role": "user", "content": USER_PROMPT.format(question=judge_question(item), reference=reference, response=item.response)},
        ]

    def grade_one(self, item: GradeItem) -> Score:
        try:
            completion = self._client.chat.completions.create(
                model=self.judge.model,
                messages=self.messages(item),
                temperature=0.0,
                max_tokens=self.max_tokens,
            )
        except Exception as e:
            return request_error(e, "JudgeUnreachable", "JudgeFailed")
        choices = getattr(completion, "choices", None) or []
        reply = choices[0].message.content if choices and choices[0].message is not None else None
        score = parse_judge_score(reply, self.score_min, self.score_max)
        return score if isinstance(score, SampleError) else apply_threshold(score, self.threshold)

    def grade(self, items: Sequence[GradeItem]) -> list[Score]:
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(self.grade_one, items))
