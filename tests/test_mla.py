"""Multi-head latent attention: absorbed == naive == the equations, cached == full, cache size, errors, learning."""
import math

import pytest
import torch

from helpers import markov_data, single_thread, tiny_config, train_config  # noqa: F401 (autouse fixture)
from workbench.config import ModelConfig
from workbench.generate import generate
from workbench.models import GPT
from workbench.models.attention import AttentionContext
from workbench.models.mla import MultiHeadLatentAttention, use_absorbed
from workbench.objectives import CausalLM
from workbench.train import Trainer

MLA = dict(attention="mla", position="rope", norm="rmsnorm", mlp="swiglu", bias=False)
MODES = ["causal", "bidirectional", "prefix"]
T = 12


def mla_model(seed: int = 0, **changes) -> GPT:
    """A tiny MLA model with every weight perturbed (norm gains too), so no term hides at a trivial value."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(**{**MLA, **changes}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _ids(batch=2, length=T, seed=0):
    return torch.randint(0, 32, (batch, length), generator=torch.Generator().manual_seed(seed))


def _mode_kwargs(mode):
    return dict(attention_mode=mode, prefix_len=torch.tensor([3, 7]) if mode == "prefix" else None)


class CallCounter:
    """Counts forward calls of the key up-projection: the absorbed form never runs it as a module."""

    def __init__(self, model):
        self.calls = 0
        for block in model.blocks:
            block.attn.k_up.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1


@pytest.mark.parametrize("q_lora_rank", [None, 0], ids=["low-rank-q", "full-rank-q"])
@pytest.mark.parametrize("mode", MODES)
def test_absorbed_equals_naive(mode, q_lora_rank):
    model = mla_model(q_lora_rank=q_lora_rank)
    assert hasattr(model.blocks[0].attn, "q_up" if q_lora_rank is None else "q_proj")
    ids = _ids()
    padding = torch.ones_like(ids, dtype=torch.bool)
    padding[0, -4:] = False  # right padding in row 0
    padding[1, :2] = False   # left padding in row 1
    counter = CallCounter(model)
    outputs = {}
    with torch.no_grad():
        for absorb in (False, True):
            use_absorbed(model, absorb)
            before = counter.calls
            outputs[absorb] = model(ids, key_padding_mask=padding, return_attentions=True, **_mode_kwargs(mode))
            assert (counter.calls > before) == (not absorb)  # the flag really switches the computation
    naive, absorbed = outputs[False], outputs[True]
    assert (naive.logits - absorbed.logits).abs().max() < 1e-5
    for a, b in zip(naive.attentions, absorbed.attentions):
        # The two forms round the scores differently (q . (W_uk c) vs (q W_uk) . c), by a few ulps, and a score
        # error ds moves a probability by ~p (1 - p) ds. Measured up to 3e-7 (5 ulps of a probability near 1)
        # with AVX2 kernels, 1e-7 with AVX-512 or scalar ones: 1e-6 left another CPU's summation order ~3x room.
        assert (a - b).abs().max() < 1e-5
        assert (a[0, :, :, -4:][:, :-4] == 0).all()  # real queries never read right-pad keys


def test_naive_form_follows_the_equations():
    """One layer against eq. 9-19 written out here with per-head loops (bidirectional, no cache)."""
    model = mla_model()
    attn: MultiHeadLatentAttention = model.blocks[0].attn
    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(3))
    ctx_rope = model.rope.cos_sin(torch.arange(6))
    H, d, dr, dc = attn.n_head, attn.head_dim, attn.rope_dim, attn.latent_dim

    def rms(v, gain):
        return gain * v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)

    def rope(v):  # rotate-half RoPE, written independently
        cos, sin = ctx_rope
        half = v.shape[-1] // 2
        rotated = torch.cat((-v[..., half:], v[..., :half]), dim=-1)
        return v * cos + rotated * sin

    with torch.no_grad():
        c_q = rms(x @ attn.q_down.weight.T, attn.q_norm.weight)
        q_all = (c_q @ attn.q_up.weight.T).view(1, 6, H, d + dr)
        c_kv = rms(x @ attn.kv_down.weight.T, attn.kv_norm.weight)
        k_rope = rope(x @ attn.key_rope.weight.T)
        heads = []
        for h in range(H):
            q = torch.cat((q_all[0, :, h, :d], rope(q_all[0, :, h, d:])), dim=-1)
            k = torch.cat((c_kv[0] @ attn.k_up.weight[h * d:(h + 1) * d].T, k_rope[0]), dim=-1)
            v = c_kv[0] @ attn.v_up.weight[h * d:(h + 1) * d].T
            heads.append(torch.softmax(q @ k.T / math.sqrt(d + dr), dim=-1) @ v)
        expected = torch.cat(heads, dim=-1) @ attn.proj.weight.T
        ctx = AttentionContext("bidirectional", torch.arange(6), None, None, ctx_rope)
        for absorb in (False, True):
            attn.absorb = absorb
            out, _ = attn(x, ctx)
            assert (out[0] - expected).abs().max() < 1e-5
    assert dc == 4 * d and dr == d // 2  # the config's derived defaults


@pytest.mark.parametrize("absorb", [None, False], ids=["default-absorbed", "forced-naive"])
def test_cached_forward_equals_full_forward(absorb):
    model = mla_model()
    ids = _ids(2, 16)
    with torch.no_grad():
        full = model(ids).logits
        use_absorbed(model, absorb)
        counter = CallCounter(model)
        cache = model.new_cache(2)
        pieces = [model(ids[:, :5], cache=cache).logits, model(ids[:, 5:8], cache=cache).logits]
        for t in range(8, 16):
            pieces.append(model(ids[:, t:t + 1], cache=cache).logits)
    assert cache.length == 16
    assert (counter.calls == 0) == (absorb is None)  # with a cache, the default is the absorbed form
    assert (torch.cat(pieces, dim=1) - full).abs().max() < 1e-5


def test_greedy_generate_with_cache_equals_without():
    model = mla_model(seed=1)
    prompt = _ids(2, 5, seed=4)
    with_cache = generate(model, prompt, 14, temperature=0, use_cache=True)
    without = generate(model, prompt, 14, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 19)
    assert torch.equal(with_cache, without)


def test_cache_holds_only_the_latent_and_rope_key():
    model = mla_model()
    attn = model.blocks[0].attn
    d_c, d_r, n_layer, context, batch = attn.latent_dim, attn.rope_dim, 2, 10, 3
    cache = model.new_cache(batch, max_len=context)
    with torch.no_grad():
        model(_ids(batch, context), cache=cache)  # filled to the brim
    assert cache.layers[0].latent.shape == (batch, context, d_c)
    assert cache.layers[0].rope_key.shape == (batch, context, d_r)
    assert cache.nbytes() == batch * model.cache_bytes(context) == batch * n_layer * (d_c + d_r) * 4 * context
    assert model.cache_bytes(context, torch.bfloat16) * 2 == model.cache_bytes(context)
    assert model.kv_cache_bytes_per_token() == n_layer * (d_c + d_r) * 4
    mha = GPT(tiny_config(**{**MLA, "attention": "mha"}))
    ratio = model.cache_bytes(context) / mha.cache_bytes(context)
    assert ratio == (d_c + d_r) / (2 * 4 * attn.head_dim)  # (32 + 4) / 64 here
    with pytest.raises(ValueError, match="max_len"):
        model(_ids(batch, 1), cache=cache)


def test_default_config_cache_ratio():
    """The default ModelConfig shape (4 heads of 32): d_c = 128, d_r = 16 against MHA's 2 * 4 * 32 = 256."""
    mla, mha = GPT(ModelConfig(**MLA)), GPT(ModelConfig(**{**MLA, "attention": "mha"}))
    assert mla.kv_cache_bytes_per_token() / mha.kv_cache_bytes_per_token() == (128 + 16) / 256


