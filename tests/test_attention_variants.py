"""Every registered attention variant obeys the variant contract; sliding window and ALiBi identities.

The contract tests run over ``ATTENTION.names()``, so a new variant is covered
the moment it registers: cached == full forward, cached == uncached greedy
generation, the weights path == the fast path, the cache holds what its formula
says, unsupported modes and positions fail clearly, and a tiny model learns.
"""
import math

import pytest
import torch

from helpers import markov_data, single_thread, tiny_model, train_config  # noqa: F401 (autouse fixture)
from workbench.config import ModelConfig
from workbench.generate import generate
from workbench.models import ATTENTION, GPT
from workbench.models.attention import AttentionContext, scaled_dot_product
from workbench.models.positions import RotaryEmbedding, alibi_slopes, apply_rope, interleaved_to_half
from workbench.objectives import CausalLM
from workbench.train import Trainer

VARIANTS = ATTENTION.names()


def _ids(batch=2, length=12, vocab=32, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def variant_model(name: str, seed: int = 0, **changes) -> GPT:
    """A tiny model of variant ``name`` with the first position scheme it supports (learned if allowed)."""
    positions = ATTENTION.get(name).positions
    changes.setdefault("position", "learned" if "learned" in positions else positions[0])
    if name == "sliding_window":
        changes.setdefault("window", 4)
    return tiny_model(seed=seed, attention=name, **changes)


# ---------------------------------------------------------------- the contract, for every variant
@pytest.mark.parametrize("name", VARIANTS)
def test_cached_forward_equals_full_forward(name):
    model = variant_model(name)
    ids = _ids(2, 16)
    full = model(ids).logits
    cache = model.new_cache(2)
    pieces = [model(ids[:, :5], cache=cache).logits, model(ids[:, 5:8], cache=cache).logits]
    pieces += [model(ids[:, t:t + 1], cache=cache).logits for t in range(8, 16)]
    assert (torch.cat(pieces, dim=1) - full).abs().max() < 1e-4


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_generation_equals_recomputation(name):
    model = variant_model(name)
    prompt = _ids(2, 5, seed=1)
    cached = generate(model, prompt, 11, temperature=0, use_cache=True)
    recomputed = generate(model, prompt, 11, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("name", VARIANTS)
def test_weights_path_equals_fast_path_and_weights_are_causal(name):
    model = variant_model(name)
    ids = _ids(2, 12)
    fast = model(ids)
    seen = model(ids, return_attentions=True)
    assert fast.attentions is None
    assert (seen.logits - fast.logits).abs().max() < 1e-4
    assert len(seen.attentions) == model.config.n_layer
    for weights in seen.attentions:
        assert weights.shape == (2, model.config.n_head, 12, 12)
        assert torch.isfinite(weights).all()
        assert (torch.triu(weights, diagonal=1) == 0).all()  # causal: no token mixes in the future


@pytest.mark.parametrize("name", VARIANTS)
def test_cache_bytes_formula_matches_the_cache_tensors(name):
    model = variant_model(name)
    for context in (3, 16):
        cache = model.new_cache(1, max_len=context)
        model(_ids(1, context), cache=cache)
        assert cache.nbytes() == model.cache_bytes(context), context
        assert model.cache_bytes(context, torch.bfloat16) * 2 == model.cache_bytes(context)


@pytest.mark.parametrize("name", VARIANTS)
def test_unsupported_modes_and_positions_fail_clearly(name):
    variant = ATTENTION.get(name)
    model = variant_model(name)
    for mode in {"causal", "bidirectional", "prefix"} - set(variant.modes):
        with pytest.raises(ValueError, match=f"attention_mode='{mode}'.*{variant.__name__}"):
            model(_ids(), attention_mode=mode, prefix_len=3)
    for position in {"learned", "rope", "alibi", "none"} - set(variant.positions):
        with pytest.raises(ValueError, match=f"position='{position}'.*attention='{name}'"):
            ModelConfig(attention=name, position=position)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_learns(name):
    """An order-1 Markov source with 2 successors per token: untrained loss ln 32 = 3.47, floor ln 2 = 0.69."""
    data = markov_data(vocab_size=32, branching=2)
    torch.manual_seed(0)
    positions = ATTENTION.get(name).positions
    config = ModelConfig(vocab_size=32, block_size=32, n_layer=2, n_head=4, d_model=32, attention=name,
                         position="none" if "none" in positions else positions[0])
    trainer = Trainer(GPT(config), CausalLM(), data, train_config(steps=60, batch_size=16, lr=1e-2, min_lr=1e-3),
                      callbacks=[])
    trainer.fit()
    assert trainer.evaluate("val") < 1.2, name


# ---------------------------------------------------------------- sliding window
@pytest.mark.parametrize("position", ["rope", "alibi", "learned"])
def test_sliding_window_at_least_the_sequence_equals_full_causal_attention(position):
    ids = _ids(2, 16)
    full = tiny_model(position=position, n_kv_head=2)
    window = tiny_model(position=position, n_kv_head=2, attention="sliding_window", window=16)
    window.load_state_dict(full.state_dict())
    assert (window(ids).logits - full(ids).logits).abs().max() < 1e-5
    narrow = tiny_model(position=position, n_kv_head=2, attention="sliding_window", window=15)
    narrow.load_state_dict(full.state_dict())
    assert (narrow(ids).logits - full(ids).logits).abs().max() > 1e-4  # position 15 lost key 0


def test_sliding_window_probabilities_live_inside_the_window():
    W, T = 3, 10
    probs = tiny_model(attention="sliding_window", window=W)(_ids(1, T), return_attentions=True).attentions[0][0]
    for i in range(T):
        for j in range(T):
            inside = i - W < j <= i
            assert (probs[:, i, j] > 0).all() if inside else (probs[:, i, j] == 0).all(), (i, j)


def test_rolling_cache_keeps_only_the_window():
    model = tiny_model(attention="sliding_window", window=4, position="rope")
    cache = model.new_cache(1, max_len=16)
    model(_ids(1, 10), cache=cache)  # a prefill longer than the window
    layer = cache.layers[0]
    assert layer.keys.shape[2] == 4
    assert sorted(layer.slot_positions.tolist()) == [6, 7, 8, 9]
    assert layer.slot_positions.tolist() == [8, 9, 6, 7]  # slot = position mod window
    assert cache.nbytes() == model.cache_bytes(100) == model.cache_bytes(4)


# ---------------------------------------------------------------- ALiBi
def test_alibi_slopes_follow_the_paper():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(h + 1) for h in range(8)]))
    assert torch.allclose(alibi_slopes(4), torch.tensor([2.0 ** (-2 * (h + 1)) for h in range(4)]))
    # not a power of two: the 4-head slopes, then every other slope of the 8-head geometric sequence
    assert torch.allclose(alibi_slopes(6), torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8,
                                                         2.0 ** -1, 2.0 ** -3]))


