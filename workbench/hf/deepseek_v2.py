"""DeepSeek-V2 (DeepSeek-AI 2024) <-> workbench: ``DeepseekV2ForCausalLM`` both ways, dense layers only.

A config matches when attention="mla", norm="rmsnorm", norm_placement="pre",
head="linear", mlp="swiglu", position="rope" and bias=False. DeepSeek-V2's
mixture-of-experts MLPs are not converted: the exported model has a dense
SwiGLU MLP in every layer (first_k_dense_replace = num_hidden_layers), and a
checkpoint with MoE layers (the released DeepSeek-V2 models) refuses to import.

Shapes: qk_nope_head_dim = v_head_dim = head_dim (d_model / n_head),
qk_rope_head_dim = rope_head_dim, kv_lora_rank = kv_lora_rank, q_lora_rank =
q_lora_rank (None in HF when ours is 0: one full-rank q_proj). The softmax scale
is (qk_nope_head_dim + qk_rope_head_dim)^-1/2 in both (no YaRN mscale: plain
RoPE only). HF's latent norms (q_a_layernorm, kv_a_layernorm) use eps 1e-6 like
ours (``mla.LATENT_NORM_EPS``), independent of rms_norm_eps.

RoPE layout. HF's DeepSeek-V2 rotates the rope channels as complex pairs
(2i, 2i+1) (interleaved); ours pairs i with i + d_r/2 (rotate-half). Both rotate
pair i by position * base^(-2i/d_r), so permuting the *output rows* of the
projections that produce q_rope and k_rope by ``interleaved_to_half(d_r)``
(import; its inverse on export) gives identical scores: ours = HF[perm].

Weight names, workbench -> DeepSeek-V2 (``a = model.layers.{i}.self_attn.``,
``l = model.layers.{i}.``, ``b = blocks.{i}.``, ``H`` heads, ``d`` = head_dim):

    token_embedding.weight     model.embed_tokens.weight
    b.norm1.weight             l.input_layernorm.weight
    b.attn.q_down.weight       a.q_a_proj.weight                  (q_lora_rank > 0)
    b.attn.q_norm.weight       a.q_a_layernorm.weight
    b.attn.q_up.weight         a.q_b_proj.weight                  (per head [nope d ; rope d_r], rope rows permuted)
    b.attn.q_proj.weight       a.q_proj.weight                    (q_lora_rank = 0; same layout)
    b.attn.kv_down.weight      a.kv_a_proj_with_mqa.weight[:d_c]
    b.attn.key_rope.weight     a.kv_a_proj_with_mqa.weight[d_c:]  (rope rows permuted)
    b.attn.kv_norm.weight      a.kv_a_layernorm.weight
    b.attn.k_up.weight         a.kv_b_proj.weight viewed (H, 2d, d_c)[:, :d]
    b.attn.v_up.weight         a.kv_b_proj.weight viewed (H, 2d, d_c)[:, d:]
    b.attn.proj.weight         a.o_proj.weight
    b.norm2.weight             l.post_attention_layernorm.weight
    b.mlp.{gate,up,proj}       l.mlp.{gate_proj,up_proj,down_proj}.weight
    norm.weight                model.norm.weight
    lm_head.weight             lm_head.weight                     (tied iff tie_embeddings)

DeepSeek-V3's attention has the same weight names and the same interleaved
layout (``rope_interleave=True``): a dense DeepseekV3ForCausalLM loaded with this mapping gave
the same logits (checked by hand, 2.6e-6), but importing it is not wired up here.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, DeepseekV2Config, DeepseekV2ForCausalLM

from ..config import ModelConfig
from ..models.positions import interleaved_to_half
from .common import needs_mismatches

TITLE = "DeepSeek-V2"
HF_CLASS = DeepseekV2ForCausalLM
AUTO_CLASS = AutoModelForCausalLM
NEEDS = {"attention": "mla", "norm": "rmsnorm", "norm_placement": "pre", "head": "linear", "mlp": "swiglu",
         "position": "rope", "bias": False}


def mismatches(config: ModelConfig) -> list[str]:
    return needs_mismatches(config, NEEDS)


def config_to_hf(c: ModelConfig) -> DeepseekV2Config:
    return DeepseekV2Config(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_head, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, initializer_range=c.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": float(c.rope_base)},
        tie_word_embeddings=c.tie_embeddings, attention_bias=False, mlp_bias=False, attention_dropout=c.dropout,
        first_k_dense_replace=c.n_layer,  # every layer dense: no mixture of experts
        kv_lora_rank=c.kv_lora_rank, q_lora_rank=c.q_lora_rank or None, qk_nope_head_dim=c.head_dim,
        qk_rope_head_dim=c.rope_head_dim, v_head_dim=c.head_dim, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )


def _permute_query_rope_rows(weight: torch.Tensor, c: ModelConfig, order: torch.Tensor) -> torch.Tensor:
    """Reorder the rope rows inside each head's [nope ; rope] block of a query projection."""
    per_head = weight.view(c.n_head, c.head_dim + c.rope_head_dim, -1)
    nope, rope = per_head.split((c.head_dim, c.rope_head_dim), dim=1)
    return torch.cat((nope, rope[:, order]), dim=1).reshape(weight.shape)


def _query_names(c: ModelConfig) -> list[tuple[str, str]]:
    """(ours, theirs) names of the query path, under blocks.{i}.attn. / model.layers.{i}.self_attn."""
    if c.q_lora_rank > 0:
        return [("q_down", "q_a_proj"), ("q_norm", "q_a_layernorm"), ("q_up", "q_b_proj")]
    return [("q_proj", "q_proj")]


