"""Attention: who may look at whom (the mask), and how they look (the variants).

Scaled dot-product attention (Vaswani et al. 2017, eq. 1):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head) + M) V

where M is 0 where query i may read key j and -inf elsewhere. Three masks
serve every objective in the workbench:

* ``causal``        j <= i                  (GPT, next-token prediction)
* ``bidirectional`` every j                 (BERT, masked LM, diffusion)
* ``prefix``        j <= i  or  j < P       (prefix LM / non-causal decoder;
                                             P = 0 is exactly causal)

A key-padding mask removes [PAD] keys on top of that; a sliding window
(``window=W``: i - W < j <= i) and ALiBi's distance bias (``ctx.alibi``,
see ``positions.py``) are added to the same scores.

**The variant contract.** Token mixers register themselves by name in
``ATTENTION``; a config picks one with ``attention="mha"``, and a notebook
dropdown lists ``ATTENTION.names()``. A variant is an ``nn.Module`` built as
``Variant(config, layer_index)`` that provides

* ``forward(x, ctx, cache=None, cache_start=0) -> (output, weights or None)``:
  ``weights`` (B, heads, T_q, T_k) only when ``ctx.need_weights``: the
  attention probabilities, or for attention-free mixers the equivalent
  token-mixing matrix (output_i = sum_j weights_ij * value_j);
* ``new_cache(batch, max_len, device, dtype)``: its generation state (a KV
  cache, a rolling window, a compressed latent or a recurrent state), an
  object with ``nbytes()``;
* ``cache_bytes(context, element_size)``: what that state holds after
  ``context`` tokens, by formula (tests compare it with ``nbytes()``);
* ``attention_flops_per_token(context)``: forward FLOPs of the mixing
  itself for one token (the projections are counted by the model);

and class attributes that configs and the model check up front:
``positions`` (the position schemes it works with, and ``position_note``
saying why not the others), ``modes`` (the attention modes it can run) and
``grouped_kv`` (whether ``n_kv_head`` < ``n_head`` means anything to it)
and ``knobs`` (the variant-specific ModelConfig fields it reads, such as
``window``; a config that sets another variant's knob is rejected).
Optionally a static ``rotary_dim(config)``: how many channels per head RoPE
rotates, when that is not ``head_dim`` (the GPT builds ``ctx.rope`` that wide).

This file holds the masks, the shared softmax kernel and multi-head
attention with grouped KV heads; the other variants have a file each
(``sliding_window.py``, ``mla.py``, ``linear_attention.py``, ``ssd.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry
from .positions import apply_rope

ATTENTION = Registry("attention")


@dataclass
class AttentionContext:
    """Everything the layers of one forward pass share about the sequence."""

    mode: str                               # causal | bidirectional | prefix
    positions: torch.Tensor                 # (T,) absolute positions of the queries
    prefix_len: Optional[torch.Tensor]      # (B,) for mode="prefix"
    key_padding: Optional[torch.Tensor]     # (B, T_keys) bool, True = real token
    rope: Optional[tuple[torch.Tensor, torch.Tensor]]  # cos, sin for the query positions
    need_weights: bool = False
    alibi: Optional[torch.Tensor] = None    # (heads,) ALiBi slopes, or None

    def mask(self, n_keys: int, key_positions: Optional[torch.Tensor] = None,
             window: Optional[int] = None) -> Optional[torch.Tensor]:
        """Boolean mask (B|1, 1, T_q, T_keys), True where attention is allowed; None = all allowed.

        Keys sit at positions 0..n_keys-1 unless ``key_positions`` says otherwise (a rolling cache).
        """
        return attention_mask(self.mode, self.positions, n_keys, self.prefix_len, self.key_padding,
                              key_positions=key_positions, window=window)

    def is_plain_causal(self, n_keys: int) -> bool:
        """True when SDPA's built-in causal mask is exactly the mask we want."""
        n_queries = self.positions.numel()
        return (self.mode == "causal" and self.key_padding is None and n_keys == n_queries and self.alibi is None)

    def check_mode(self, variant) -> None:
        """One clear error when ``variant`` cannot run in this attention mode."""
        if self.mode not in variant.modes:
            raise ValueError(
                f"attention_mode={self.mode!r} is not possible with {type(variant).__name__}: it runs only "
                f"{' / '.join(variant.modes)} ({variant.mode_note}). For a bidirectional or prefix model pick "
                "attention='mha' or 'mla'"
            )


def attention_mask(mode: str, query_positions: torch.Tensor, n_keys: int,
                   prefix_len: Optional[torch.Tensor] = None,
                   key_padding: Optional[torch.Tensor] = None, *,
                   key_positions: Optional[torch.Tensor] = None,
                   window: Optional[int] = None) -> Optional[torch.Tensor]:
    """The allowed-attention pattern as a boolean tensor (True = may attend).

    ``window`` W keeps only keys with i - W < j (sliding-window attention, on top of the causal mask).
    """
    if key_positions is None:
        key_positions = torch.arange(n_keys, device=query_positions.device)
    q = query_positions[:, None]
    k = key_positions[None, :]
    if mode == "causal":
        allowed = (k <= q)[None, None]
    elif mode == "bidirectional":
        allowed = None
    elif mode == "prefix":
        if prefix_len is None:
            raise ValueError("attention_mode='prefix' needs prefix_len (an int or a (batch,) tensor)")
        in_prefix = k[None, :, :] < prefix_len.view(-1, 1, 1)
        allowed = ((k <= q)[None] | in_prefix)[:, None]
    else:
        raise ValueError(
            f"attention_mode={mode!r} is invalid: allowed values are 'causal', 'bidirectional', 'prefix'"
        )
    if window is not None:
        in_window = (k > q - window)[None, None]
        allowed = in_window if allowed is None else allowed & in_window
    if key_padding is not None:
        pad = key_padding[:, None, None, :n_keys].bool()
        # A query may always see itself, so a [PAD] query row is never empty (no NaN).
        pad = pad | (k == q)[None, None]
        allowed = pad if allowed is None else allowed & pad
    return allowed


