"""The GPT and its parts: masks, fast path == plain math, positions, norms, GQA, cache, accounting."""
import math

import pytest
import torch

from helpers import single_thread, tiny_model  # noqa: F401 (autouse fixture)
from workbench.models import RMSNorm
from workbench.models.positions import RotaryEmbedding, apply_rope

MODES = ["causal", "bidirectional", "prefix"]
T = 12


def _ids(batch=2, length=T, vocab=32, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _allowed(mode: str, length: int, prefix: int = 0) -> torch.Tensor:
    """The expected mask, written out independently of the library: True = may attend."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            if mode == "causal":
                allowed[i, j] = j <= i
            elif mode == "bidirectional":
                allowed[i, j] = True
            else:
                allowed[i, j] = j <= i or j < prefix
    return allowed


# ---------------------------------------------------------------- shapes and fast path
@pytest.mark.parametrize("changes", [dict(), dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False),
                                     dict(position="none", n_kv_head=2, tie_embeddings=False)])
def test_output_shapes(changes):
    model = tiny_model(**changes)
    out = model(_ids(3), return_attentions=True, return_hidden_states=True)
    assert out.logits.shape == (3, T, 32)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 4, T, T)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (3, T, 32)
    assert model(_ids(3)).attentions is None and model(_ids(3)).hidden_states is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("changes", [dict(), dict(position="rope", n_kv_head=2), dict(position="none")])
def test_sdpa_equals_explicit_math(mode, changes):
    model = tiny_model(**changes)
    ids = _ids()
    kwargs = dict(attention_mode=mode, prefix_len=torch.tensor([3, 7]) if mode == "prefix" else None)
    fast = model(ids, **kwargs).logits
    slow = model(ids, return_attentions=True, **kwargs).logits
    assert (fast - slow).abs().max() < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_attention_probabilities_follow_the_mask(mode):
    model = tiny_model()
    prefix = 5
    out = model(_ids(), attention_mode=mode, prefix_len=prefix if mode == "prefix" else None,
                return_attentions=True)
    allowed = _allowed(mode, T, prefix)
    for probs in out.attentions:
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6)
        assert (probs[..., ~allowed] == 0).all()
        assert (probs[..., allowed] > 0).all()


def test_prefix_zero_is_exactly_causal_and_prefix_full_is_bidirectional():
    model = tiny_model()
    ids = _ids()
    for see in (True, False):
        causal = model(ids, attention_mode="causal", return_attentions=see).logits
        prefix0 = model(ids, attention_mode="prefix", prefix_len=0, return_attentions=see).logits
        bidir = model(ids, attention_mode="bidirectional", return_attentions=see).logits
        prefix_all = model(ids, attention_mode="prefix", prefix_len=T, return_attentions=see).logits
        if see:  # the plain-math path runs the very same mask: bit-identical
            assert torch.equal(causal, prefix0)
            assert torch.equal(bidir, prefix_all)
        else:
            assert (causal - prefix0).abs().max() < 1e-6
            assert (bidir - prefix_all).abs().max() < 1e-6
    assert (causal - bidir).abs().max() > 1e-3  # the modes really differ


def test_prefix_len_per_example():
    model = tiny_model()
    ids = _ids(3)
    prefix = torch.tensor([0, 4, 9])
    out = model(ids, attention_mode="prefix", prefix_len=prefix, return_attentions=True)
    for b in range(3):
        alone = model(ids[b:b + 1], attention_mode="prefix", prefix_len=int(prefix[b])).logits
        assert (out.logits[b] - alone[0]).abs().max() < 1e-5
        allowed = _allowed("prefix", T, int(prefix[b]))
        assert (out.attentions[0][b][:, ~allowed] == 0).all()
        assert (out.attentions[0][b][:, allowed] > 0).all()


def test_prefix_without_prefix_len_and_unknown_mode_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="prefix_len"):
        model(_ids(), attention_mode="prefix")
    with pytest.raises(ValueError, match="'sideways'.*'causal'"):
        model(_ids(), attention_mode="sideways")


# ---------------------------------------------------------------- what each mode may see
def test_causal_model_ignores_future_tokens():
    model = tiny_model()
    ids = _ids(1)
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 32
    a, b = model(ids).logits, model(changed).logits
    assert (a[:, :7] - b[:, :7]).abs().max() < 1e-6
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def test_bidirectional_model_sees_future_tokens():
    model = tiny_model()
    ids = _ids(1)
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 32
    a = model(ids, attention_mode="bidirectional").logits
    b = model(changed, attention_mode="bidirectional").logits
    assert ((a[:, :7] - b[:, :7]).abs().amax(-1) > 1e-5).all()


@pytest.mark.parametrize("see", [True, False])
def test_key_padding_mask(see):
    model = tiny_model()
    ids = _ids(2)
    real = torch.ones(2, T, dtype=torch.bool)
    real[1, 8:] = False  # row 1: 8 real tokens, then 4 pads
    out = model(ids, attention_mode="bidirectional", key_padding_mask=real, return_attentions=True)
    for probs in out.attentions:
        assert torch.isfinite(probs).all()
        # real queries give padded keys exactly zero weight
        assert (probs[1, :, :8, 8:] == 0).all()
        # pad queries see only themselves among pads
        pad_block = probs[1, :, 8:, 8:]
        assert (pad_block * (1 - torch.eye(4)) == 0).all()
    logits = model(ids, attention_mode="bidirectional", key_padding_mask=real, return_attentions=see).logits
    assert torch.isfinite(logits).all()
    # real tokens of the padded row behave as if the pads were not there
    alone = model(ids[1:, :8], attention_mode="bidirectional").logits
    assert (logits[1, :8] - alone[0]).abs().max() < 1e-5
    # row 0 (no padding) is unaffected
    assert (logits[0] - model(ids[:1], attention_mode="bidirectional").logits[0]).abs().max() < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_left_padding_gives_no_nan(mode):
    model = tiny_model()
    real = torch.ones(2, T, dtype=torch.bool)
    real[0, :5] = False
    kwargs = dict(attention_mode=mode, prefix_len=2 if mode == "prefix" else None, key_padding_mask=real)
    slow = model(_ids(), return_attentions=True, **kwargs)
    fast = model(_ids(), **kwargs)
    assert torch.isfinite(slow.logits).all() and torch.isfinite(fast.logits).all()
    assert all(torch.isfinite(p).all() for p in slow.attentions)
    assert (fast.logits - slow.logits).abs().max() < 1e-5


# ---------------------------------------------------------------- teaching views
def test_hidden_states_end_in_the_logits():
    model = tiny_model(n_layer=3)
    ids = _ids()
    out = model(ids, return_hidden_states=True)
    assert len(out.hidden_states) == 3 + 1
    expected_first = model.token_embedding(ids) + model.positions.table.weight[:T]
    assert (out.hidden_states[0] - expected_first).abs().max() < 1e-6
    assert (model.lm_head(model.norm(out.hidden_states[-1])) - out.logits).abs().max() < 1e-6
    assert (out.hidden_states[1] - out.hidden_states[0]).abs().max() > 1e-4


def test_inputs_embeds_equals_input_ids():
    model = tiny_model(position="rope")
    ids = _ids()
    a = model(ids).logits
    b = model(inputs_embeds=model.token_embedding(ids)).logits
    assert (a - b).abs().max() < 1e-6
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.token_embedding(ids))
    with pytest.raises(ValueError, match="exactly one"):
        model()


def test_learned_positions_past_block_size_raise():
    model = tiny_model()  # block_size 16
    model(_ids(1, 16))
    with pytest.raises(ValueError, match="block_size=16"):
        model(_ids(1, 17))


def test_rope_and_nope_models_run_past_block_size():
    for position in ("rope", "none"):
        assert tiny_model(position=position)(_ids(1, 20)).logits.shape == (1, 20, 32)


def test_ids_outside_vocab_raise():
    model = tiny_model()
    for bad in (32, -1):
        ids = _ids(1)
        ids[0, 3] = bad
        with pytest.raises(ValueError, match=r"\[0, 32\)"):
            model(ids)
    with pytest.raises(ValueError, match="batch, time"):
        model(_ids(1)[0])


# ---------------------------------------------------------------- positions and norms
def test_rope_inner_products_depend_only_on_offset():
    head_dim = 16
    rope = RotaryEmbedding(head_dim)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)

    def rotated(x, m):
        cos, sin = rope.cos_sin(torch.tensor([m]))
        return apply_rope(x[None], cos, sin)[0]

    def score(m, n):
        return float(rotated(q, m) @ rotated(k, n))

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-4)
    assert score(5, 2) == pytest.approx(score(3, 0), abs=1e-4)
    assert score(0, 9) == pytest.approx(score(20, 29), abs=1e-4)
    assert abs(score(5, 2) - score(5, 3)) > 1e-3
    for m in (0, 1, 7, 100):
        assert rotated(q, m).norm() == pytest.approx(float(q.norm()), rel=1e-5)
    assert torch.equal(rotated(q, 0), q)


def test_rope_frequencies_and_rotate_half_layout():
    head_dim, base, m = 8, 10000.0, 3
    rope = RotaryEmbedding(head_dim, base)
    cos, sin = rope.cos_sin(torch.tensor([m]))
    for i in range(head_dim // 2):
        theta = base ** (-2 * i / head_dim)
        x = torch.zeros(head_dim)
        x[i] = 1.0
        y = apply_rope(x[None], cos, sin)[0]
        expected = torch.zeros(head_dim)
        expected[i], expected[i + head_dim // 2] = math.cos(m * theta), math.sin(m * theta)
        assert torch.allclose(y, expected, atol=1e-6)


def test_rmsnorm_equals_the_formula():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1)) * 3
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert (norm(x) - expected).abs().max() < 1e-5


def test_model_uses_the_configured_norm_and_mlp():
    model = tiny_model(norm="rmsnorm", mlp="swiglu")
    assert isinstance(model.norm, RMSNorm) and isinstance(model.blocks[0].norm1, RMSNorm)
    assert hasattr(model.blocks[0].mlp, "gate")
    layernorm = tiny_model(bias=False)
    assert layernorm.norm.bias is None and layernorm.blocks[0].attn.qkv.bias is None


# ---------------------------------------------------------------- GQA
def test_gqa_equals_mha_with_repeated_kv_heads():
    """Query head h reads kv head h // (n_head / n_kv_head): repeat_interleave, not tile."""
    gqa = tiny_model(n_kv_head=2, position="rope")
    mha = tiny_model(seed=1, n_kv_head=4, position="rope")
    d, hd, groups = 32, 8, 2
    state = gqa.state_dict()
    new_state = {}
    for name, value in state.items():
        if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
            q, k, v = value.split((d, 2 * hd, 2 * hd), dim=0)
            expand = lambda t: t.reshape(2, hd, *t.shape[1:]).repeat_interleave(groups, 0).reshape(4 * hd, *t.shape[1:])
            value = torch.cat([q, expand(k), expand(v)])
        new_state[name] = value
    mha.load_state_dict(new_state)
    ids = _ids()
    for mode in MODES:
        a = gqa(ids, attention_mode=mode, prefix_len=4 if mode == "prefix" else None).logits
        b = mha(ids, attention_mode=mode, prefix_len=4 if mode == "prefix" else None).logits
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_bytes(n_kv_head):
    model = tiny_model(n_kv_head=n_kv_head)
    head_dim, n_layer = 8, 2
    per_token = 2 * n_layer * n_kv_head * head_dim * 4
    assert model.kv_cache_bytes_per_token() == per_token
    assert model.kv_cache_bytes_per_token(torch.bfloat16) == per_token // 2
    assert model.new_cache(3, max_len=10).nbytes() == 3 * 10 * per_token
    assert model.blocks[0].attn.qkv.weight.shape == (32 + 2 * n_kv_head * head_dim, 32)


# ---------------------------------------------------------------- parameters and FLOPs
def _manual_count(V, Tb, d, L, ff, tied):
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * ff + ff) + (ff * d + d)
    return V * d + Tb * d + L * block + 2 * d + (0 if tied else V * d)