def _plain_pairs(i: int) -> list[tuple[str, str]]:
    l, b = f"model.layers.{i}.", f"blocks.{i}."
    return [(b + "norm1", l + "input_layernorm"), (b + "attn.kv_norm", l + "self_attn.kv_a_layernorm"),
            (b + "attn.proj", l + "self_attn.o_proj"), (b + "norm2", l + "post_attention_layernorm"),
            (b + "mlp.gate", l + "mlp.gate_proj"), (b + "mlp.up", l + "mlp.up_proj"),
            (b + "mlp.proj", l + "mlp.down_proj")]


def state_to_hf(sd: dict, c: ModelConfig) -> dict:
    half_to_interleaved = torch.argsort(interleaved_to_half(c.rope_head_dim))
    out = {"model.embed_tokens.weight": sd["token_embedding.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(c.n_layer):
        a, b = f"model.layers.{i}.self_attn.", f"blocks.{i}.attn."
        for ours, theirs in _plain_pairs(i):
            out[theirs + ".weight"] = sd[ours + ".weight"]
        for ours, theirs in _query_names(c):
            out[a + theirs + ".weight"] = sd[b + ours + ".weight"]
        query = a + _query_names(c)[-1][1] + ".weight"
        out[query] = _permute_query_rope_rows(out[query], c, half_to_interleaved)
        rope_key = sd[b + "key_rope.weight"][half_to_interleaved]
        out[a + "kv_a_proj_with_mqa.weight"] = torch.cat((sd[b + "kv_down.weight"], rope_key), dim=0)
        k_up = sd[b + "k_up.weight"].view(c.n_head, c.head_dim, -1)
        v_up = sd[b + "v_up.weight"].view(c.n_head, c.head_dim, -1)
        out[a + "kv_b_proj.weight"] = torch.cat((k_up, v_up), dim=1).reshape(-1, c.kv_lora_rank)
    return out


def config_from_hf(h: DeepseekV2Config) -> ModelConfig:
    rope = dict(h.rope_parameters or {})
    head_dim = h.hidden_size // h.num_attention_heads
    problems = []
    if h.first_k_dense_replace < h.num_hidden_layers:
        problems.append(f"mixture-of-experts layers (first_k_dense_replace={h.first_k_dense_replace} < "
                        f"num_hidden_layers={h.num_hidden_layers}); the workbench has dense MLPs only")
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type={rope['rope_type']!r} (RoPE scaling); the workbench has plain RoPE only")
    if h.hidden_act != "silu":
        problems.append(f"hidden_act={h.hidden_act!r} (SwiGLU uses 'silu')")
    if h.attention_bias or h.mlp_bias:
        problems.append("attention_bias/mlp_bias=True (the workbench's MLA model has no biases)")
    if h.num_key_value_heads != h.num_attention_heads:
        problems.append(f"num_key_value_heads={h.num_key_value_heads} != num_attention_heads")
    if not h.qk_nope_head_dim == h.v_head_dim == head_dim:
        problems.append(f"qk_nope_head_dim={h.qk_nope_head_dim} and v_head_dim={h.v_head_dim} must both equal "
                        f"hidden_size / num_attention_heads = {head_dim}")
    if problems:
        raise ValueError("cannot import this DeepSeek-V2 model: " + "; ".join(problems))
    return ModelConfig(
        vocab_size=h.vocab_size, block_size=h.max_position_embeddings, n_layer=h.num_hidden_layers,
        n_head=h.num_attention_heads, d_model=h.hidden_size, d_ff=h.intermediate_size,
        dropout=float(h.attention_dropout or 0.0), norm="rmsnorm", norm_eps=h.rms_norm_eps, mlp="swiglu",
        position="rope", rope_base=float(rope.get("rope_theta", 10000.0)), attention="mla",
        tie_embeddings=bool(h.tie_word_embeddings), bias=False, init_std=h.initializer_range,
        kv_lora_rank=h.kv_lora_rank, q_lora_rank=h.q_lora_rank or 0, rope_head_dim=h.qk_rope_head_dim,
    )


def state_from_hf(sd: dict, c: ModelConfig) -> dict:
    to_half = interleaved_to_half(c.rope_head_dim)
    out = {"token_embedding.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(c.n_layer):
        a, b = f"model.layers.{i}.self_attn.", f"blocks.{i}.attn."
        for ours, theirs in _plain_pairs(i):
            out[ours + ".weight"] = sd[theirs + ".weight"]
        for ours, theirs in _query_names(c):
            out[b + ours + ".weight"] = sd[a + theirs + ".weight"]
        query = b + _query_names(c)[-1][0] + ".weight"
        out[query] = _permute_query_rope_rows(out[query], c, to_half)
        latent, rope_key = sd[a + "kv_a_proj_with_mqa.weight"].split((c.kv_lora_rank, c.rope_head_dim), dim=0)
        out[b + "kv_down.weight"], out[b + "key_rope.weight"] = latent, rope_key[to_half]
        kv_up = sd[a + "kv_b_proj.weight"].view(c.n_head, 2 * c.head_dim, c.kv_lora_rank)
        out[b + "k_up.weight"] = kv_up[:, :c.head_dim].reshape(-1, c.kv_lora_rank)
        out[b + "v_up.weight"] = kv_up[:, c.head_dim:].reshape(-1, c.kv_lora_rank)
    return out
