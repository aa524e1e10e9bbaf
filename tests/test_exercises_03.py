"""Exercises of notebook 03 (attention variants): the solutions pass and further mistakes fail with a line that
points at the mistake. What every exercise shares (stub "not yet", known mistakes named, the notebook's cells
agree with the registry) is tested once for all in test_exercises_framework.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_solution_passes, assert_wrong_answer_points_at_itself
from workbench.exercises import get, run_check

IDS = ("03.1", "03.2", "03.3", "03.4")


# ---------------------------------------------------------------- the notebook's solutions, copied
def linear_attention(q, k, v):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    S = q.new_zeros(q.shape[:-2] + (q.shape[-1], v.shape[-1]))
    z = q.new_zeros(q.shape[:-2] + (q.shape[-1],))
    outputs = []
    for i in range(q.shape[-2]):
        S = S + phi_k[..., i, :, None] * v[..., i, None, :]
        z = z + phi_k[..., i, :]
        numerator = (phi_q[..., i, :, None] * S).sum(-2)
        denominator = (phi_q[..., i, :] * z).sum(-1, keepdim=True)
        outputs.append(numerator / denominator)
    return torch.stack(outputs, dim=-2)


def cache_bytes(config, context):
    if config.attention == "mla":
        per_token_and_layer = config.kv_lora_rank + config.rope_head_dim
    else:
        per_token_and_layer = 2 * config.n_kv_head * config.head_dim
    return config.n_layer * per_token_and_layer * context * 4


def alibi_bias(n_head, length):
    def geometric(n):
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if n_head & (n_head - 1) == 0:
        slopes = geometric(n_head)
    else:
        below = 2 ** math.floor(math.log2(n_head))
        slopes = geometric(below) + geometric(2 * below)[0::2][: n_head - below]
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    bias = torch.tensor(slopes)[:, None, None] * (j - i)
    return bias.masked_fill(j > i, float("-inf"))


def window_mask(length, window):
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return (j <= i) & (j > i - window)


SOLUTIONS = {"03.1": linear_attention, "03.2": cache_bytes, "03.3": alibi_bias, "03.4": window_mask}


# ---------------------------------------------------------------- further plausible wrong answers (not registered)
def linear_attention_softmax(q, k, v):
    """Softmax attention instead of phi(q) . phi(k): the exercise is the linear kernel."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def cache_bytes_head_dim_from_kv_heads(config, context):
    """head_dim taken as d_model / n_kv_head: the key/value heads are as wide as the query heads."""
    if config.attention == "mla":
        return cache_bytes(config, context)
    return config.n_layer * 2 * config.d_model * context * 4


def alibi_bias_without_the_8(n_head, length):
    """Slopes 2^(-h/H) instead of 2^(-8h/H): every head decays far too slowly."""
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    slopes = torch.tensor([2.0 ** (-h / n_head) for h in range(1, n_head + 1)])
    return (slopes[:, None, None] * (j - i)).masked_fill(j > i, float("-inf"))


def window_mask_transposed(length, window):
    """Rows are keys and columns queries: the mask is transposed."""
    return window_mask(length, window).T


# the wrong answer and what its first failing line must say (where it differs: position 1 is the first
# that softmax weighs differently; GQA's cache; head 0's slope; query 0 reading key 1, the future)
WRONG = {"03.1": (linear_attention_softmax, "case 1, one head, 4 tokens, d = 2: first difference at index (0, 0, 1, 0)"),
         "03.2": (cache_bytes_head_dim_from_kv_heads, "case 2, GQA: 3 layers, 8 query heads sharing 2 KV heads of 16, "
                                                      "100 tokens: expected 76800, got 307200"),
         "03.3": (alibi_bias_without_the_8, "case 1, 4 heads, 5 tokens: first difference at index (0, 1, 0): "
                                            "expected -0.25, got -0.840896"),
         "03.4": (window_mask_transposed, "case 1, 6 tokens, window 2: first difference at index (0, 1): "
                                          "expected False, got True")}


@pytest.mark.parametrize("exercise_id", IDS)
def test_solution_passes_every_case(exercise_id):
    assert_solution_passes(exercise_id, SOLUTIONS[exercise_id])


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_further_wrong_answer_fails_with_the_difference(exercise_id):
    assert_wrong_answer_points_at_itself(exercise_id, *WRONG[exercise_id])


def test_specific_mistakes_point_at_themselves():
    """A learner who forgets the normalizer, or MLA's RoPE key, is told exactly that."""
    def no_normalizer(q, k, v):
        phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
        return ((phi_q @ phi_k.transpose(-1, -2)).tril()) @ v

    report = str(run_check(get("03.1"), no_normalizer))
    assert "without the normalizer" in report

    def mla_without_rope(config, context):
        per = config.kv_lora_rank if config.attention == "mla" else 2 * config.n_kv_head * config.head_dim
        return config.n_layer * per * context * 4

    report = run_check(get("03.2"), mla_without_rope)
    assert report.n_passed == 3 and "decoupled RoPE key" in str(report)


def test_reference_of_03_1_is_the_library_layer():
    """The linear-attention reference equals what LinearAttention computes (both its forms)."""
    from workbench.config import ModelConfig
    from workbench.models.attention import AttentionContext
    from workbench.models.linear_attention import LinearAttention

    config = ModelConfig(vocab_size=16, n_layer=1, n_head=2, d_model=8, block_size=16, attention="linear",
                         position="none", dropout=0.0, bias=False)
    layer = LinearAttention(config)
    with torch.no_grad():
        layer.qkv.weight.copy_(torch.cat([torch.eye(8)] * 3))
        layer.proj.weight.copy_(torch.eye(8))
    x = torch.randn(1, 11, 8, generator=torch.Generator().manual_seed(0))
    heads = x.view(1, 11, 2, 4).transpose(1, 2)
    for need_weights in (False, True):
        ctx = AttentionContext(mode="causal", positions=torch.arange(11), prefix_len=None, key_padding=None,
                               rope=None, need_weights=need_weights)
        out, _ = layer(x, ctx)
        expected = linear_attention(heads, heads, heads).transpose(1, 2).reshape(1, 11, 8)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the notebook and the registry agree
