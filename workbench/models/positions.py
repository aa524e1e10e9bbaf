"""Where a token is: learned absolute positions, RoPE, ALiBi, or none.

Learned (GPT-2): a table p_t added to the token embedding, one row per
position up to ``block_size``; the model cannot go past it.

RoPE (Su et al. 2021, RoFormer eq. 34): rotate each pair of query/key
channels by an angle proportional to the position,
    theta_i = base^(-2i/d),   R_m q = q * cos(m theta) + rotate_half(q) * sin(m theta),
so that <R_m q, R_n k> depends only on m - n. We use the "rotate-half"
channel layout of GPT-NeoX and Llama (channels i and i + d/2 form a pair).

The same rotation is often written in the "interleaved" layout (channels
2i and 2i + 1 form a pair: GPT-J, Meta's original Llama, DeepSeek-V2); the
two layouts differ by a fixed permutation of channels
(``interleaved_to_half``), which is how checkpoints are converted.

ALiBi (Press et al. 2022, "Train Short, Test Long", eq. 1): no position
vectors at all; each head h adds a fixed penalty linear in the distance to
every attention score,

    score_ij += m_h * (j - i)    (<= 0 for the past keys a causal model sees),

with slopes m_h = 2^(-8h/H), h = 1..H, for H a power of two. Extrapolating
to contexts longer than training was the point of the paper.

None (NoPE): no position signal at all. Only a causal mask breaks the
symmetry then; a bidirectional model without positions is permutation
equivariant.
"""
from __future__ import annotations

import math

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


def interleaved_to_half(head_dim: int) -> torch.Tensor:
    """Channel order that turns an interleaved RoPE layout (pairs 2i, 2i+1) into rotate-half (pairs i, i + d/2).

    ``x_half = x_interleaved[..., interleaved_to_half(d)]``: even channels first, then odd ones.
    """
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's per-head slopes: 2^(-8h/H) for H a power of two; otherwise the paper's rule, the slopes of
    the largest power of two below H followed by every other slope of twice that many heads."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if n_head & (n_head - 1) == 0:
        slopes = geometric(n_head)
    else:
        below = 2 ** math.floor(math.log2(n_head))
        slopes = geometric(below) + geometric(2 * below)[0::2][: n_head - below]
    return torch.tensor(slopes, dtype=torch.float32)
