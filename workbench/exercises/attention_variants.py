"""Exercises of notebook 03 (attention variants): the linear-attention recurrence, the generation cache
of GQA and MLA, ALiBi's biases and the sliding window's mask.

Each reference is the library's own computation: the recurrence of ``models/recurrences.py`` (as
``LinearAttention`` runs it), ``GPT.cache_bytes``, ``positions.alibi_slopes`` with the bias of
``attention.scaled_dot_product``, and ``attention.attention_mask``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..models import GPT
from ..models.attention import attention_mask
from ..models.linear_attention import LinearAttention
from ..models.positions import alibi_slopes
from ..models.recurrences import gla_chunked, gla_recurrent
from . import register
from .checking import Case, Exercise, Mistake


# --------------------------------------------------------------------------- 03.1 linear attention
def _phi(x: torch.Tensor) -> torch.Tensor:
    """Katharopoulos et al. 2020's feature map, elu(x) + 1 (> 0 everywhere)."""
    return F.elu(x) + 1


def _linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """LinearAttention.forward's computation (eq. 4-6): the normalizer z rides along as a column of ones."""
    ones = torch.ones_like(v[..., :1])
    both, _ = gla_chunked(_phi(q), _phi(k), torch.cat((v, ones), -1), None, chunk_size=4)
    return both[..., :-1] / both[..., -1:].clamp_min(LinearAttention.eps)


def _linear_without_normalizer(q, k, v):
    return gla_recurrent(_phi(q), _phi(k), v)[0]


def _linear_without_phi(q, k, v):
    ones = torch.ones_like(v[..., :1])
    both, _ = gla_recurrent(q, k, torch.cat((v, ones), -1))
    return both[..., :-1] / both[..., -1:]


def _linear_state_before_update(q, k, v):
    """o_i read from S_{i-1} and z_{i-1}: position i does not see its own key and value."""
    values = torch.cat((v, torch.ones_like(v[..., :1])), -1)
    state = q.new_zeros(q.shape[:-2] + (q.shape[-1], values.shape[-1]))
    outputs = []
    for t in range(q.shape[-2]):
        outputs.append((_phi(q)[..., t, :, None] * state).sum(-2))
        state = state + _phi(k)[..., t, :, None] * values[..., t, None, :]
    both = torch.stack(outputs, dim=-2)
    return both[..., :-1] / both[..., -1:].clamp_min(LinearAttention.eps)


def _linear_not_causal(q, k, v):
    """Every position reads the final state S_T: the future leaks in."""
    ones = torch.ones_like(v[..., :1])
    _, state = gla_recurrent(_phi(q), _phi(k), torch.cat((v, ones), -1))
    both = _phi(q) @ state
    return both[..., :-1] / both[..., -1:]


def _linear_attention_cases():
    g = torch.Generator().manual_seed(3)
    return [
        Case("one head, 4 tokens, d = 2", tuple(torch.randn(1, 1, 4, 2, generator=g) for _ in range(3))),
        Case("batch 2, 3 heads, 7 tokens, d = 4", tuple(torch.randn(2, 3, 7, 4, generator=g) for _ in range(3))),
        Case("a single token: o_0 = v_0", tuple(torch.randn(1, 2, 1, 3, generator=g) for _ in range(3))),
        Case("d_v = 5 differs from d_k = 3, 9 tokens",
             (torch.randn(1, 2, 9, 3, generator=g), torch.randn(1, 2, 9, 3, generator=g),
              torch.randn(1, 2, 9, 5, generator=g))),
        Case("large scores (3 x randn), 16 tokens", tuple(3 * torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))),
    ]


register(Exercise(
    id="03.1", title="linear attention as a recurrence", function_name="linear_attention", difficulty="medium",
    minutes=20, reference=_linear_attention_reference, cases=_linear_attention_cases,
    mistakes=[
        Mistake("this is S_i^T phi(q_i) without the normalizer: divide by z_i^T phi(q_i), z_i = sum_{j<=i} phi(k_j)",
                _linear_without_normalizer),
        Mistake("this uses q and k as they are: apply phi(x) = elu(x) + 1 to both first (it keeps every weight "
                "positive)", _linear_without_phi),
        Mistake("this reads the state before adding token i (S_{i-1}): update S and z with token i first, then read",
                _linear_state_before_update),
        Mistake("this reads the final state S_T at every position: the future leaks in; read S_i, the state after "
                "token i", _linear_not_causal),
    ],
))