@pytest.mark.parametrize("mode", MODES)
def test_need_weights_equals_fast_path(mode):
    model = mla_model()
    ids = _ids()
    with torch.no_grad():
        for absorb in (False, True):
            use_absorbed(model, absorb)
            fast = model(ids, **_mode_kwargs(mode))
            slow = model(ids, return_attentions=True, **_mode_kwargs(mode))
            assert fast.attentions is None
            assert (fast.logits - slow.logits).abs().max() < 1e-5
            probs = slow.attentions[0]
            assert probs.shape == (2, 4, T, T)
            assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
            if mode == "causal":
                assert (probs.triu(1) == 0).all()


def test_rope_width_is_the_decoupled_key():
    mla, mha = mla_model(), GPT(tiny_config(position="rope"))
    assert mla.rope.inv_freq.numel() == mla.config.rope_head_dim // 2 == 2
    assert mha.rope.inv_freq.numel() == mha.config.head_dim // 2 == 4  # other variants unchanged


def test_bad_config_gives_one_clear_error():
    with pytest.raises(ValueError, match="position='learned' is invalid with attention='mla'.*decoupled RoPE key"):
        ModelConfig(attention="mla", position="learned")
    with pytest.raises(ValueError, match="n_kv_head=2 is invalid with attention='mla'"):
        ModelConfig(attention="mla", position="rope", n_kv_head=2)
    with pytest.raises(ValueError, match="rope_head_dim=3.*even"):
        ModelConfig(attention="mla", position="rope", rope_head_dim=3)


def test_flops_per_token():
    model = mla_model()
    attn = model.blocks[0].attn
    H, d, dr, dc = 4, 8, 4, 32
    assert attn.attention_flops_per_token(10) == 2 * H * 10 * (d + dr + d)
    assert attn.attention_flops_per_token(10, absorbed=True) == 2 * H * 10 * (dc + dr + dc)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.flops_per_token(16, training=False) == 2 * linear + 2 * 2 * H * 16 * (2 * d + dr)


def test_tiny_mla_model_learns():
    data = markov_data()
    torch.manual_seed(0)
    model = GPT(tiny_config(**MLA, n_layer=1))
    trainer = Trainer(model, CausalLM(), data, train_config(steps=100, batch_size=16, lr=1e-2, min_lr=1e-3,
                                                            warmup_steps=10))
    history = trainer.fit()
    first = history["train"][0]["loss"]
    final = sum(r["loss"] for r in history["train"][-10:]) / 10
    assert first == pytest.approx(math.log(32), abs=0.2)
    assert final < data.entropy_rate + 0.35, f"loss {first:.2f} -> {final:.2f}"