@pytest.mark.parametrize("tied", [True, False])
def test_num_parameters_matches_manual_count(tied):
    model = tiny_model(tie_embeddings=tied)
    assert model.num_parameters() == _manual_count(32, 16, 32, 2, 128, tied)
    assert model.num_parameters(non_embedding=True) == _manual_count(32, 16, 32, 2, 128, tied) - 32 * 32 - 16 * 32
    if tied:
        assert model.lm_head.weight.data_ptr() == model.token_embedding.weight.data_ptr()
        assert model.lm_head.weight is model.token_embedding.weight
    else:
        assert model.lm_head.weight.data_ptr() != model.token_embedding.weight.data_ptr()


def test_tied_embeddings_stay_tied_through_training_step():
    model = tiny_model()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(_ids()).logits.sum().backward()
    opt.step()
    assert torch.equal(model.lm_head.weight, model.token_embedding.weight)


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token(tied):
    model = tiny_model(tie_embeddings=tied)
    d, L, ff, V = 32, 2, 128, 32
    n_matmul = L * (d * 3 * d + d * d + d * ff + ff * d) + V * d  # every weight matrix, LM head once
    for context in (16, 5):
        expected = 6 * n_matmul + 12 * L * d * context
        assert model.flops_per_token(context) == expected
        assert model.flops_per_token(context, training=False) * 3 == expected
    assert model.flops_per_token() == model.flops_per_token(16)