# --------------------------------------------------------------------------- 03.2 generation-cache bytes
def _cache_bytes_reference(config: ModelConfig, context: int) -> int:
    return GPT(config).cache_bytes(context)


def _mha_like(config, context, per_token):
    return config.n_layer * per_token * 4 * context


def _forgot_keys_or_values(config, context):
    per = config.n_kv_head * config.head_dim if config.attention == "mha" else \
        config.kv_lora_rank + config.rope_head_dim
    return _mha_like(config, context, per)


def _every_head(config, context):
    per = 2 * config.n_head * config.head_dim if config.attention == "mha" else \
        config.kv_lora_rank + config.rope_head_dim
    return _mha_like(config, context, per)


def _one_layer(config, context):
    return _cache_bytes_reference(config, context) // config.n_layer


def _numbers_not_bytes(config, context):
    return _cache_bytes_reference(config, context) // 4


def _mla_like_mha(config, context):
    per = 2 * config.n_kv_head * config.head_dim
    return _mha_like(config, context, per)


def _mla_without_rope_key(config, context):
    per = 2 * config.n_kv_head * config.head_dim if config.attention == "mha" else config.kv_lora_rank
    return _mha_like(config, context, per)


def _cache_bytes_cases():
    base = dict(vocab_size=16, dropout=0.0)
    configs = [
        ("MHA: 2 layers, 4 heads of 16, 64 tokens",
         ModelConfig(n_layer=2, n_head=4, d_model=64, block_size=64, **base), 64),
        ("GQA: 3 layers, 8 query heads sharing 2 KV heads of 16, 100 tokens",
         ModelConfig(n_layer=3, n_head=8, n_kv_head=2, d_model=128, block_size=128, **base), 100),
        ("MQA: 4 layers, 6 heads of 32 sharing 1 KV head, 1 token",
         ModelConfig(n_layer=4, n_head=6, n_kv_head=1, d_model=192, block_size=32, **base), 1),
        ("MLA with the defaults (d_c = 4 head_dim, d_r = head_dim / 2), 2 layers, 64 tokens",
         ModelConfig(n_layer=2, n_head=4, d_model=64, block_size=64, attention="mla", position="rope", **base), 64),
        ("MLA, d_c = 24, d_r = 4, 5 layers, 1000 tokens",
         ModelConfig(n_layer=5, n_head=8, d_model=128, block_size=1024, attention="mla", position="rope",
                     kv_lora_rank=24, rope_head_dim=4, **base), 1000),
    ]
    return [Case(label, (config, context)) for label, config, context in configs]


register(Exercise(
    id="03.2", title="generation-cache bytes of GQA and MLA", function_name="cache_bytes", difficulty="easy",
    minutes=10, reference=_cache_bytes_reference, cases=_cache_bytes_cases,
    mistakes=[
        Mistake("this counts only the keys (or only the values): the cache holds both, 2 * n_kv_head * head_dim "
                "numbers per token and layer", _forgot_keys_or_values),
        Mistake("this caches every query head's K and V: with grouped-query attention only n_kv_head heads are "
                "cached", _every_head),
        Mistake("this is one layer's cache: every layer keeps its own, multiply by n_layer", _one_layer),
        Mistake("this is a count of numbers: multiply by 4 bytes per float32", _numbers_not_bytes),
        Mistake("this treats MLA like multi-head attention: MLA caches the latent c (kv_lora_rank numbers) and the "
                "shared RoPE key (rope_head_dim numbers) per token and layer", _mla_like_mha),
        Mistake("this leaves out MLA's decoupled RoPE key: per token and layer MLA caches kv_lora_rank + "
                "rope_head_dim numbers", _mla_without_rope_key),
    ],
))


