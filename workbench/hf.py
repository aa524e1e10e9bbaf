"""Interop with Hugging Face ``transformers``: export, import, and load from the hub.

A workbench ``GPT`` whose config matches GPT-2 or Llama exports to the native
``transformers`` class, so everything built for those classes works on it
(``generate``, ``save_pretrained``, pipelines, the hub); and a ``GPT2LMHeadModel``
or ``LlamaForCausalLM`` imports back into a ``GPT`` you can read, probe and train::

    hf_model = to_transformers(model)        # GPT -> GPT2LMHeadModel / LlamaForCausalLM
    model = from_transformers(hf_model)      # and back, same logits
    model = load_pretrained("gpt2")          # hub name, or a local save_pretrained directory

Which architecture a config matches (anything else raises ``ValueError``):

    GPT-2: norm="layernorm", mlp="gelu" (tanh GELU = "gelu_new"), position="learned",
           bias=True, n_kv_head == n_head, attention="mha"
    Llama: norm="rmsnorm", mlp="swiglu", position="rope", bias=False, attention="mha"
           (any n_kv_head: grouped-query attention)

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

Weight names, workbench -> Llama (``l = model.layers.{i}``). Our fused ``qkv``
splits by rows into q (d_model), k and v (n_kv_head * head_dim each). Our RoPE
uses Llama's rotate-half layout, so q/k need no permutation (that permutation
only exists for Meta's original interleaved checkpoints):

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

Dropout: GPT-2 has the same three dropouts as the workbench (embedding,
residual, attention probabilities). HF Llama only has attention dropout, so an
exported Llama trained with dropout > 0 differs from ours; inference is identical.
"""
from __future__ import annotations

import os

import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          PreTrainedModel)

from .config import ModelConfig
from .models.transformer import GPT

SUPPORTED = "GPT2LMHeadModel (model_type 'gpt2') and LlamaForCausalLM (model_type 'llama')"

# What each architecture needs from a ModelConfig (n_kv_head == n_head is checked separately for GPT-2).
GPT2_NEEDS = {"norm": "layernorm", "mlp": "gelu", "position": "learned", "bias": True, "attention": "mha"}
LLAMA_NEEDS = {"norm": "rmsnorm", "mlp": "swiglu", "position": "rope", "bias": False, "attention": "mha"}


class HubUnavailableError(RuntimeError):
    """A model could not be fetched from the Hugging Face hub (offline, unreachable, or no such model)."""


# ---------------------------------------------------------------- which architecture
def _mismatches(config: ModelConfig, needs: dict) -> list[str]:
    wrong = [f"{k}={v!r} (got {getattr(config, k)!r})" for k, v in needs.items() if getattr(config, k) != v]
    if needs is GPT2_NEEDS and config.n_kv_head != config.n_head:
        wrong.append(f"n_kv_head == n_head={config.n_head} (got {config.n_kv_head})")
    return wrong


def architecture(config: ModelConfig) -> str:
    """'gpt2' or 'llama': the transformers architecture ``config`` exports to; ValueError if none."""
    gpt2, llama = _mismatches(config, GPT2_NEEDS), _mismatches(config, LLAMA_NEEDS)
    if not gpt2:
        return "gpt2"
    if not llama:
        return "llama"
    raise ValueError(
        "this model matches no transformers architecture: GPT-2 export needs " + ", ".join(gpt2)
        + "; Llama export needs " + ", ".join(llama)
        + ". Only those two shapes export: build the model from a config that matches one (config.replace(...))."
    )


