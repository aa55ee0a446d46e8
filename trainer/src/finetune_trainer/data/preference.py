"""Preference pairs for DPO: tokenized with the chat template, batched as whole pairs.

A pair is a conversation and two answers to it. Each answer becomes one sequence, the conversation rendered
with the chat template followed by the answer, whose answer tokens (and the template's end-of-turn after
them) carry labels; the conversation's tokens carry none. The two sequences of a pair always travel together:
a pair is one unit of the ``BatchPlan`` (its length is both sequences'), so packing lays whole pairs end to
end in rows of up to ``2 x maxSeqLength`` tokens, each sequence with its own position ids from 0 (no
attention between sequences), and every step sees complete pairs.

With ``share_prompt`` (where the attention knows it: ``train/attention.py``'s ``packed_sdpa``) a pair's
conversation runs once, not once per answer: the non-preferred sequence is laid out only from where it
parts from the preferred one (its *branch*), with position ids that go on from the shared tokens', and its
tokens attend to the preferred sequence's first tokens as to their own (``branch_point`` says how many).
The shared positions predict no token of the non-preferred answer, so the per-sequence log-probabilities are
the same as with the two sequences laid out whole (``tests/trainer`` checks it), at fewer tokens a pair: on
short answers to a long conversation, nearly half.

A batch also says which sequence each labelled position belongs to (``sequence_ids``: ``2k`` for the
preferred answer of the batch's ``k``-th pair, ``2k + 1`` for its non-preferred one), so the model's
per-token log-probabilities are summed per sequence in one ``index_add``, and which pairs it holds
(``pairs``, indices into the plan's list), where the reference log-probabilities are looked up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune_trainer.data.chat import ChatFormatter
from finetune_trainer.data.formats import DatasetError, Message, RawExample, read_examples
from finetune_trainer.data.loader import BatchPlan, DatasetStats
from finetune_trainer.data.masking import IGNORE_INDEX, TokenizedExample, truncate
from finetune_trainer.data.packing import collate_rows


@dataclass
class PreferencePair:
    """The two sequences of a pair: conversation + preferred answer, conversation + non-preferred answer."""

    preferred: TokenizedExample
    non_preferred: TokenizedExample
    shared: int = 0  # leading tokens of non_preferred laid out once, in preferred (0: both whole)

    def __len__(self) -> int:
        return len(self.preferred) + len(self.non_preferred) - self.shared

    @property
    def branch(self) -> TokenizedExample:
        """What of the non-preferred sequence is laid out: its tokens from the branch point on."""
        if not self.shared:
            return self.non_preferred
        return TokenizedExample(self.non_preferred.input_ids[self.shared :], self.non_preferred.labels[self.shared :])

    @property
    def truncated(self) -> bool:
        return self.preferred.truncated or self.non_preferred.truncated


class PairTokenizer:
    """Turns a preference ``RawExample`` into a ``PreferencePair`` with the base model's chat template."""

    def __init__(self, tokenizer: Any, max_seq_length: int, chat_template: str | None = None, share_prompt: bool = False):
        self.formatter = ChatFormatter(tokenizer, chat_template)
        self.max_seq_length = max_seq_length
        self.share_prompt = share_prompt

    def __call__(self, raw: RawExample) -> PreferencePair:
        if raw.kind != "preference":
            raise DatasetError(
                raw.source, raw.line, f"objective dpo trains on preference pairs (preferred_output, non_preferred_output); this is {raw.kind} data"
            )
        preferred, non_preferred = self._sequence(raw.messages, raw.preferred), self._sequence(raw.messages, raw.non_preferred)
        return PreferencePair(preferred, non_preferred, branch_point(preferred, non_preferred) if self.share_prompt else 0)

    def _sequence(self, conversation: list[Message], answer: str) -> TokenizedExample:
        ids, spans = self.formatter.tokenize([*conversation, Message(role="assistant", content=answer)])
        last = spans[-1]  # the answer's; earlier assistant turns are context, not trained
        labels = [IGNORE_INDEX] * len(ids)
        labels[last.start : last.end] = ids[last.start : last.end]
        return truncate(TokenizedExample(ids, labels), self.max_seq_length)