# --------------------------------------------------------------------------- 03.3 ALiBi
def _alibi_reference(n_head: int, length: int) -> torch.Tensor:
    """The additive bias of attention.scaled_dot_product with ALiBi: m_h (j - i), -inf where j > i."""
    positions = torch.arange(length)
    distance = (positions[None, :] - positions[:, None]).float()
    bias = alibi_slopes(n_head).view(-1, 1, 1) * distance
    allowed = attention_mask("causal", positions, length)[0]
    return bias.masked_fill(~allowed, float("-inf"))


def _with_slopes(slopes: torch.Tensor, length: int, sign: float = 1.0, causal: bool = True) -> torch.Tensor:
    positions = torch.arange(length)
    bias = sign * slopes.view(-1, 1, 1) * (positions[None, :] - positions[:, None]).float()
    if causal:
        bias = bias.masked_fill(positions[None, :] > positions[:, None], float("-inf"))
    return bias


def _alibi_slopes_from_zero(n_head, length):
    return _with_slopes(torch.tensor([2.0 ** (-8.0 * h / n_head) for h in range(n_head)]), length)


def _alibi_positive(n_head, length):
    return _with_slopes(alibi_slopes(n_head), length, sign=-1.0)


def _alibi_no_mask(n_head, length):
    return _with_slopes(alibi_slopes(n_head), length, causal=False)


def _alibi_plain_geometric(n_head, length):
    return _with_slopes(torch.tensor([2.0 ** (-8.0 * h / n_head) for h in range(1, n_head + 1)]), length)


def _alibi_cases():
    return [
        Case("4 heads, 5 tokens", (4, 5)),
        Case("8 heads, 3 tokens", (8, 3)),
        Case("1 head, 1 token", (1, 1)),
        Case("6 heads (not a power of two), 4 tokens", (6, 4)),
        Case("12 heads (not a power of two), 6 tokens", (12, 6)),
    ]


register(Exercise(
    id="03.3", title="ALiBi's attention biases", function_name="alibi_bias", difficulty="medium", minutes=15,
    reference=_alibi_reference, cases=_alibi_cases,
    mistakes=[
        Mistake("the slopes are off by one head: m_h = 2^(-8h/H) for h = 1..H, so the first head's slope is "
                "2^(-8/H), not 1", _alibi_slopes_from_zero),
        Mistake("the sign is flipped: the bias m_h (j - i) is <= 0 for past keys, so distant keys lose score",
                _alibi_positive),
        Mistake("future keys (j > i) must get -inf: ALiBi adds to the causal mask, it does not replace it",
                _alibi_no_mask),
        Mistake("for H not a power of two the paper takes the slopes of the largest power of two below H, then "
                "every other slope of twice that many heads", _alibi_plain_geometric),
    ],
))


# --------------------------------------------------------------------------- 03.4 sliding window
def _window_reference(length: int, window: int) -> torch.Tensor:
    """attention.attention_mask for a causal window: True where query i may read key j (i - W < j <= i)."""
    return attention_mask("causal", torch.arange(length), length, window=window)[0, 0]


def _window_one_too_wide(length, window):
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return (j <= i) & (j >= i - window)


def _window_not_causal(length, window):
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return (j - i).abs() < window


def _window_without_self(length, window):
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return (j < i) & (j >= i - window)


def _window_cases():
    return [
        Case("6 tokens, window 2", (6, 2)),
        Case("8 tokens, window 3", (8, 3)),
        Case("window 1: each token reads only itself", (5, 1)),
        Case("window 10 >= 7 tokens: plain causal", (7, 10)),
    ]


register(Exercise(
    id="03.4", title="the sliding-window mask", function_name="window_mask", difficulty="easy", minutes=5,
    reference=_window_reference, cases=_window_cases,
    mistakes=[
        Mistake("one key too many: the window holds W keys, i - W < j <= i (your mask allows j = i - W)",
                _window_one_too_wide),
        Mistake("this window looks both ways: a causal model reads only keys j <= i", _window_not_causal),
        Mistake("each token must read itself: the W keys are i - W + 1 .. i, i included", _window_without_self),
    ],
))
