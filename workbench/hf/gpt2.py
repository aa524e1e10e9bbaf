"""GPT-2 (Radford et al. 2019) <-> workbench: ``GPT2LMHeadModel`` both ways.

A config matches GPT-2 when norm="layernorm", norm_placement="pre", head="linear",
mlp="gelu" (tanh GELU = "gelu_new"), position="learned", bias=True,
attention="mha" and n_kv_head == n_head.

Weight names, workbench -> GPT-2 (``h = transformer.h.{i}``, ``b = blocks.{i}``).
GPT-2's ``Conv1D`` stores weights as (in, out), the transpose of ``nn.Linear``:

    token_embedding.weight     transformer.wte.weight
    positions.table.weight     transformer.wpe.weight
    b.norm1.{weight,bias}      h.ln_1.{weight,bias}
    b.attn.qkv.{weight,bias}   h.attn.c_attn.{weight.T,bias}    (same q|k|v order)
    b.attn.proj.{weight,bias}  h.attn.c_proj.{weight.T,bias}
    b.norm2.{weight,bias}      h.ln_2.{weight,bias}
    b.mlp.fc.{weight,bias}     h.mlp.c_fc.{weight.T,bias}
    b.mlp.proj.{weight,bias}   h.mlp.c_proj.{weight.T,bias}
    norm.{weight,bias}         transformer.ln_f.{weight,bias}
    lm_head.weight             lm_head.weight                   (tied to wte unless untied)

Dropout: GPT-2 has the same three dropouts as the workbench (embedding,
residual, attention probabilities).
"""
from __future__ import annotations

from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from ..config import ModelConfig
from .common import needs_mismatches, same_kv_heads

TITLE = "GPT-2"
HF_CLASS = GPT2LMHeadModel
AUTO_CLASS = AutoModelForCausalLM
NEEDS = {"norm": "layernorm", "norm_placement": "pre", "head": "linear", "mlp": "gelu", "position": "learned",
         "bias": True, "attention": "mha"}


def mismatches(config: ModelConfig) -> list[str]:
    return needs_mismatches(config, NEEDS) + same_kv_heads(config)


def config_to_hf(c: ModelConfig) -> GPT2Config:
    return GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.d_model, n_layer=c.n_layer, n_head=c.n_head,
        n_inner=c.d_ff, activation_function="gelu_new", layer_norm_epsilon=c.norm_eps,
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, initializer_range=c.init_std,
        tie_word_embeddings=c.tie_embeddings, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


# (ours, theirs) name pairs, used in both directions. GPT-2's Conv1D stores weights as (in, out): transposed.
_COPIED = (("token_embedding.weight", "transformer.wte.weight"),
           ("positions.table.weight", "transformer.wpe.weight"),
           ("norm.weight", "transformer.ln_f.weight"), ("norm.bias", "transformer.ln_f.bias"),
           ("lm_head.weight", "lm_head.weight"))
_NORMS = (("norm1", "ln_1"), ("norm2", "ln_2"))
_CONV1D = (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
           ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj"))


def _pairs(c: ModelConfig) -> list[tuple[str, str, bool]]:
    """Every (ours, theirs, transposed) weight-name pair of the model."""
    pairs = [(ours, theirs, False) for ours, theirs in _COPIED]
    for i in range(c.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for (ours, theirs), transposed in [(pair, False) for pair in _NORMS] + [(pair, True) for pair in _CONV1D]:
            pairs += [(b + ours + ".weight", h + theirs + ".weight", transposed),
                      (b + ours + ".bias", h + theirs + ".bias", False)]
    return pairs


def state_to_hf(sd: dict, c: ModelConfig) -> dict:
    return {theirs: sd[ours].t() if transposed else sd[ours] for ours, theirs, transposed in _pairs(c)}


def config_from_hf(h: GPT2Config) -> ModelConfig:
    problems = []
    if h.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function={h.activation_function!r} (the workbench uses tanh GELU, 'gelu_new')")
    if not h.scale_attn_weights or h.scale_attn_by_inverse_layer_idx:
        problems.append("non-standard attention scaling (scale_attn_weights / scale_attn_by_inverse_layer_idx)")
    if h.add_cross_attention:
        problems.append("add_cross_attention=True")
    if problems:
        raise ValueError("cannot import this GPT-2 model: " + "; ".join(problems))
    # the workbench has one dropout rate; GPT-2's resid_pdrop stands for embd/attn_pdrop too
    return ModelConfig(
        vocab_size=h.vocab_size, block_size=h.n_positions, n_layer=h.n_layer, n_head=h.n_head, d_model=h.n_embd,
        d_ff=h.n_inner or 4 * h.n_embd, dropout=float(h.resid_pdrop), norm="layernorm", norm_eps=h.layer_norm_epsilon,
        mlp="gelu", position="learned", tie_embeddings=bool(h.tie_word_embeddings), bias=True,
        init_std=h.initializer_range,
    )


def state_from_hf(sd: dict, c: ModelConfig) -> dict:
    return {ours: sd[theirs].t() if transposed else sd[theirs] for ours, theirs, transposed in _pairs(c)}