def branch_point(first: TokenizedExample, second: TokenizedExample) -> int:
    """How many leading tokens ``second`` can share with ``first``: tokens both have, whose positions predict
    no labelled token of ``second`` (what they predict of ``first`` is ``first``'s own), and at least two
    fewer than ``first`` has, so the branch's positions never go on from ``first``'s last one.

    >>> a = TokenizedExample([1, 2, 3, 4, 5], [-100, -100, -100, 4, 5])
    >>> branch_point(a, TokenizedExample([1, 2, 3, 9], [-100, -100, -100, 9]))
    2
    >>> branch_point(a, TokenizedExample([1, 2, 7, 9], [-100, 2, 7, 9]))
    0
    """
    same = 0
    for x, y in zip(first.input_ids, second.input_ids):
        if x != y:
            break
        same += 1
    first_label = next((i for i, t in enumerate(second.labels) if t != IGNORE_INDEX), len(second))
    return max(0, min(same, first_label - 1, len(first) - 2))


def load_pairs(files: Iterable[tuple[Path, str]], tokenize: PairTokenizer) -> tuple[list[PreferencePair], DatasetStats]:
    """Tokenize every pair of ``(local path, URI)`` files; drop (and count) a pair with an answer left empty by
    truncation (its conversation alone fills maxSeqLength)."""
    pairs: list[PreferencePair] = []
    stats = DatasetStats()
    for path, uri in files:
        for raw in read_examples(path, uri):
            pair = tokenize(raw)
            stats.kinds[raw.kind] = stats.kinds.get(raw.kind, 0) + 1
            stats.truncated += pair.truncated
            if pair.preferred.num_label_tokens == 0 or pair.non_preferred.num_label_tokens == 0:
                stats.dropped += 1
                continue
            pairs.append(pair)
            stats.tokens += len(pair)
            stats.label_tokens += pair.preferred.num_label_tokens + pair.non_preferred.num_label_tokens
    stats.examples = len(pairs)
    return pairs, stats


@dataclass
class PairBatch:
    """Tensors for one micro-batch of whole pairs.

    ``sequence_ids[r, i]`` is the sequence whose token ``targets[r, i]`` is (-1 where there is no target);
    ``answer_tokens`` counts the labelled tokens of each sequence; ``pairs`` are the pairs' indices in the plan.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    sequence_ids: torch.Tensor
    answer_tokens: torch.Tensor
    pairs: list[int]
    num_tokens: int
    num_padding: int
    num_label_tokens: int

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @property
    def loss_units(self) -> int:
        """What the DPO loss is a mean over: pairs."""
        return len(self.pairs)

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(
            self.input_ids.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.targets.to(device, non_blocking=True),
            self.sequence_ids.to(device, non_blocking=True),
            self.answer_tokens.to(device, non_blocking=True),
            self.pairs,
            self.num_tokens,
            self.num_padding,
            self.num_label_tokens,
        )


def collate_pairs(rows: Sequence[Sequence[int]], pairs: Sequence[PreferencePair], pad_token_id: int) -> PairBatch:
    """A batch of the pairs at the indices of ``rows`` (a row: the pairs laid end to end in it)."""
    batch = collate_rows([[s for i in row for s in (pairs[i].preferred, pairs[i].branch)] for row in rows], pad_token_id)
    sequence_ids = torch.full_like(batch.targets, -1)
    order: list[int] = []
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            k = len(order)
            for j, sequence in enumerate((pairs[i].preferred, pairs[i].branch)):
                sequence_ids[r, offset : offset + len(sequence)] = 2 * k + j
                if j:  # the branch's positions go on from the tokens it shares with the preferred sequence
                    batch.position_ids[r, offset : offset + len(sequence)] += pairs[i].shared
                offset += len(sequence)
            order.append(i)
    sequence_ids[batch.targets == IGNORE_INDEX] = -1
    answer_tokens = torch.bincount(sequence_ids[sequence_ids >= 0], minlength=2 * len(order))
    return PairBatch(
        batch.input_ids, batch.position_ids, batch.targets, sequence_ids, answer_tokens, order,
        batch.num_tokens, batch.num_padding, batch.num_label_tokens,
    )  # fmt: skip


class PairBatchPlan(BatchPlan):
    """A ``BatchPlan`` whose units are whole pairs: rows of up to ``2 x maxSeqLength`` tokens (a pair of two
    full-length sequences always fits), the same deterministic order, sharding and resume as for examples."""

    def __init__(self, pairs: Sequence[PreferencePair], batch_size: int, max_seq_length: int, **kwargs: Any):
        super().__init__(pairs, batch_size, max_seq_length=2 * max_seq_length, **kwargs)

    def collate(self, batch: Sequence[Sequence[int]]) -> PairBatch:  # type: ignore[override]
        return collate_pairs(batch, self.examples, self.pad_token_id)
