"""Attention for packed rows on CPU: causal attention inside each example, nothing across them.

transformers builds a block-diagonal causal mask from packed ``position_ids`` for ``sdpa``, which is
correct but makes every row cost a full ``L x L`` attention however short its examples are. GPUs use
transformers' ``sdpa`` as it is (fast enough there); on CPU this module registers ``packed_sdpa``: it
finds the examples of each row from the position ids (a new example starts where the position does not
follow the previous one) and runs PyTorch's causal SDPA on each example alone, so a row costs the sum of
its examples' squared lengths. With no position ids, or with a mask (generation), it is plain ``sdpa``.

A run whose positions start above 0 is a *branch* (``data/preference.py``: a preference pair's second answer
laid out after the first, the conversation they share laid out once): its tokens attend to the first ``p``
tokens of the example before it, ``p`` its first position, as if those were its own, and causally to
themselves. transformers' masks know no branches, so only this attention lays pairs out that way.

The trainer tests check that per-example losses are the same packed and unpacked with this attention
and with transformers' own ``sdpa`` and ``eager``.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED_SDPA = "packed_sdpa"


def example_bounds(positions: list[list[int]]) -> list[list[tuple[int, int]]]:
    """``[start, end)`` of every example of every row, from where positions stop counting up by one.

    >>> example_bounds([[0, 1, 2, 0, 1, 0]])
    [[(0, 3), (3, 5), (5, 6)]]
    """
    rows = []
    for row in positions:
        starts = [0] + [i for i in range(1, len(row)) if row[i] != row[i - 1] + 1]
        rows.append(list(zip(starts, starts[1:] + [len(row)])))
    return rows


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Per-example causal SDPA over ``[batch, heads, seq, dim]`` tensors; returns ``[batch, seq, heads, dim]``."""
    if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    positions = position_ids.expand(query.shape[0], -1).tolist()  # one copy to the host, for every decision below
    bounds = example_bounds(positions)
    if all(len(row) == 1 for row in bounds):
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, is_causal=True)
    rows = []
    # split/unbind, not slicing: their backward concatenates the parts' gradients, where a slice's writes its
    # part into a zero tensor the size of the whole row, once per example.
    for b, (row, q_row, k_row, v_row) in enumerate(zip(bounds, query.unbind(0), key.unbind(0), value.unbind(0))):
        lengths = [e - s for s, e in row]
        qs, ks, vs = (t.split(lengths, dim=1) for t in (q_row, k_row, v_row))
        parts, trunk = [], None
        for i, (s, e) in enumerate(row):
            shared = positions[b][s]  # above 0: a branch sharing that many of the trunk's tokens
            q, k, v, mask = qs[i][None], ks[i][None], vs[i][None], None
            if shared == 0 or trunk is None or lengths[trunk] < shared:
                trunk = i
            else:  # a branch: the trunk's first `shared` keys, then its own, causally
                k = torch.cat([ks[trunk][None, :, :shared], k], dim=2)
                v = torch.cat([vs[trunk][None, :, :shared], v], dim=2)
                mask = torch.ones(e - s, shared + e - s, dtype=torch.bool, device=query.device).tril(diagonal=shared)[None, None]
            parts.append(sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling, is_causal=mask is None)[0])
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
