"""The DPO objective: per-sequence log-probabilities and the preference loss over pairs.

Direct Preference Optimization (Rafailov et al., 2023) trains a policy on pairs (x, y_w, y_l) of a
conversation and a preferred and a non-preferred answer. An answer's *reward* is
``beta * (log pi(y|x) - log pi_ref(y|x))``, the policy's log-probability of the answer relative to the
reference model's; the loss ``-log sigmoid(r_w - r_l)`` raises the preferred answer's reward above the
other's, and the reference keeps the policy close to where it started.

The reference is the model the job starts from. Its log-probabilities of every training and validation
answer are computed once, before the first step (``reference_log_probs``), and kept in every checkpoint:
no second model is held in memory and no reference forward runs per step. With LoRA the starting model is
the base with a fresh adapter, whose update is zero (the base with the adapter switched off), or the
adapter a ``fromCheckpoint`` job left (an SFT model as reference, as in the DPO paper); with full
fine-tuning it is the starting weights, frozen in the stored log-probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetune_trainer.contract import DpoOptions
from finetune_trainer.data.masking import IGNORE_INDEX
from finetune_trainer.train.loss import CausalLMLoss


class SequenceLogProbs(CausalLMLoss):
    """Wraps a causal LM (plain or PEFT) so that ``forward`` returns the summed log-probability of each
    sequence's labelled tokens (``[num_sequences]``, float32).

    As in ``CausalLMLoss``, the output head runs on the labelled positions alone (answer tokens), not on the
    conversation's or on padding. This is the module DDP and FSDP wrap.
    """

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor, sequence_ids: torch.Tensor, num_sequences: int
    ) -> torch.Tensor:
        keep = targets != IGNORE_INDEX
        logits = self.labelled_logits(input_ids, position_ids, keep)
        token_log_probs = -F.cross_entropy(logits.float(), targets[keep], reduction="none")
        sums = torch.zeros(num_sequences, dtype=torch.float32, device=token_log_probs.device)
        return sums.index_add(0, sequence_ids[keep], token_log_probs)


def preference_loss(
    policy: torch.Tensor, reference: torch.Tensor, answer_tokens: torch.Tensor, options: DpoOptions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair loss, preferred rewards and non-preferred rewards (rewards detached).

    ``policy`` and ``reference`` hold each pair's two log-probabilities interleaved (preferred, non-preferred,
    preferred, ...); ``answer_tokens`` the answers' token counts in the same order.

    * ``sigmoid``: ``-(1 - e) log sigmoid(beta m) - e log sigmoid(-beta m)``, ``m`` the difference of the two
      log-ratios and ``e`` the label smoothing (conservative DPO; 0 is the DPO paper's loss);
    * ``ipo``: ``(m' - 1 / (2 beta))^2`` with ``m'`` the difference of the length-averaged log-ratios (IPO,
      Azar et al., 2023, averaged per token as its authors' results are);

    and with ``sftWeight`` ``w``, ``w`` times the preferred answer's mean next-token loss (RPO).

    >>> policy, reference = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0])
    >>> loss, preferred, rejected = preference_loss(policy, reference, torch.tensor([2, 2]), DpoOptions(beta=0.5))
    >>> round(float(loss), 4), float(preferred), float(rejected)
    (0.3133, 0.5, -0.5)
    """
    ratios = policy - reference
    preferred, rejected = ratios[0::2], ratios[1::2]
    if options.loss_type == "ipo":
        lengths = answer_tokens.to(ratios.dtype).clamp(min=1)
        margin = preferred / lengths[0::2] - rejected / lengths[1::2]
        loss = (margin - 1 / (2 * options.beta)) ** 2
    else:
        logits = options.beta * (preferred - rejected)
        smoothing = options.label_smoothing
        loss = -(1 - smoothing) * F.logsigmoid(logits) - smoothing * F.logsigmoid(-logits)
    if options.sft_weight:
        loss = loss - options.sft_weight * policy[0::2] / answer_tokens[0::2].to(policy.dtype).clamp(min=1)
    return loss, options.beta * preferred.detach(), options.beta * rejected.detach()
