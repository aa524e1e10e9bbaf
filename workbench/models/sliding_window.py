"""Sliding-window attention with a rolling KV cache.

Each query reads only the W most recent positions (Longformer's local
attention, Beltagy et al. 2020; Mistral 7B, Jiang et al. 2023, section 2):

    key j is visible to query i  iff  i - W < j <= i,

so attention costs O(W) per token instead of O(T), and generation needs the
keys and values of the last W tokens only. Mistral keeps them in a *rolling
buffer*: slot (position mod W) is overwritten as the window moves, so the
cache never grows past W entries per layer and head (``RollingKVCache``).
Information from further back still arrives, one window per layer: after L
layers a token can depend on the previous L (W - 1) tokens.

With W >= T the window hides nothing and this is full causal attention
(tested). Everything else (projections, grouped KV heads, RoPE or ALiBi)
is multi-head attention's.
"""
from __future__ import annotations

from typing import Optional

import torch

from .attention import ATTENTION, AttentionContext, MultiHeadAttention

EMPTY = -(2 ** 62)  # position of an unused cache slot: never inside any window


class RollingKVCache:
    """The last ``window`` keys and values of one layer in a ring buffer, with the position in each slot."""

    def __init__(self, batch: int, n_kv_head: int, window: int, head_dim: int, device, dtype):
        shape = (batch, n_kv_head, window, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.slot_positions = torch.full((window,), EMPTY, device=device, dtype=torch.long)

    def update(self, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys/values the new queries may read (the buffer before this step, then the new ones) with their
        positions; afterwards the newest ``window`` tokens stay, each in slot position mod window."""
        keys = torch.cat((self.keys, k), dim=2)
        values = torch.cat((self.values, v), dim=2)
        key_positions = torch.cat((self.slot_positions, positions))
        window = self.slot_positions.numel()
        keep = slice(max(0, k.shape[2] - window), None)  # a chunk longer than the window: its last W tokens
        slots = positions[keep] % window
        self.keys[:, :, slots] = k[:, :, keep]
        self.values[:, :, slots] = v[:, :, keep]
        self.slot_positions[slots] = positions[keep]
        return keys, values, key_positions

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


@ATTENTION.register("sliding_window")
class SlidingWindowAttention(MultiHeadAttention):
    """Multi-head (or grouped-query) attention restricted to the last ``config.window`` positions."""

    modes = ("causal",)
    mode_note = "its window is the W most recent tokens, a causal notion"
    knobs = ("window",)

    def __init__(self, config, layer_index: int = 0):
        super().__init__(config, layer_index)
        self.window = config.window

    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: Optional[RollingKVCache] = None,
                cache_start: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        q, k, v = self.project(x, ctx)
        key_positions = ctx.positions
        if cache is not None:
            k, v, key_positions = cache.update(k, v, ctx.positions)
        return self.attend(q, k, v, ctx, key_positions=key_positions, window=self.window)

    def new_cache(self, batch: int, max_len: int, device, dtype) -> RollingKVCache:
        return RollingKVCache(batch, self.n_kv_head, min(self.window, max_len), self.head_dim, device, dtype)

    def cache_bytes(self, context: int, element_size: int) -> int:
        """Like multi-head attention's, but never more than ``window`` tokens."""
        return super().cache_bytes(min(context, self.window), element_size)

    def attention_flops_per_token(self, context: int) -> int:
        return super().attention_flops_per_token(min(context, self.window))
