"""The one interface every pretraining objective implements.

An objective turns a clean batch of token windows into a loss. It may
rewrite the inputs (mask tokens, corrupt spans), choose the attention mode
(causal, bidirectional, prefix), and pick which positions are scored. The
Trainer only calls ``objective.loss(model, batch, generator)`` and never
looks inside, so a new objective is one new file and one registry line.

Batches are (B, block_size + 1) windows of a token stream: one token more
than the model's context, so next-token objectives can shift by one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..registry import Registry

OBJECTIVES = Registry("objective")


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor          # scalar to minimize (mean over scored tokens)
    n_tokens: int               # tokens scored by the loss
    metrics: dict = field(default_factory=dict)  # extra numbers to log (floats)


class Objective:
    """Base class: subclasses set ``name`` and implement ``loss``."""

    name: str = "objective"
    attention_mode: str = "causal"

    def loss(self, model, batch: torch.Tensor, generator: torch.Generator | None = None) -> ObjectiveOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement loss(model, batch, generator)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def make_objective(name: str, **options) -> Objective:
    return OBJECTIVES.get(name)(**options)
