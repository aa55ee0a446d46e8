"""Loss masking: which tokens of an example the model is trained to predict.

``trainOnInputs``:

* ``auto`` (default) and ``false``: conversations train on their assistant turns only (a turn with
  ``weight: 0`` is skipped), instruction examples on the completion only, text on all of it, and
  pre-tokenized rows on their own ``labels`` (all tokens when they have none);
* ``true``: every token of the example (padding is never trained, whatever the setting).

Labels are aligned with ``input_ids`` as in Hugging Face models (``labels[i]`` is the token at ``i``;
the loss shifts them); ``IGNORE_INDEX`` marks tokens without loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from finetune_trainer.data.chat import AssistantSpan

IGNORE_INDEX = -100

TrainOnInputs = Literal["auto", "true", "false"]


@dataclass
class TokenizedExample:
    """An example ready for batching: ids, labels (same length), and whether truncation cut it."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_label_tokens(self) -> int:
        """Tokens that carry loss: labelled positions after the first (the first token is never predicted)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


def labels_from_spans(input_ids: Sequence[int], spans: Sequence[AssistantSpan], train_on_inputs: TrainOnInputs) -> list[int]:
    """Labels of a conversation: its assistant spans with weight 1, or every token with ``true``."""
    if train_on_inputs == "true":
        return list(input_ids)
    labels = [IGNORE_INDEX] * len(input_ids)
    for span in spans:
        if span.weight:
            labels[span.start : span.end] = input_ids[span.start : span.end]
    return labels


def labels_for_completion(prompt_len: int, input_ids: Sequence[int], train_on_inputs: TrainOnInputs) -> list[int]:
    """Labels of a prompt/completion pair: the completion only, or everything with ``true``."""
    if train_on_inputs == "true":
        return list(input_ids)
    return [IGNORE_INDEX] * prompt_len + list(input_ids[prompt_len:])


def labels_for_tokens(input_ids: Sequence[int], labels: Sequence[int] | None, train_on_inputs: TrainOnInputs) -> list[int]:
    """Labels of a pre-tokenized row: its own labels unless ``true`` (or none given)."""
    if train_on_inputs == "true" or labels is None:
        return list(input_ids)
    return list(labels)


def truncate(example: TokenizedExample, max_length: int) -> TokenizedExample:
    """Keep the first ``max_length`` tokens; mark the example truncated when anything was cut."""
    if len(example.input_ids) <= max_length:
        return example
    return TokenizedExample(example.input_ids[:max_length], example.labels[:max_length], truncated=True)
