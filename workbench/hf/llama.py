"""Llama (Touvron et al. 2023) <-> workbench: ``LlamaForCausalLM`` both ways.

A config matches Llama when norm="rmsnorm", norm_placement="pre", head="linear",
mlp="swiglu", position="rope", bias=False and attention="mha" (any n_kv_head:
grouped-query attention).

Weight names, workbench -> Llama (``l = model.layers.{i}``, ``b = blocks.{i}``).
Our fused ``qkv`` splits by rows into q (d_model), k and v (n_kv_head * head_dim
each). Our RoPE uses Llama's rotate-half layout, so q/k need no permutation
(that permutation only exists for Meta's original interleaved checkpoints):

    token_embedding.weight     model.embed_tokens.weight
    b.norm1.weight             l.input_layernorm.weight
    b.attn.qkv.weight          l.self_attn.{q_proj,k_proj,v_proj}.weight
    b.attn.proj.weight         l.self_attn.o_proj.weight
    b.norm2.weight             l.post_attention_layernorm.weight
    b.mlp.gate.weight          l.mlp.gate_proj.weight
    b.mlp.up.weight            l.mlp.up_proj.weight
    b.mlp.proj.weight          l.mlp.down_proj.weight
    norm.weight                model.norm.weight
    lm_head.weight             lm_head.weight                   (tied iff tie_embeddings)

Dropout: HF Llama only has attention dropout, so an exported Llama trained with
dropout > 0 differs from ours; inference is identical.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from ..config import ModelConfig
from .common import needs_mismatches

TITLE = "Llama"
HF_CLASS = LlamaForCausalLM
AUTO_CLASS = AutoModelForCausalLM
NEEDS = {"norm": "rmsnorm", "norm_placement": "pre", "head": "linear", "mlp": "swiglu", "position": "rope",
         "bias": False, "attention": "mha"}


def mismatches(config: ModelConfig) -> list[str]:
    return needs_mismatches(config, NEEDS)


def config_to_hf(c: ModelConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, initializer_range=c.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": float(c.rope_base)},
        tie_word_embeddings=c.tie_embeddings, attention_bias=False, mlp_bias=False, attention_dropout=c.dropout,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def _pairs(c: ModelConfig) -> list[tuple[str, str]]:
    """Every (ours, theirs) weight-name pair copied as is, in both directions (the fused qkv is split apart)."""
    pairs = [("token_embedding.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight"),
             ("lm_head.weight", "lm_head.weight")]
    for i in range(c.n_layer):
        l, b = f"model.layers.{i}.", f"blocks.{i}."
        pairs += [(b + "norm1.weight", l + "input_layernorm.weight"),
                  (b + "attn.proj.weight", l + "self_attn.o_proj.weight"),
                  (b + "norm2.weight", l + "post_attention_layernorm.weight"),
                  (b + "mlp.gate.weight", l + "mlp.gate_proj.weight"), (b + "mlp.up.weight", l + "mlp.up_proj.weight"),
                  (b + "mlp.proj.weight", l + "mlp.down_proj.weight")]
    return pairs


def state_to_hf(sd: dict, c: ModelConfig) -> dict:
    out = {theirs: sd[ours] for ours, theirs in _pairs(c)}
    kv_width = c.n_kv_head * c.head_dim
    for i in range(c.n_layer):
        q, k, v = sd[f"blocks.{i}.attn.qkv.weight"].split((c.d_model, kv_width, kv_width), dim=0)
        for name, weight in zip("qkv", (q, k, v)):
            out[f"model.layers.{i}.self_attn.{name}_proj.weight"] = weight
    return out


def config_from_hf(h: LlamaConfig) -> ModelConfig:
    rope = dict(h.rope_parameters or {})
    problems = []
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type={rope['rope_type']!r} (RoPE scaling); the workbench has plain RoPE only "
                        "(rope_type='default')")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor={rope['partial_rotary_factor']} (the workbench rotates all channels)")
    if h.hidden_act != "silu":
        problems.append(f"hidden_act={h.hidden_act!r} (SwiGLU uses 'silu')")
    if h.attention_bias or h.mlp_bias:
        problems.append("attention_bias/mlp_bias=True (workbench Llama has no biases)")
    if h.head_dim != h.hidden_size // h.num_attention_heads:
        problems.append(f"head_dim={h.head_dim} != hidden_size / num_attention_heads")
    if problems:
        raise ValueError("cannot import this Llama model: " + "; ".join(problems))
    return ModelConfig(
        vocab_size=h.vocab_size, block_size=h.max_position_embeddings, n_layer=h.num_hidden_layers,
        n_head=h.num_attention_heads, d_model=h.hidden_size, n_kv_head=h.num_key_value_heads,
        d_ff=h.intermediate_size, dropout=float(h.attention_dropout or 0.0), norm="rmsnorm", norm_eps=h.rms_norm_eps,
        mlp="swiglu", position="rope", rope_base=float(rope.get("rope_theta", 10000.0)),
        tie_embeddings=bool(h.tie_word_embeddings), bias=False, init_std=h.initializer_range,
    )


def state_from_hf(sd: dict, c: ModelConfig) -> dict:
    out = {ours: sd[theirs] for ours, theirs in _pairs(c)}
    for i in range(c.n_layer):
        qkv = [sd[f"model.layers.{i}.self_attn.{name}_proj.weight"] for name in "qkv"]
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(qkv, dim=0)
    return out
