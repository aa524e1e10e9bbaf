"""The position-wise feed-forward block, in two flavours.

GELU MLP (GPT-2):       MLP(x) = W_2 GELU(W_1 x + b_1) + b_2
SwiGLU (Shazeer 2020, used by Llama):
                        MLP(x) = W_down (SiLU(W_gate x) * (W_up x))

GPT-2 uses the tanh approximation of GELU ("gelu_new" in transformers); we
do too (``mlp="gelu"``), so exported GPT-2 models match to float precision.
BERT uses the exact, erf-based GELU: ``mlp="gelu_exact"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry

MLP = Registry("mlp")


def activation(config) -> nn.Module:
    """The MLP's nonlinearity on its own (BERT's prediction head reuses it)."""
    return {"gelu": nn.GELU(approximate="tanh"), "gelu_exact": nn.GELU(), "swiglu": nn.SiLU()}[config.mlp]


@MLP.register("gelu")
@MLP.register("gelu_exact")
class GeluMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.act = activation(config)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


@MLP.register("swiglu")
class SwiGLU(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.gate(x)) * self.up(x))


def make_mlp(config) -> nn.Module:
    return MLP.get(config.mlp)(config)
