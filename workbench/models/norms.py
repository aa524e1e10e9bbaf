"""Normalization layers: LayerNorm and RMSNorm.

LayerNorm (Ba et al. 2016):  y = (x - mean(x)) / sqrt(var(x) + eps) * g + b
RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * g

RMSNorm drops the centering and the bias; Llama uses it. It is computed in
float32 and cast back, as Llama's reference code does, so low-precision
inputs do not lose the small mean square.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import Registry

NORM = Registry("norm")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


@NORM.register("layernorm")
def layer_norm(config) -> nn.Module:
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


@NORM.register("rmsnorm")
def rms_norm(config) -> nn.Module:
    return RMSNorm(config.d_model, eps=config.norm_eps)


def make_norm(config) -> nn.Module:
    return NORM.get(config.norm)(config)
