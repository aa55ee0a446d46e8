"""Padding-free sequence packing, length-grouped batching, and turning examples into tensors.

Packing puts several examples into one row of at most ``maxSeqLength`` tokens (best-fit decreasing, so
rows come out nearly full). Each example keeps its own ``position_ids`` starting at 0, and no attention
mask is passed: transformers (5.x) then reads example boundaries from the position ids and builds a
block-diagonal causal mask for ``sdpa``/``eager``/``flex`` attention, so packed examples never attend to
each other (``tests/trainer`` proves the
per-example losses are the same packed and unpacked). Padding at the end of a row gets its own
position ids from 0, so it is a separate block that no real token can see.

Targets are shifted per example (``targets[i]`` is the token to predict after position ``i``) and the
last position of every example has none, so no example is trained to predict the next one's first token.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from finetune_trainer.data.masking import IGNORE_INDEX, TokenizedExample


def pack_best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group example indices into rows of total length at most ``capacity`` (best-fit decreasing).

    >>> pack_best_fit([5, 3, 4, 2, 6], 8)
    [[4, 3], [0, 1], [2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, row index), sorted
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"example {i} has {need} tokens, more than the row capacity {capacity}")
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            space, row = free.pop(at)
            rows[row].append(i)
            space -= need
        else:
            row, space = len(rows), capacity - need
            rows.append([i])
        if space > 0:
            bisect.insort(free, (space, row))
    return rows


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, group_batches: int = 64) -> list[list[int]]:
    """Batches of examples of similar length, so little padding is needed, in a shuffled order.

    Examples are shuffled, cut into groups of ``group_batches`` batches, sorted by length inside a
    group, split into batches, and the batches shuffled: random across epochs, homogeneous within.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * group_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """Tensors for one micro-batch; ``num_tokens`` counts real tokens, ``num_label_tokens`` those with loss."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    num_tokens: int
    num_padding: int
    num_label_tokens: int

    @property
    def loss_units(self) -> int:
        """What the loss is a mean over: label tokens."""
        return self.num_label_tokens

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.targets.to(device, non_blocking=True),
            self.num_tokens,
            self.num_padding,
            self.num_label_tokens,
        )


def shifted_targets(example: TokenizedExample) -> list[int]:
    """What each position predicts: the next token's label, nothing after the last token."""
    return list(example.labels[1:]) + [IGNORE_INDEX]


def collate_rows(rows: Sequence[Sequence[TokenizedExample]], pad_token_id: int, pad_to_multiple_of: int = 1) -> Batch:
    """Build a batch; each row is a list of examples laid end to end (one example per row without packing)."""
    ids_rows, pos_rows, tgt_rows = [], [], []
    for row in rows:
        ids: list[int] = []
        pos: list[int] = []
        tgt: list[int] = []
        for example in row:
            ids += example.input_ids
            pos += range(len(example.input_ids))
            tgt += shifted_targets(example)
        ids_rows.append(ids)
        pos_rows.append(pos)
        tgt_rows.append(tgt)
    width = max(len(r) for r in ids_rows)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    num_tokens = sum(len(r) for r in ids_rows)
    for ids, pos, tgt in zip(ids_rows, pos_rows, tgt_rows):
        pad = width - len(ids)
        ids += [pad_token_id] * pad
        pos += range(pad)
        tgt += [IGNORE_INDEX] * pad
    targets = torch.tensor(tgt_rows, dtype=torch.long)
    return Batch(
        input_ids=torch.tensor(ids_rows, dtype=torch.long),
        position_ids=torch.tensor(pos_rows, dtype=torch.long),
        targets=targets,
        num_tokens=num_tokens,
        num_padding=width * len(rows) - num_tokens,
        num_label_tokens=int((targets != IGNORE_INDEX).sum()),
    )