# ---------------------------------------------------------------- GPT-2
def _gpt2_config(c: ModelConfig) -> GPT2Config:
    return GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.d_model, n_layer=c.n_layer, n_head=c.n_head,
        n_inner=c.d_ff, activation_function="gelu_new", layer_norm_epsilon=c.norm_eps,
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, initializer_range=c.init_std,
        tie_word_embeddings=c.tie_embeddings, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def _gpt2_state_to_hf(sd: dict, c: ModelConfig) -> dict:
    out = {"transformer.wte.weight": sd["token_embedding.weight"],
           "transformer.wpe.weight": sd["positions.table.weight"]}
    for i in range(c.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[h + theirs + ".weight"], out[h + theirs + ".bias"] = sd[b + ours + ".weight"], sd[b + ours + ".bias"]
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            out[h + theirs + ".weight"] = sd[b + ours + ".weight"].t()  # Conv1D: (in, out)
            out[h + theirs + ".bias"] = sd[b + ours + ".bias"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm.weight"], sd["norm.bias"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _gpt2_config_from_hf(h: GPT2Config) -> ModelConfig:
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


def _gpt2_state_from_hf(sd: dict, c: ModelConfig) -> dict:
    out = {"token_embedding.weight": sd["transformer.wte.weight"],
           "positions.table.weight": sd["transformer.wpe.weight"]}
    for i in range(c.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[b + ours + ".weight"], out[b + ours + ".bias"] = sd[h + theirs + ".weight"], sd[h + theirs + ".bias"]
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            out[b + ours + ".weight"] = sd[h + theirs + ".weight"].t()  # Conv1D (in, out) -> Linear (out, in)
            out[b + ours + ".bias"] = sd[h + theirs + ".bias"]
    out["norm.weight"], out["norm.bias"] = sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    return out


# ---------------------------------------------------------------- Llama
def _llama_config(c: ModelConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, initializer_range=c.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": float(c.rope_base)},
        tie_word_embeddings=c.tie_embeddings, attention_bias=False, mlp_bias=False, attention_dropout=c.dropout,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def _llama_state_to_hf(sd: dict, c: ModelConfig) -> dict:
    out = {"model.embed_tokens.weight": sd["token_embedding.weight"]}
    kv_width = c.n_kv_head * c.head_dim
    for i in range(c.n_layer):
        l, b = f"model.layers.{i}.", f"blocks.{i}."
        q, k, v = sd[b + "attn.qkv.weight"].split((c.d_model, kv_width, kv_width), dim=0)
        out.update({
            l + "input_layernorm.weight": sd[b + "norm1.weight"],
            l + "self_attn.q_proj.weight": q, l + "self_attn.k_proj.weight": k, l + "self_attn.v_proj.weight": v,
            l + "self_attn.o_proj.weight": sd[b + "attn.proj.weight"],
            l + "post_attention_layernorm.weight": sd[b + "norm2.weight"],
            l + "mlp.gate_proj.weight": sd[b + "mlp.gate.weight"],
            l + "mlp.up_proj.weight": sd[b + "mlp.up.weight"],
            l + "mlp.down_proj.weight": sd[b + "mlp.proj.weight"],
        })
    out["model.norm.weight"] = sd["norm.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _llama_config_from_hf(h: LlamaConfig) -> ModelConfig:
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


def _llama_state_from_hf(sd: dict, c: ModelConfig) -> dict:
    out = {"token_embedding.weight": sd["model.embed_tokens.weight"]}
    for i in range(c.n_layer):
        l, b = f"model.layers.{i}.", f"blocks.{i}."
        qkv = [sd[l + f"self_attn.{name}_proj.weight"] for name in ("q", "k", "v")]
        out.update({
            b + "norm1.weight": sd[l + "input_layernorm.weight"],
            b + "attn.qkv.weight": torch.cat(qkv, dim=0),
            b + "attn.proj.weight": sd[l + "self_attn.o_proj.weight"],
            b + "norm2.weight": sd[l + "post_attention_layernorm.weight"],
            b + "mlp.gate.weight": sd[l + "mlp.gate_proj.weight"],
            b + "mlp.up.weight": sd[l + "mlp.up_proj.weight"],
            b + "mlp.proj.weight": sd[l + "mlp.down_proj.weight"],
        })
    out["norm.weight"] = sd["model.norm.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    return out


# ---------------------------------------------------------------- public API
def _load(module: torch.nn.Module, state: dict) -> None:
    """Copy ``state`` into ``module``; every name must match exactly (a mapping bug fails loudly)."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight mapping bug: missing {missing}, unexpected {unexpected}")


def to_transformers(model: GPT, tokenizer=None) -> PreTrainedModel:
    """The same network as a ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` (same device, dtype, train/eval mode).

    With ``tokenizer`` (anything with ``bos_id``/``eos_id``/``pad_id``) the model and generation configs
    get those special-token ids, so ``generate`` stops at end-of-sequence; without, there is no early stop.
    """
    config = model.config
    arch = architecture(config)
    hf_config = _gpt2_config(config) if arch == "gpt2" else _llama_config(config)
    if tokenizer is not None:
        for name in ("bos", "eos", "pad"):
            token_id = getattr(tokenizer, f"{name}_id", None)
            if token_id is not None and not 0 <= token_id < config.vocab_size:
                raise ValueError(f"tokenizer.{name}_id={token_id} is outside the model's vocabulary "
                                 f"[0, {config.vocab_size}); is this the tokenizer the model was trained with?")
            setattr(hf_config, f"{name}_token_id", token_id)
    # SDPA runs on CPU, CUDA and MPS; set_attn_implementation("eager") shows attention probabilities.
    hf_model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    to_hf = _gpt2_state_to_hf if arch == "gpt2" else _llama_state_to_hf
    weight = model.token_embedding.weight
    hf_model.to(device=weight.device, dtype=weight.dtype)
    _load(hf_model, to_hf(model.state_dict(), config))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(hf_model.generation_config, name, getattr(hf_config, name))
    return hf_model.train(model.training)


def from_transformers(hf_model: PreTrainedModel) -> GPT:
    """A workbench ``GPT`` with the same config and weights as a GPT-2 or Llama ``transformers`` model."""
    if isinstance(hf_model, GPT2LMHeadModel):
        config_from_hf, from_hf = _gpt2_config_from_hf, _gpt2_state_from_hf
    elif isinstance(hf_model, LlamaForCausalLM):
        config_from_hf, from_hf = _llama_config_from_hf, _llama_state_from_hf
    else:
        model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
        raise ValueError(
            f"cannot import {type(hf_model).__name__} (model_type {model_type!r}); supported are {SUPPORTED}. "
            "For a GPT-2 or Llama checkpoint load it with AutoModelForCausalLM so it has its LM head."
        )
    config = config_from_hf(hf_model.config)
    weight = hf_model.get_input_embeddings().weight
    model = GPT(config).to(device=weight.device, dtype=weight.dtype)
    _load(model, from_hf(hf_model.state_dict(), config))
    return model.train(hf_model.training)


def load_pretrained(name_or_path: str, **kwargs) -> GPT:
    """Load a GPT-2 or Llama checkpoint (hub name or local ``save_pretrained`` directory) as a workbench GPT.

    ``kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``revision``); weights load in fp32
    unless ``dtype`` says otherwise. A hub name that cannot be fetched raises ``HubUnavailableError``.
    """
    kwargs.setdefault("dtype", torch.float32)
    if os.path.isdir(name_or_path):  # local: errors are about the directory, not the network
        return from_transformers(AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs))
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as error:  # transformers reports offline / unreachable / unknown repo as OSError
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = ("HF_HUB_OFFLINE is set, so the hub is not contacted" if offline else
               "the hub is unreachable (no network?) or has no model of that name")
        raise HubUnavailableError(
            f"could not load {name_or_path!r} from the Hugging Face hub: {why} and it is not in the local cache. "
            "A directory written by save_pretrained works offline: load_pretrained('path/to/dir'). "
            f"(transformers said: {str(error).splitlines()[0]})"
        ) from error
    return from_transformers(hf_model)