# ---------------------------------------------------------------- KV cache
@pytest.mark.parametrize("position", ["learned", "rope", "none"])
def test_cached_forward_equals_full_forward(position):
    model = tiny_model(position=position, n_kv_head=2)
    ids = _ids(2, 16)
    full = model(ids).logits
    cache = model.new_cache(2)
    pieces = [model(ids[:, :5], cache=cache).logits]
    pieces.append(model(ids[:, 5:8], cache=cache).logits)  # a chunk after the prefill
    for t in range(8, 16):
        pieces.append(model(ids[:, t:t + 1], cache=cache).logits)
    assert cache.length == 16
    assert (torch.cat(pieces, dim=1) - full).abs().max() < 1e-5


def test_cache_rejects_non_causal_modes_and_overflow():
    model = tiny_model()
    with pytest.raises(ValueError, match="causal"):
        model(_ids(1, 4), attention_mode="bidirectional", cache=model.new_cache(1))
    # prefix mode fills an empty cache with the whole prefix (a prefix LM's prompt), and only then
    with pytest.raises(ValueError, match="causal"):
        model(_ids(1, 4), attention_mode="prefix", prefix_len=6, cache=model.new_cache(1))
    filled = model.new_cache(1)
    model(_ids(1, 4), attention_mode="prefix", prefix_len=4, cache=filled)
    with pytest.raises(ValueError, match="causal"):
        model(_ids(1, 2), attention_mode="prefix", prefix_len=4, cache=filled)
    cache = model.new_cache(1, max_len=6)
    model(_ids(1, 4), cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        model(_ids(1, 3), cache=cache)


# ---------------------------------------------------------------- NoPE symmetry
def test_nope_bidirectional_is_permutation_equivariant():
    model = tiny_model(position="none")
    ids = _ids(2)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(3))
    a = model(ids[:, perm], attention_mode="bidirectional").logits
    b = model(ids, attention_mode="bidirectional").logits[:, perm]
    assert (a - b).abs().max() < 1e-5


def test_nope_causal_is_not_permutation_equivariant():
    model = tiny_model(position="none")
    ids = _ids(2)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(3))
    a = model(ids[:, perm]).logits
    b = model(ids).logits[:, perm]
    assert (a - b).abs().max() > 1e-3


def test_learned_positions_break_bidirectional_symmetry():
    model = tiny_model()
    ids = _ids(2)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(3))
    a = model(ids[:, perm], attention_mode="bidirectional").logits
    b = model(ids, attention_mode="bidirectional").logits[:, perm]
    assert (a - b).abs().max() > 1e-3


def test_summary_mentions_the_shape():
    text = tiny_model(n_kv_head=2).summary()
    assert "2 layers" in text and "(2 kv)" in text and "parameters" in text
