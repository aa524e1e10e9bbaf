"""Interop with Hugging Face ``transformers``: export, import, and load from the hub.

A workbench ``GPT`` whose config matches GPT-2, Llama, BERT or DeepSeek-V2
exports to the native ``transformers`` class, so everything built for those
classes works on it (``generate``, ``save_pretrained``, pipelines, the hub); and
such a ``transformers`` model imports back into a ``GPT`` you can read, probe
and train::

    hf_model = to_transformers(model)        # GPT -> GPT2LMHeadModel / LlamaForCausalLM / ...
    model = from_transformers(hf_model)      # and back, same logits
    model = load_pretrained("gpt2")          # hub name, or a local save_pretrained directory

One module per architecture holds its config conversion and weight-name
mapping table (see each docstring):

    gpt2.py         GPT2LMHeadModel        norm="layernorm", mlp="gelu" (tanh), position="learned", bias=True,
                                           attention="mha", n_kv_head == n_head
    llama.py        LlamaForCausalLM       norm="rmsnorm", mlp="swiglu", position="rope", bias=False,
                                           attention="mha" (any n_kv_head: grouped-query attention)
    bert.py         BertForMaskedLM        norm="layernorm", norm_placement="post", head="mlm",
                                           mlp="gelu_exact", position="learned", bias=True, attention="mha",
                                           n_kv_head == n_head (run it with attention_mode="bidirectional")
    deepseek_v2.py  DeepseekV2ForCausalLM  attention="mla", norm="rmsnorm", mlp="swiglu", position="rope",
                                           bias=False (dense MLPs; no mixture of experts)
    electra.py      ElectraForPreTraining  an ELECTRA discriminator (a BERT-shaped model, any head) with the
                                           Electra objective's discriminator head:
                                           electra_discriminator_to_transformers(model, objective)

The three causal families need norm_placement="pre" and head="linear". A config
that matches none raises one ``ValueError`` listing what each would need.
"""
from __future__ import annotations

import os

import torch
from transformers import AutoConfig, PreTrainedModel

from ..models.transformer import GPT
from . import bert, deepseek_v2, gpt2, llama
from .common import load_exactly
from .electra import electra_discriminator_to_transformers  # noqa: F401

FAMILIES = {"gpt2": gpt2, "llama": llama, "bert": bert, "deepseek_v2": deepseek_v2}
SUPPORTED = ("GPT2LMHeadModel (model_type 'gpt2'), LlamaForCausalLM (model_type 'llama'), "
             "BertForMaskedLM (model_type 'bert') and DeepseekV2ForCausalLM (model_type 'deepseek_v2')")


class HubUnavailableError(RuntimeError):
    """A model could not be fetched from the Hugging Face hub (offline, unreachable, or no such model)."""


def architecture(config) -> str:
    """'gpt2', 'llama', 'bert' or 'deepseek_v2': the transformers architecture ``config`` exports to."""
    wrong = {}
    for name, family in FAMILIES.items():
        wrong[name] = family.mismatches(config)
        if not wrong[name]:
            return name
    needs = "; ".join(f"{FAMILIES[name].TITLE} export needs " + ", ".join(w) for name, w in wrong.items())
    raise ValueError(
        f"this model matches no transformers architecture: {needs}. Only those shapes export: build the model "
        "from a config that matches one (config.replace(...))."
    )


def to_transformers(model: GPT, tokenizer=None) -> PreTrainedModel:
    """The same network as a ``transformers`` model (same device, dtype, train/eval mode).

    ``GPT2LMHeadModel``, ``LlamaForCausalLM``, ``BertForMaskedLM`` or ``DeepseekV2ForCausalLM``, by
    ``architecture(model.config)``. With ``tokenizer`` (anything with ``bos_id``/``eos_id``/``pad_id``) the
    model and generation configs get those special-token ids, so ``generate`` stops at end-of-sequence;
    without, there is no early stop.
    """
    config = model.config
    family = FAMILIES[architecture(config)]
    hf_config = family.config_to_hf(config)
    if tokenizer is not None:
        for name in ("bos", "eos", "pad"):
            token_id = getattr(tokenizer, f"{name}_id", None)
            if token_id is not None and not 0 <= token_id < config.vocab_size:
                raise ValueError(f"tokenizer.{name}_id={token_id} is outside the model's vocabulary "
                                 f"[0, {config.vocab_size}); is this the tokenizer the model was trained with?")
            setattr(hf_config, f"{name}_token_id", token_id)
    # SDPA runs on CPU, CUDA and MPS; set_attn_implementation("eager") shows attention probabilities.
    hf_model = family.AUTO_CLASS.from_config(hf_config, attn_implementation="sdpa")
    weight = model.token_embedding.weight
    hf_model.to(device=weight.device, dtype=weight.dtype)
    load_exactly(hf_model, family.state_to_hf(model.state_dict(), config))
    if hf_model.can_generate():  # a masked LM (BERT) has no generation config
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(hf_model.generation_config, name, getattr(hf_config, name))
    return hf_model.train(model.training)


def from_transformers(hf_model: PreTrainedModel) -> GPT:
    """A workbench ``GPT`` with the same config and weights as a supported ``transformers`` model."""
    family = next((f for f in FAMILIES.values() if isinstance(hf_model, f.HF_CLASS)), None)
    if family is None:
        model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
        raise ValueError(
            f"cannot import {type(hf_model).__name__} (model_type {model_type!r}); supported are {SUPPORTED}. "
            "Load a checkpoint with its LM head: AutoModelForCausalLM for GPT-2, Llama and DeepSeek-V2, "
            "AutoModelForMaskedLM for BERT."
        )
    config = family.config_from_hf(hf_model.config)
    weight = hf_model.get_input_embeddings().weight
    model = GPT(config).to(device=weight.device, dtype=weight.dtype)
    load_exactly(model, family.state_from_hf(hf_model.state_dict(), config))
    return model.train(hf_model.training)


HUB_OPTIONS = ("revision", "cache_dir", "token", "local_files_only", "trust_remote_code")


def _auto_load(name_or_path: str, kwargs: dict) -> PreTrainedModel:
    """AutoModelForMaskedLM for a BERT checkpoint, AutoModelForCausalLM for everything else."""
    hub_options = {k: kwargs[k] for k in HUB_OPTIONS if k in kwargs}
    model_type = AutoConfig.from_pretrained(name_or_path, **hub_options).model_type
    auto_class = bert.AUTO_CLASS if model_type == "bert" else gpt2.AUTO_CLASS
    return auto_class.from_pretrained(name_or_path, **kwargs)


def load_pretrained(name_or_path: str, **kwargs) -> GPT:
    """Load a GPT-2, Llama, BERT or DeepSeek-V2 checkpoint (hub name or local ``save_pretrained`` directory).

    ``kwargs`` go to ``from_pretrained`` (e.g. ``revision``); weights load in fp32 unless ``dtype`` says
    otherwise. A hub name that cannot be fetched raises ``HubUnavailableError``.
    """
    kwargs.setdefault("dtype", torch.float32)
    if os.path.isdir(name_or_path):  # local: errors are about the directory, not the network
        return from_transformers(_auto_load(name_or_path, kwargs))
    try:
        hf_model = _auto_load(name_or_path, kwargs)
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


__all__ = ["HubUnavailableError", "SUPPORTED", "architecture", "electra_discriminator_to_transformers",
           "from_transformers", "load_pretrained", "to_transformers"]
