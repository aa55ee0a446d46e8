"""The training objective: summed next-token cross-entropy over the labelled positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finetune_trainer.data.masking import IGNORE_INDEX


class CausalLMLoss(nn.Module):
    """Wraps a causal LM (plain or PEFT) so that ``forward`` returns the summed loss of a batch.

    The output head runs on the labelled positions alone (not on every position, padding and prompts
    included), which saves the largest activation of a step with a big vocabulary. Models whose forward
    does more than ``lm_head(decoder(x))`` (logit soft-capping or scaling) go through their own forward.
    This is also the module DDP and FSDP wrap, so their hooks see every parameter used.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        cfg = self.causal_lm.config
        self.plain_head = not (getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))

    @property
    def causal_lm(self) -> nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def labelled_logits(self, input_ids: torch.Tensor, position_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The logits at the positions ``keep`` marks (``[kept, vocab]``), the head run on those alone."""
        causal_lm = self.causal_lm
        if self.plain_head:
            hidden = causal_lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False)
            return causal_lm.get_output_embeddings()(hidden.last_hidden_state[keep])
        return causal_lm(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[keep]

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        keep = targets != IGNORE_INDEX
        logits = self.labelled_logits(input_ids, position_ids, keep)
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum")
