"""Causal language modeling: predict every next token.

    L(theta) = -(1 / N) * sum_t log p_theta(x_t | x_<t)

Inputs are the window without its last token, targets the window without
its first token, and the attention mask is causal, so position t sees only
x_0..x_t when it predicts x_{t+1} (Radford et al. 2018).
"""
from __future__ import annotations

import torch

from .base import OBJECTIVES, Corruption, Objective


@OBJECTIVES.register("clm")
class CausalLM(Objective):
    name = "clm"
    attention_mode = "causal"

    def corrupt(self, batch: torch.Tensor, vocab_size: int, generator=None) -> Corruption:
        return Corruption(inputs=batch[:, :-1], targets=batch[:, 1:], attention_mode="causal",
                          original=batch[:, :-1])
