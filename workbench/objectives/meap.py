"""Mask-Enhanced Autoregressive Prediction, MEAP (Zhuang et al. 2025; scitix/MEAP).

Plain next-token prediction with a causal mask, except that before the
forward pass a few input positions are overwritten by [MASK]. The targets
are the clean next tokens, so the loss is the causal LM loss on a corrupted
context:

    L(theta) = -(1 / T) * sum_t log p_theta(x_{t+1} | x~_0..x~_t),
    x~_t = [MASK] if t in M else x_t.

The masked set M has num_masks = max(1, int(T * mask_ratio)) positions,
drawn without replacement from {0, ..., T - 2} and shared by every row of
the batch, as the reference pretraining script does (T = block_size inputs;
the last input position is never masked there). There is no extra loss and
no change of attention. With mask_ratio = 0 nothing is masked and the loss is
exactly the causal LM loss: the reference's max(1, ...) applies only when
mask_ratio > 0. The reference pretrains with mask_ratio 0.15 (1B) and 0.1
(0.1B).
"""
from __future__ import annotations

import torch

from ..validation import check_range
from .base import MASK_ID, OBJECTIVES, Corruption, Objective


@OBJECTIVES.register("meap")
class MEAP(Objective):
    name = "meap"
    attention_mode = "causal"

    def __init__(self, mask_ratio: float = 0.15):
        check_range("MEAP", "mask_ratio", mask_ratio, 0.0, 1.0, high_open=True)
        super().__init__(mask_ratio=mask_ratio)
        self.mask_ratio = mask_ratio

    def num_masks(self, length: int) -> int:
        """max(1, int(length * mask_ratio)) for mask_ratio > 0, else 0 (never more than length - 1)."""
        if self.mask_ratio == 0:
            return 0
        if length < 2:
            raise ValueError(f"meap: masking needs inputs of at least 2 tokens (block_size >= 2), got {length}")
        return max(1, int(length * self.mask_ratio))  # < length since mask_ratio < 1, so <= length - 1

    def corrupt(self, batch: torch.Tensor, vocab_size: int, generator=None) -> Corruption:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        count = self.num_masks(inputs.shape[1])
        if count == 0:
            return Corruption(inputs=inputs, targets=targets, attention_mode="causal", original=inputs)
        positions = torch.randperm(inputs.shape[1] - 1, generator=generator)[:count].to(batch.device)
        masked = inputs.clone()
        masked[:, positions] = MASK_ID
        return Corruption(inputs=masked, targets=targets, attention_mode="causal", original=inputs)


__all__ = ["MEAP"]
