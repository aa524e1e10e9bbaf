"""Exercises of notebook 02 (a GPT from parts): attention, LayerNorm, the MLP, a block, the whole forward.

Every reference is the library's own module, loaded with the same weights the learner's function gets:

* 02.1 causal self-attention  -> ``models.attention.MultiHeadAttention`` (Vaswani et al. 2017, eq. 1)
* 02.2 LayerNorm              -> ``models.norms.make_norm`` with ``norm="layernorm"`` (Ba et al. 2016)
* 02.3 the MLP                -> ``models.mlp.GeluMLP``: W_2 GELU_tanh(W_1 x + b_1) + b_2 (GPT-2's tanh GELU)
* 02.4 one pre-norm block     -> ``models.transformer.Block``: h = x + Attn(LN1 x), y = h + MLP(LN2 h)
* 02.5 the whole forward pass -> ``models.transformer.GPT``: logits = LN_f(blocks(E[ids] + P[t])) W_out^T

Weights are passed in ``nn.Linear``'s layout, (out_features, in_features), as ``model.state_dict()``
holds them, so the learner's parts can run on a real model's weights (exercise 02.5). The mistakes
below are plausible wrong answers written as code; :func:`workbench.exercises.check` names the one a
learner's output equals.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..models.attention import AttentionContext, MultiHeadAttention
from ..models.mlp import GeluMLP
from ..models.norms import make_norm
from ..models.transformer import GPT, Block
from . import register
from .checking import Case, Exercise, Mistake


def _config(d_model: int, n_head: int = 1, **overrides) -> ModelConfig:
    """The smallest config that builds the library's modules at width ``d_model`` (GPT-2's choices)."""
    return ModelConfig(**{"vocab_size": 8, "block_size": 16, "n_layer": 1, "n_head": n_head,
                          "d_model": d_model, **overrides})


def _causal_context(T: int) -> AttentionContext:
    return AttentionContext(mode="causal", positions=torch.arange(T), prefix_len=None, key_padding=None, rope=None)


def _load(module: torch.nn.Module, weights: dict) -> torch.nn.Module:
    module.load_state_dict(weights)
    return module.eval()


# =========================================================================== 02.1 causal self-attention
def _attention_reference(x, w_qkv, b_qkv, w_o, b_o, n_head):
    attention = _load(_build_attention(x.shape[-1], n_head),
                      {"qkv.weight": w_qkv, "qkv.bias": b_qkv, "proj.weight": w_o, "proj.bias": b_o})
    with torch.no_grad():
        out, _ = attention(x, _causal_context(x.shape[1]))
    return out


def _build_attention(d_model: int, n_head: int) -> MultiHeadAttention:
    return MultiHeadAttention(_config(d_model, n_head))


def _attention_variant(x, w_qkv, b_qkv, w_o, b_o, n_head, *, allowed=lambda i, j: j <= i, scale=None,
                       softmax_dim=-1, merge_heads_wrong=False):
    """Attention written out, with one knob per plausible mistake."""
    B, T, d = x.shape
    head_dim = d // n_head
    q, k, v = (x @ w_qkv.T + b_qkv).split(d, dim=-1)
    q, k, v = (t.reshape(B, T, n_head, head_dim).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) * (head_dim ** -0.5 if scale is None else scale)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = scores.masked_fill(~allowed(i, j), float("-inf"))
    out = scores.softmax(dim=softmax_dim) @ v                                 # (B, H, T, head_dim)
    out = out.reshape(B, T, d) if merge_heads_wrong else out.transpose(1, 2).reshape(B, T, d)
    return out @ w_o.T + b_o


def _attention_case(generator, B, T, d, n_head, x_scale=1.0):
    """x and the weights of one attention layer, drawn so that the scores are O(1): mistakes show."""
    x = torch.randn(B, T, d, generator=generator) * x_scale
    w_qkv = torch.randn(3 * d, d, generator=generator) / math.sqrt(d)
    b_qkv = torch.randn(3 * d, generator=generator) * 0.1
    w_o = torch.randn(d, d, generator=generator) / math.sqrt(d)
    b_o = torch.randn(d, generator=generator) * 0.1
    return (x, w_qkv, b_qkv, w_o, b_o, n_head)


def _attention_cases():
    g = torch.Generator().manual_seed(21)
    return [
        Case("one position (T = 1): a token can only read itself", _attention_case(g, 1, 1, 8, 2)),
        Case("a batch of 2 sequences, T = 5, width 16, 4 heads", _attention_case(g, 2, 5, 16, 4)),
        Case("one head, T = 6, width 8", _attention_case(g, 1, 6, 8, 1)),
        Case("3 heads of width 4, T = 7, large inputs (sharp softmax)", _attention_case(g, 1, 7, 12, 3, 3.0)),
    ]


register(Exercise(
    id="02.1", title="causal self-attention", function_name="causal_self_attention", difficulty="medium",
    minutes=20, reference=_attention_reference, cases=_attention_cases,
    mistakes=[
        Mistake("the mask is off by one: query i must read keys j <= i (itself included), not only j < i; "
                "the first row then has no key at all and gives NaN",
                lambda *a: _attention_variant(*a, allowed=lambda i, j: j < i)),
        Mistake("the scores are missing the 1/sqrt(d_head) scale of eq. 1",
                lambda *a: _attention_variant(*a, scale=1.0)),
        Mistake("the scale is 1/sqrt(d_model); eq. 1 divides by the square root of one head's width, d_head",
                lambda x, *a: _attention_variant(x, *a, scale=x.shape[-1] ** -0.5)),
        Mistake("the softmax runs over the queries (dim -2); each query's weights over the keys (dim -1) "
                "must sum to 1",
                lambda *a: _attention_variant(*a, softmax_dim=-2)),
        Mistake("there is no causal mask: every position reads the future too (that is bidirectional attention)",
                lambda *a: _attention_variant(*a, allowed=lambda i, j: torch.ones_like(i * j, dtype=torch.bool))),
        Mistake("the heads are merged without moving the head axis back: transpose (B, H, T, d_head) to "
                "(B, T, H, d_head) before reshaping to (B, T, d_model)",
                lambda *a: _attention_variant(*a, merge_heads_wrong=True)),
    ],
))


# =========================================================================== 02.2 LayerNorm
def _layer_norm_reference(x, weight, bias, eps):
    norm = _load(make_norm(_config(x.shape[-1], norm="layernorm", norm_eps=eps)), {"weight": weight, "bias": bias})
    with torch.no_grad():
        return norm(x)


def _layer_norm_cases():
    g = torch.Generator().manual_seed(22)

    def case(shape, scale=1.0, offset=0.0, eps=1e-5):
        d = shape[-1]
        x = torch.randn(*shape, generator=g) * scale + offset
        return (x, 1.0 + 0.5 * torch.randn(d, generator=g), 0.5 * torch.randn(d, generator=g), eps)

    return [
        Case("3 vectors of width 8", case((3, 8))),
        Case("a batch (2, 5, 16): normalize over the last axis only", case((2, 5, 16))),
        Case("inputs around 100 with spread 10: the mean must go", case((4, 6), scale=10.0, offset=100.0)),
        Case("tiny spread (std 1e-3) with eps = 1e-5: eps goes inside the square root",
             case((2, 8), scale=1e-3, eps=1e-5)),
    ]


def _layer_norm_variant(x, weight, bias, eps, *, unbiased=False, eps_outside=False, affine=True):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=unbiased)
    normed = (x - mean) / (var.sqrt() + eps) if eps_outside else (x - mean) / torch.sqrt(var + eps)
    return normed * weight + bias if affine else normed


register(Exercise(
    id="02.2", title="LayerNorm", function_name="layer_norm", difficulty="easy", minutes=10,
    reference=_layer_norm_reference, cases=_layer_norm_cases,
    mistakes=[
        Mistake("this is the unbiased variance (divides by d - 1); LayerNorm divides by d: "
                "use x.var(-1, unbiased=False) or ((x - mean)**2).mean(-1)",
                lambda *a: _layer_norm_variant(*a, unbiased=True)),
        Mistake("eps is added to the standard deviation; LayerNorm adds it to the variance, inside the square root",
                lambda *a: _layer_norm_variant(*a, eps_outside=True)),
        Mistake("the gain and bias are missing: multiply by weight and add bias after normalizing",
                lambda *a: _layer_norm_variant(*a, affine=False)),
        Mistake("the statistics are taken over the first axis; LayerNorm normalizes each vector over its "
                "features, the last axis",
                lambda x, w, b, eps: (x - x.mean(0, keepdim=True)) / torch.sqrt(x.var(0, keepdim=True, unbiased=False)
                                                                                + eps) * w + b),
    ],
))


# =========================================================================== 02.3 the MLP
def _mlp_reference(x, w_fc, b_fc, w_proj, b_proj):
    d = x.shape[-1]
    mlp = _load(GeluMLP(_config(d, mlp="gelu", d_ff=w_fc.shape[0])),
                {"fc.weight": w_fc, "fc.bias": b_fc, "proj.weight": w_proj, "proj.bias": b_proj})
    with torch.no_grad():
        return mlp(x)


def _mlp_cases():
    g = torch.Generator().manual_seed(23)

    def case(shape, d_ff):
        d = shape[-1]
        # pre-activations of spread ~2, where tanh-GELU and erf-GELU differ by up to ~1e-3
        return (torch.randn(*shape, generator=g), torch.randn(d_ff, d, generator=g) * 2 / math.sqrt(d),
                torch.randn(d_ff, generator=g) * 0.5, torch.randn(d, d_ff, generator=g) * 4 / math.sqrt(d_ff),
                torch.randn(d, generator=g) * 0.1)

    return [
        Case("one vector of width 4, hidden width 16", case((1, 4), 16)),
        Case("a batch (2, 3, 8), hidden width 32", case((2, 3, 8), 32)),
        Case("5 vectors of width 6, hidden width 24", case((5, 6), 24)),
    ]


def _mlp_variant(act):
    return lambda x, w_fc, b_fc, w_proj, b_proj: act(x @ w_fc.T + b_fc) @ w_proj.T + b_proj


register(Exercise(
    id="02.3", title="the MLP (GPT-2's GELU)", function_name="mlp", difficulty="easy", minutes=10,
    reference=_mlp_reference, cases=_mlp_cases,
    mistakes=[
        Mistake("this is the exact, erf-based GELU; the library's config (mlp='gelu') uses GPT-2's tanh "
                "approximation: F.gelu(h, approximate='tanh')",
                _mlp_variant(F.gelu)),
        Mistake("this is ReLU; GPT-2's MLP uses GELU (tanh approximation)", _mlp_variant(F.relu)),
        Mistake("the nonlinearity is missing: two linear maps in a row are just one linear map",
                _mlp_variant(lambda h: h)),
        Mistake("the biases are missing: add b_fc after the first matrix and b_proj after the second",
                lambda x, w_fc, b_fc, w_proj, b_proj: F.gelu(x @ w_fc.T, approximate="tanh") @ w_proj.T),
    ],
))


# =========================================================================== 02.4 one block
def _block_reference(x, params, n_head):
    block = _load(Block(_config(x.shape[-1], n_head), 0), params)
    with torch.no_grad():
        out, _ = block(x, _causal_context(x.shape[1]))
    return out


def _block_parts(x, p, n_head):
    ln = lambda t, name: F.layer_norm(t, t.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], 1e-5)
    attn = lambda t: _attention_variant(t, p["attn.qkv.weight"], p["attn.qkv.bias"], p["attn.proj.weight"],
                                        p["attn.proj.bias"], n_head)
    mlp = lambda t: F.gelu(t @ p["mlp.fc.weight"].T + p["mlp.fc.bias"], approximate="tanh") @ p["mlp.proj.weight"].T \
        + p["mlp.proj.bias"]
    return ln, attn, mlp


def _block_variant(x, params, n_head, *, kind):
    ln, attn, mlp = _block_parts(x, params, n_head)
    if kind == "pre":                      # the right block (02.5's mistakes reuse it)
        h = x + attn(ln(x, "norm1"))
        return h + mlp(ln(h, "norm2"))
    if kind == "post":
        h = ln(x + attn(x), "norm1")
        return ln(h + mlp(h), "norm2")
    if kind == "no_residual":
        h = attn(ln(x, "norm1"))
        return mlp(ln(h, "norm2"))
    if kind == "parallel":
        return x + attn(ln(x, "norm1")) + mlp(ln(x, "norm2"))
    if kind == "one_norm":
        h = x + attn(ln(x, "norm1"))
        return h + mlp(ln(h, "norm1"))
    raise ValueError(kind)


def _block_cases():
    g = torch.Generator().manual_seed(24)

    def case(B, T, d, n_head):
        block = Block(_config(d, n_head), 0)
        params = {}
        for name, tensor in block.state_dict().items():
            if name.endswith("weight") and tensor.dim() == 1:      # norm gains: around 1, not all 1
                params[name] = 1.0 + 0.3 * torch.randn(tensor.shape, generator=g)
            elif tensor.dim() == 1:                                # biases: nonzero, so forgetting one shows
                params[name] = 0.2 * torch.randn(tensor.shape, generator=g)
            else:
                params[name] = torch.randn(tensor.shape, generator=g) / math.sqrt(tensor.shape[1])
        return (torch.randn(B, T, d, generator=g), params, n_head)

    return [
        Case("one position, width 8, 2 heads", case(1, 1, 8, 2)),
        Case("a batch of 2 sequences, T = 5, width 16, 4 heads", case(2, 5, 16, 4)),
        Case("T = 8, width 8, 1 head", case(1, 8, 8, 1)),
    ]


register(Exercise(
    id="02.4", title="one pre-norm Transformer block", function_name="block_forward", difficulty="medium",
    minutes=15, reference=_block_reference, cases=_block_cases,
    mistakes=[
        Mistake("this is a post-norm block (original Transformer, BERT): GPT-2 normalizes the input of each "
                "sub-layer, h = x + Attn(LN1(x)), and adds the sub-layer's output to the unnormalized stream",
                lambda *a: _block_variant(*a, kind="post")),
        Mistake("the residual connections are missing: add each sub-layer's output to its input, x + Attn(...)",
                lambda *a: _block_variant(*a, kind="no_residual")),
        Mistake("the MLP reads x instead of h = x + Attn(LN1(x)): that is GPT-J's parallel block, not GPT-2's",
                lambda *a: _block_variant(*a, kind="parallel")),
        Mistake("norm1's weights are used twice: the MLP's input goes through norm2",
                lambda *a: _block_variant(*a, kind="one_norm")),
    ],
))


# =========================================================================== 02.5 the whole forward
def _gpt_reference(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids).logits


def _gpt_variant(model, ids, *, positions=True, final_norm=True, head="lm_head", position_shift=0):
    p = model.state_dict()
    n_head = model.config.n_head
    T = ids.shape[1]
    x = p["token_embedding.weight"][ids]
    if positions:
        x = x + p["positions.table.weight"][torch.arange(T) + position_shift]
    for i in range(model.config.n_layer):
        prefix = f"blocks.{i}."
        x = _block_variant(x, {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}, n_head,
                           kind="pre")
    if final_norm:
        x = F.layer_norm(x, x.shape[-1:], p["norm.weight"], p["norm.bias"], model.config.norm_eps)
    return x @ p[f"{head}.weight"].T


def _small_gpt(seed: int, generator, tie: bool = True, train_steps: int = 0) -> GPT:
    """A 2-layer GPT of width 16 whose gains and biases are all nonzero (at initialization they are 1 and 0,
    which would hide a forgotten norm or bias); optionally trained a few steps on a repeating pattern."""
    model = GPT(ModelConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, d_model=16, tie_embeddings=tie),
                seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(param.shape,
                                                                                          generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    if train_steps:
        pattern = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3]])
        for _ in range(train_steps):  # plain gradient descent: no optimizer to import, a few ms per step
            logits = model(pattern[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), pattern[:, 1:].reshape(-1))
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for param in model.parameters():
                    param -= 0.05 * param.grad
    return model.eval()


def _gpt_cases():
    g = torch.Generator().manual_seed(25)
    return [
        Case("one token", (_small_gpt(0, g), torch.tensor([[3]]))),
        Case("a batch of 2 sequences of 7 tokens", (_small_gpt(1, g), torch.randint(0, 11, (2, 7), generator=g))),
        Case("untied output head (lm_head is not the token embedding), 12 tokens = the full context",
             (_small_gpt(2, g, tie=False), torch.randint(0, 11, (1, 12), generator=g))),
        Case("a model trained 30 steps on a repeating pattern",
             (_small_gpt(3, g, train_steps=30), torch.tensor([[1, 2, 3, 4, 5, 6]]))),
    ]


register(Exercise(
    id="02.5", title="the whole GPT forward pass", function_name="gpt_forward", difficulty="hard", minutes=20,
    reference=_gpt_reference, cases=_gpt_cases,
    mistakes=[
        Mistake("the position embeddings are missing: add positions.table.weight[t] to the token embedding",
                lambda m, ids: _gpt_variant(m, ids, positions=False)),
        Mistake("the final LayerNorm (`norm`) before the output head is missing",
                lambda m, ids: _gpt_variant(m, ids, final_norm=False)),
        Mistake("the positions start at 1; the first token is at position 0",
                lambda m, ids: _gpt_variant(m, ids, position_shift=1)),
        Mistake("the output head is the token embedding; that is right only when the model ties them "
                "(config.tie_embeddings): use lm_head.weight",
                lambda m, ids: _gpt_variant(m, ids, head="token_embedding")),
    ],
))
