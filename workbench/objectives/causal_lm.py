"""Causal language modeling: predict every next token.

    L(theta) = -(1 / N) * sum_t log p_theta(x_t | x_<t)

Inputs are the window without its last token, targets the window without
its first token, and the attention mask is causal, so position t sees only
x_0..x_t when it predicts x_{t+1} (Radford et al. 2018).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import OBJECTIVES, Objective, ObjectiveOutput


@OBJECTIVES.register("clm")
class CausalLM(Objective):
    name = "clm"
    attention_mode = "causal"

    def loss(self, model, batch: torch.Tensor, generator=None) -> ObjectiveOutput:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(inputs, attention_mode="causal").logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        return ObjectiveOutput(loss=loss, n_tokens=targets.numel())