@pytest.mark.parametrize("mode", ["causal", "bidirectional", "prefix"])
def test_alibi_scores_are_dot_product_plus_slope_times_distance(mode):
    g = torch.Generator().manual_seed(0)
    B, H, T, d = 2, 4, 6, 8
    q, k, v = (torch.randn(B, H, T, d, generator=g) for _ in range(3))
    slopes = alibi_slopes(H)
    ctx = AttentionContext(mode=mode, positions=torch.arange(T), prefix_len=torch.tensor([2, 4]), key_padding=None,
                           rope=None, need_weights=True, alibi=slopes)
    out, probs = scaled_dot_product(q, k, v, ctx)
    distance = torch.arange(T)[None, :] - torch.arange(T)[:, None]  # j - i
    scores = q @ k.transpose(-1, -2) / math.sqrt(d) + slopes.view(H, 1, 1) * distance
    if mode == "causal":
        scores = scores.masked_fill(distance > 0, float("-inf"))
    elif mode == "prefix":
        allowed = (distance <= 0) | (torch.arange(T)[None, None, :] < torch.tensor([2, 4]).view(B, 1, 1))
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    assert torch.allclose(probs, scores.softmax(-1), atol=1e-6)
    ctx.need_weights = False
    fused, _ = scaled_dot_product(q, k, v, ctx)
    assert torch.allclose(fused, out, atol=1e-5)


def test_alibi_depends_only_on_relative_position():
    """Shifting every query and key position by the same offset changes nothing."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 5, 8, generator=g) for _ in range(3))

    def probs(offset):
        ctx = AttentionContext(mode="causal", positions=torch.arange(5) + offset, prefix_len=None, key_padding=None,
                               rope=None, need_weights=True, alibi=alibi_slopes(4))
        return scaled_dot_product(q, k, v, ctx, key_positions=torch.arange(5) + offset)[1]

    assert torch.allclose(probs(0), probs(1000), atol=1e-6)


def test_alibi_model_has_no_position_parameters_and_runs_past_block_size():
    model = tiny_model(position="alibi")
    assert model.positions is None and model.rope is None
    assert not any("position" in name for name, _ in model.named_parameters())
    assert model(_ids(1, 40)).logits.shape == (1, 40, 32)  # block_size is 16


# ---------------------------------------------------------------- RoPE layouts
def test_interleaved_and_rotate_half_rope_differ_by_a_fixed_permutation():
    """Interleaved RoPE rotates pairs (2i, 2i+1); permuting channels even-first turns it into rotate-half."""
    d, positions = 8, torch.arange(5)
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(0))
    theta = 10000.0 ** (-torch.arange(0, d, 2).float() / d)
    angles = positions[:, None].float() * theta[None, :]
    pairs = torch.view_as_complex(x.view(5, d // 2, 2).contiguous())
    interleaved = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).reshape(5, d)
    perm = interleaved_to_half(d)
    cos, sin = RotaryEmbedding(d).cos_sin(positions)
    assert torch.allclose(apply_rope(x[:, perm], cos, sin), interleaved[:, perm], atol=1e-5)
    assert not torch.allclose(apply_rope(x, cos, sin), interleaved, atol=1e-3)
