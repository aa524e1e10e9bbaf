"""Where a token is: learned absolute positions, RoPE, or none.

Learned (GPT-2): a table p_t added to the token embedding, one row per
position up to ``block_size``; the model cannot go past it.

RoPE (Su et al. 2021, RoFormer eq. 34): rotate each pair of query/key
channels by an angle proportional to the position,
    theta_i = base^(-2i/d),   R_m q = q * cos(m theta) + rotate_half(q) * sin(m theta),
so that <R_m q, R_n k> depends only on m - n. We use the "rotate-half"
channel layout of GPT-NeoX and Llama (channels i and i + d/2 form a pair).

None (NoPE): no position signal at all. Only a causal mask breaks the
symmetry then; a bidirectional model without positions is permutation
equivariant.
"""
from __future__ import annotations

import torch
from torch import nn


class LearnedPositions(nn.Module):
    def __init__(self, block_size: int, d_model: int):
        super().__init__()
        self.block_size = block_size
        self.table = nn.Embedding(block_size, d_model)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        last = int(positions[-1]) if positions.numel() else -1
        if last >= self.block_size:
            raise ValueError(
                f"position {last} is past block_size={self.block_size}: learned positions exist only for "
                f"0..{self.block_size - 1}; crop the input to the last {self.block_size} tokens or build the "
                "model with position='rope' or 'none'"
            )
        return self.table(positions)


class RotaryEmbedding(nn.Module):
    """Precomputes nothing but the inverse frequencies; cos/sin are built per call."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[:, None] * self.inv_freq[None, :]  # (T, d/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, d): pair i with i + d/2
        return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (..., T, head_dim) by the angles of its positions."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)
