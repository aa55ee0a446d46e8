"""From files to micro-batches: tokenize, mask, truncate, split, pack or bucket, shard across processes.

The order of batches is a pure function of (seed, epoch), the same on every process, so a resumed run
replays exactly the order it was interrupted in and skips what it already trained on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer.data.chat import ChatFormatter
from finetune_trainer.data.formats import DatasetError, RawExample, read_examples
from finetune_trainer.data.masking import (
    TokenizedExample,
    TrainOnInputs,
    labels_for_completion,
    labels_for_tokens,
    labels_from_spans,
    truncate,
)
from finetune_trainer.data.packing import Batch, collate_rows, length_grouped_batches, pack_best_fit


@dataclass
class DatasetStats:
    """What loading a dataset did: examples kept, cut at maxSeqLength, dropped for having nothing to train on."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    label_tokens: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


class ExampleTokenizer:
    """Turns a ``RawExample`` into a ``TokenizedExample`` with the base model's tokenizer and chat template."""

    def __init__(self, tokenizer: Any, train_on_inputs: TrainOnInputs, max_seq_length: int, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.train_on_inputs = train_on_inputs
        self.max_seq_length = max_seq_length
        self.chat_template = chat_template
        self._formatter: ChatFormatter | None = None
        self.vocab_size = len(tokenizer)
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    @property
    def formatter(self) -> ChatFormatter:
        if self._formatter is None:
            self._formatter = ChatFormatter(self.tokenizer, self.chat_template)
        return self._formatter

    def __call__(self, raw: RawExample) -> TokenizedExample:
        if raw.kind == "chat":
            ids, spans = self.formatter.tokenize(raw.messages)
            example = TokenizedExample(ids, labels_from_spans(ids, spans, self.train_on_inputs))
        elif raw.kind == "instruction":
            prompt = list(self.tokenizer(raw.prompt, add_special_tokens=True)["input_ids"])
            completion = list(self.tokenizer(raw.completion, add_special_tokens=False)["input_ids"]) + self.eos
            ids = prompt + completion
            example = TokenizedExample(ids, labels_for_completion(len(prompt), ids, self.train_on_inputs))
        elif raw.kind == "preference":
            raise DatasetError(raw.source, raw.line, "a preference pair trains with objective dpo, not sft")
        elif raw.kind == "text":
            ids = list(self.tokenizer(raw.text, add_special_tokens=True)["input_ids"]) + self.eos
            example = TokenizedExample(ids, list(ids))
        else:
            too_big = next((t for t in raw.input_ids if t >= self.vocab_size), None)
            if too_big is not None:
                raise DatasetError(raw.source, raw.line, f"token id {too_big} is outside the vocabulary (size {self.vocab_size})")
            example = TokenizedExample(list(raw.input_ids), labels_for_tokens(raw.input_ids, raw.labels, self.train_on_inputs))
        return truncate(example, self.max_seq_length)


def load_examples(files: Iterable[tuple[Path, str]], tokenize: ExampleTokenizer) -> tuple[list[TokenizedExample], DatasetStats]:
    """Tokenize every example of ``(local path, URI)`` files; drop (and count) those left with no label."""
    examples: list[TokenizedExample] = []
    stats = DatasetStats()
    for path, uri in files:
        for raw in read_examples(path, uri):
            example = tokenize(raw)
            stats.kinds[raw.kind] = stats.kinds.get(raw.kind, 0) + 1
            stats.truncated += example.truncated
            if example.num_label_tokens == 0:
                stats.dropped += 1
                continue
            examples.append(example)
            stats.tokens += len(example)
            stats.label_tokens += example.num_label_tokens
    stats.examples = len(examples)
    return examples, stats


def split_validation(examples: Sequence[TokenizedExample], fraction: float, seed: int) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
    """A deterministic (by seed) split: ``fraction`` of the examples for validation, at least one of each side."""
    if fraction <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    val = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val]


class BatchPlan:
    """Which examples go into which micro-batch on which process, epoch by epoch.

    With packing the rows are packed once (best fit), without it a row is one example; each epoch draws
    length-grouped batches of rows (shuffled, then sorted by length in groups of 64 batches, so the few rows
    packing leaves short are batched with each other, not padded to a full row's width). The global list of
    batches is padded (by repeating its first ones) to a multiple of the world size and dealt round-robin, so
    every process runs the same number of steps.
    """

    def __init__(
        self,
        examples: Sequence[TokenizedExample],
        batch_size: int,
        max_seq_length: int,
        packing: bool,
        seed: int,
        pad_token_id: int,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
    ):
        if not examples:
            raise ValueError("no examples to batch")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.packing = packing
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.world_size = world_size
        self.rank = rank
        self.shuffle = shuffle
        lengths = [len(e) for e in self.examples]
        self.rows = pack_best_fit(lengths, max_seq_length) if packing else [[i] for i in range(len(lengths))]

    def global_batches(self, epoch: int) -> list[list[list[int]]]:
        """Every micro-batch of an epoch (each a list of rows, a row a list of example indices), all processes."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if not self.shuffle:
            batches = [self.rows[i : i + self.batch_size] for i in range(0, len(self.rows), self.batch_size)]
        else:  # rows (packed, or one example each) of similar length batched together: little padding
            lengths = [sum(len(self.examples[i]) for i in row) for row in self.rows]
            batches = [[self.rows[r] for r in b] for b in length_grouped_batches(lengths, self.batch_size, rng)]
        remainder = -len(batches) % self.world_size
        return batches + batches[:remainder]

    def local_batches(self, epoch: int) -> list[list[list[int]]]:
        """This process's share of an epoch's micro-batches, in order."""
        return self.global_batches(epoch)[self.rank :: self.world_size]

    def batches_per_epoch(self) -> int:
        """Micro-batches per process per epoch (the same in every epoch)."""
        return len(self.local_batches(0))

    def collate(self, batch: Sequence[Sequence[int]]) -> Batch:
        return collate_rows([[self.examples[i] for i in row] for row in batch], self.pad_token_id)

    def padding_fraction_estimate(self) -> float:
        """Padding / all tokens over one epoch's batches on this process (what training will see)."""
        real = pad = 0
        for batch in self.local_batches(0):
            widths = [sum(len(self.examples[i]) for i in row) for row in batch]
            real += sum(widths)
            pad += max(widths) * len(widths) - sum(widths)
        return pad / max(1, real + pad)