def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext,
                       dropout: float = 0.0, *, key_positions: Optional[torch.Tensor] = None,
                       window: Optional[int] = None,
                       scale: Optional[float] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """softmax(q k^T * scale + bias + M) v for q (B, H, Tq, d) and k (B, H_kv, Tk, d), v (B, H_kv, Tk, d_v).

    ``scale`` defaults to 1/sqrt(d); ``bias`` is ALiBi's slope_h * (j - i) when
    ``ctx.alibi`` is set. With H_kv < H, query head h reads key/value head
    h // (H / H_kv) (grouped-query attention). Uses the fused kernel unless
    ``ctx.need_weights``; both paths compute the same numbers (tested).
    ``dropout`` applies to the probabilities (training only).
    """
    n_keys = k.shape[-2]
    groups = q.shape[1] // k.shape[1]
    if not ctx.need_weights and window is None and ctx.is_plain_causal(n_keys):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale,
                                              enable_gqa=groups > 1), None
    key_positions = torch.arange(n_keys, device=q.device) if key_positions is None else key_positions
    mask = ctx.mask(n_keys, key_positions, window)
    if ctx.alibi is not None:
        distance = (key_positions[None, :] - ctx.positions[:, None]).to(q.dtype)  # j - i
        bias = ctx.alibi.to(q.dtype).view(-1, 1, 1) * distance                    # (H, Tq, Tk)
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    if not ctx.need_weights:  # enable_gqa reads the shared heads in place; no copy of the cache per step
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale,
                                              enable_gqa=groups > 1), None
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = scores.float().softmax(dim=-1).to(q.dtype)
    out = F.dropout(probs, p=dropout) @ v if dropout > 0 else probs @ v
    return out, probs


class LayerKVCache:
    """Keys and values of one layer, preallocated for ``max_len`` positions."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, n_kv_head, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[-2]
        if end > self.keys.shape[-2]:
            raise ValueError(
                f"the KV cache holds {self.keys.shape[-2]} positions but {end} are needed; "
                "create the cache with a larger max_len"
            )
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


@ATTENTION.register("mha")
class MultiHeadAttention(nn.Module):
    """Multi-head attention; with n_kv_head < n_head, grouped-query attention.

    Query head h reads key/value head h // (n_head / n_kv_head) (GQA, Ainslie
    et al. 2023); n_kv_head = 1 is multi-query attention (Shazeer 2019) and
    n_kv_head = n_head the original multi-head attention. The KV cache holds
    2 * n_kv_head * head_dim numbers per token and layer, so GQA and MQA cut
    it by n_head / n_kv_head. Q, K and V come from one fused projection.
    """

    positions = ("learned", "rope", "alibi", "none")
    position_note = ""
    modes = ("causal", "bidirectional", "prefix")
    mode_note = ""
    grouped_kv = True
    knobs: tuple[str, ...] = ()

    def __init__(self, config, layer_index: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        kv_width = self.n_kv_head * self.head_dim
        self.qkv = nn.Linear(config.d_model, config.d_model + 2 * kv_width, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: Optional[LayerKVCache] = None,
                cache_start: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        q, k, v = self.project(x, ctx)
        if cache is not None:
            k, v = cache.update(k, v, cache_start)
        return self.attend(q, k, v, ctx)

    def project(self, x: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, n_head, T, d) and keys, values (B, n_kv_head, T, d), RoPE applied if the model uses it."""
        B, T, C = x.shape
        kv_width = self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split((C, kv_width, kv_width), dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if ctx.rope is not None:
            cos, sin = ctx.rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext,
               **mask_options) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Attention over the (possibly shared) key/value heads, then the heads merged and projected."""
        out, probs = scaled_dot_product(q, k, v, ctx, self.dropout if self.training else 0.0, **mask_options)
        B, H, T, d = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, T, H * d)), probs

    def new_cache(self, batch: int, max_len: int, device, dtype) -> LayerKVCache:
        return LayerKVCache(batch, self.n_kv_head, max_len, self.head_dim, device, dtype)

    def cache_bytes(self, context: int, element_size: int) -> int:
        """2 (keys and values) * n_kv_head * head_dim * element size per cached token."""
        return 2 * self.n_kv_head * self.head_dim * element_size * context

    def attention_flops_per_token(self, context: int) -> int:
        """Forward FLOPs of q k^T and probs @ v for one query against ``context`` keys."""
        return 2 * 2 * self.n_head * self.head_dim * context
