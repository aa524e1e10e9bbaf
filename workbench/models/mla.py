"""Multi-head latent attention (MLA), DeepSeek-V2's attention (DeepSeek-AI 2024, section 2.1).

Multi-head attention caches 2 * n_head * head_dim numbers per token and
layer. MLA caches one compressed latent instead and rebuilds every head's
keys and values from it (eq. 9-11):

    c_kv   = RMSNorm(W_DKV x)                  the latent, width d_c = kv_lora_rank   (cached)
    k_nope = W_UK c_kv,   v = W_UV c_kv         per head, head_dim each

RoPE cannot live inside k_nope: a position-dependent rotation between W_UK
and the query would stop W_UK from being folded into the query (below). So
position travels in a separate, *decoupled* RoPE key of width d_r =
rope_head_dim, shared by all heads (eq. 14-15):

    k_rope = RoPE(W_KR x)                                                             (cached)
    key_h  = [k_nope_h ; k_rope]

Queries take a low-rank path too, to save activation memory in training
(eq. 12-13; ``q_lora_rank = 0`` uses one full-rank projection instead):

    c_q = RMSNorm(W_DQ x),   [q_nope_h ; q_rope_h] = W_UQ c_q,   q_rope_h <- RoPE(q_rope_h)

and the scores are softmax((q_nope_h . k_nope_h + q_rope_h . k_rope) / sqrt(head_dim + d_r))
(eq. 16-18); the heads' outputs are concatenated and projected by W_O (eq. 19,
``proj`` here).

**Two ways to compute the same thing.** The *naive* form up-projects K and V
for every key (what training does, eq. 17). The *absorbed* form never builds
them: because q_nope_h . (W_UK_h c) = (W_UK_h^T q_nope_h) . c, each head's
query is mapped into latent space and attends over the cached latents
directly; since sum_j p_j W_UV_h c_j = W_UV_h sum_j p_j c_j, W_UV is applied
once to the weighted latent (section 2.1.2, "absorbed into W_UQ and W_O").
Generation with a cache uses the absorbed form (that is why the cache may
hold only c_kv and k_rope); ``absorb`` on each layer forces either form.

The latent norms use eps = 1e-6, as DeepSeek-V2's reference code does
(whatever ``norm_eps`` the blocks use). Biases (``config.bias``) sit only on the
projections that read x and on ``proj``; the up-projections have none.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import ATTENTION, AttentionContext, scaled_dot_product
from .norms import RMSNorm
from .positions import apply_rope

LATENT_NORM_EPS = 1e-6  # DeepSeek-V2's q_a_layernorm / kv_a_layernorm


class LatentCache:
    """One layer's MLA generation state: [c_kv ; k_rope] per token, (B, T, d_c + d_r) in one tensor.

    One tensor, because the absorbed form reads it as the keys of a single attention head shared by all
    query heads (and its first d_c channels as the values): views, no copy per decoding step.
    """

    def __init__(self, batch: int, max_len: int, latent_dim: int, rope_dim: int, device, dtype):
        self.entries = torch.zeros(batch, max_len, latent_dim + rope_dim, device=device, dtype=dtype)
        self.latent_dim = latent_dim

    @property
    def latent(self) -> torch.Tensor:
        return self.entries[..., :self.latent_dim]

    @property
    def rope_key(self) -> torch.Tensor:
        return self.entries[..., self.latent_dim:]

    def update(self, latent_and_rope_key: torch.Tensor, start: int) -> torch.Tensor:
        """Write (B, T_new, d_c + d_r) at ``start``; return every entry so far."""
        end = start + latent_and_rope_key.shape[1]
        if end > self.entries.shape[1]:
            raise ValueError(
                f"the latent cache holds {self.entries.shape[1]} positions but {end} are needed; "
                "create the cache with a larger max_len"
            )
        self.entries[:, start:end] = latent_and_rope_key
        return self.entries[:, :end]

    def nbytes(self) -> int:
        return self.entries.nbytes


@ATTENTION.register("mla")
class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2's MLA: keys and values rebuilt from a cached latent, plus one shared decoupled RoPE key.

    ``absorb``: None (default) = absorbed form when running with a cache, naive form otherwise;
    True / False forces one form (both give the same numbers to float tolerance).
    """

    positions = ("rope",)
    position_note = ("MLA carries its own decoupled RoPE key (rope_head_dim channels shared by all heads), "
                     "so it needs position='rope'.")
    modes = ("causal", "bidirectional", "prefix")
    mode_note = ""
    grouped_kv = False
    knobs = ("kv_lora_rank", "q_lora_rank", "rope_head_dim")

    @staticmethod
    def rotary_dim(config) -> int:
        """RoPE rotates only the decoupled rope_head_dim channels (GPT builds ctx.rope this wide)."""
        return config.rope_head_dim

    def __init__(self, config, layer_index: int = 0):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.latent_dim = config.kv_lora_rank
        self.rope_dim = config.rope_head_dim
        self.query_rank = config.q_lora_rank
        self.dropout = config.dropout
        self.scale = (self.head_dim + self.rope_dim) ** -0.5
        self.absorb: Optional[bool] = None
        d, heads = config.d_model, config.n_head
        query_width = heads * (self.head_dim + self.rope_dim)  # per head [q_nope ; q_rope]
        if self.query_rank > 0:
            self.q_down = nn.Linear(d, self.query_rank, bias=config.bias)                 # W_DQ
            self.q_norm = RMSNorm(self.query_rank, eps=LATENT_NORM_EPS)
            self.q_up = nn.Linear(self.query_rank, query_width, bias=False)               # W_UQ and W_QR
        else:
            self.q_proj = nn.Linear(d, query_width, bias=False)
        self.kv_down = nn.Linear(d, self.latent_dim, bias=config.bias)                    # W_DKV
        self.kv_norm = RMSNorm(self.latent_dim, eps=LATENT_NORM_EPS)
        self.key_rope = nn.Linear(d, self.rope_dim, bias=config.bias)                     # W_KR
        self.k_up = nn.Linear(self.latent_dim, heads * self.head_dim, bias=False)         # W_UK
        self.v_up = nn.Linear(self.latent_dim, heads * self.head_dim, bias=False)         # W_UV
        self.proj = nn.Linear(heads * self.head_dim, d, bias=config.bias)                 # W_O

    # ------------------------------------------------------------------ projections
    def queries(self, x: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor]:
        """q_nope (B, H, T, head_dim) and RoPE-rotated q_rope (B, H, T, d_r)."""
        B, T, _ = x.shape
        q = self.q_up(self.q_norm(self.q_down(x))) if self.query_rank > 0 else self.q_proj(x)
        q = q.view(B, T, self.n_head, self.head_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split((self.head_dim, self.rope_dim), dim=-1)
        cos, sin = ctx.rope
        return q_nope, apply_rope(q_rope, cos, sin)

    def compress(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """What the cache keeps per token: [c_kv ; RoPE(k_rope)], (B, T, d_c + d_r)."""
        cos, sin = ctx.rope
        return torch.cat((self.kv_norm(self.kv_down(x)), apply_rope(self.key_rope(x), cos, sin)), dim=-1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, ctx: AttentionContext, cache: Optional[LatentCache] = None,
                cache_start: int = 0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if ctx.rope is None:
            raise ValueError("MLA needs RoPE cos/sin in ctx.rope: build the model with position='rope'")
        q_nope, q_rope = self.queries(x, ctx)
        entries = self.compress(x, ctx)
        if cache is not None:
            entries = cache.update(entries, cache_start)
        absorbed = cache is not None if self.absorb is None else self.absorb
        attend = self.attend_absorbed if absorbed else self.attend_naive
        out, probs = attend(q_nope, q_rope, entries, ctx)   # (B, H, T, head_dim)
        B, H, T, d = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, T, H * d)), probs

    def attend_naive(self, q_nope, q_rope, entries, ctx):
        """Eq. 17-18 as written: up-project every key's latent to per-head keys and values, then attend."""
        latent, rope_key = entries.split((self.latent_dim, self.rope_dim), dim=-1)
        B, T_k, _ = latent.shape
        k_nope = self.k_up(latent).view(B, T_k, self.n_head, self.head_dim).transpose(1, 2)
        values = self.v_up(latent).view(B, T_k, self.n_head, self.head_dim).transpose(1, 2)
        shared = rope_key[:, None].expand(B, self.n_head, T_k, self.rope_dim)
        keys = torch.cat((k_nope, shared), dim=-1)
        queries = torch.cat((q_nope, q_rope), dim=-1)
        return scaled_dot_product(queries, keys, values, ctx, self._dropout(), scale=self.scale)

    def attend_absorbed(self, q_nope, q_rope, entries, ctx):
        """The same scores over the latent: W_UK folded into the query, W_UV applied after the weighted sum.

        This is multi-query attention over the cache: one head of entries [c_kv ; k_rope], shared by every
        query head and read in place. The entries serve as the values too (keys and values of one width
        keep PyTorch's fused kernel, which does not copy the shared head per query head); of the weighted
        sum, only the first d_c channels (sum_j p_j c_j) are used.
        """
        w_uk = self.k_up.weight.view(self.n_head, self.head_dim, self.latent_dim)
        w_uv = self.v_up.weight.view(self.n_head, self.head_dim, self.latent_dim)
        q_latent = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)          # W_UK_h^T q_nope_h
        queries = torch.cat((q_latent, q_rope), dim=-1)                   # (B, H, T, d_c + d_r)
        shared = entries[:, None]                                         # (B, 1, T_k, d_c + d_r)
        mixed, probs = scaled_dot_product(queries, shared, shared, ctx, self._dropout(), scale=self.scale)
        return torch.einsum("bhtc,hdc->bhtd", mixed[..., :self.latent_dim], w_uv), probs  # W_UV_h sum_j p_j c_j

    def _dropout(self) -> float:
        return self.dropout if self.training else 0.0

    # ------------------------------------------------------------------ cache and accounting
    def new_cache(self, batch: int, max_len: int, device, dtype) -> LatentCache:
        return LatentCache(batch, max_len, self.latent_dim, self.rope_dim, device, dtype)

    def cache_bytes(self, context: int, element_size: int) -> int:
        """(d_c + d_r) numbers per cached token, against multi-head attention's 2 * n_head * head_dim."""
        return (self.latent_dim + self.rope_dim) * element_size * context

    def attention_flops_per_token(self, context: int, absorbed: bool = False) -> int:
        """FLOPs of the scores and the weighted sum for one query against ``context`` keys.

        Naive (training): per head q.k over head_dim + d_r channels and p.v over head_dim.
        Absorbed (cached decoding): both run over the latent, d_c + d_r and d_c channels; the per-query
        W_UK / W_UV products replace up-projecting the keys and are counted with the weights.
        """
        width = self.latent_dim if absorbed else self.head_dim
        return 2 * self.n_head * context * ((width + self.rope_dim) + width)


def use_absorbed(model: nn.Module, absorb: Optional[bool]) -> None:
    """Set ``absorb`` on every MLA layer of ``model`` (None: absorbed with a cache, naive without)."""
    for module in model.modules():
        if isinstance(module, MultiHeadLatentAttention):
            module.absorb = absorb
