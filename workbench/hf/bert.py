"""BERT (Devlin et al. 2019) <-> workbench: ``BertForMaskedLM`` both ways.

BERT is the workbench GPT with post-norm blocks, BERT's prediction head and
exact GELU, run with ``attention_mode="bidirectional"``. A config matches when
norm="layernorm", norm_placement="post", head="mlm", mlp="gelu_exact",
position="learned", bias=True, attention="mha" and n_kv_head == n_head.
``tie_embeddings`` maps to ``tie_word_embeddings`` (BERT ties the decoder to the
word embeddings by default; both settings convert).

Token types. BERT's embedding is word + position + token_type_embeddings[type]
(section 3.2, the segment embedding), then LayerNorm. The workbench has no
token types; with all-zero ``token_type_ids`` (BERT's default when none are
given) the segment term is the constant row token_type_embeddings[0], so:

* import folds that row into our position table (exact: every position gets it);
* export writes the token-type table as zeros (both rows), so an exported model
  gives the same logits whatever ``token_type_ids`` it is given.

A model imported from a checkpoint that was trained with two segments loses
segment 1's embedding; it behaves as if every token were in segment 0.

Weight names, workbench -> BERT (``e = bert.embeddings.``, ``l = bert.encoder.layer.{i}.``,
``p = cls.predictions.``, ``b = blocks.{i}.``):

    token_embedding.weight      e.word_embeddings.weight
    positions.table.weight      e.position_embeddings.weight (+ e.token_type_embeddings.weight[0] on import)
    (none)                      e.token_type_embeddings.weight      (zeros on export)
    norm.{weight,bias}          e.LayerNorm.{weight,bias}          (post-norm: the embedding norm)
    b.attn.qkv.{weight,bias}    l.attention.self.{query,key,value}.{weight,bias}   (split by rows)
    b.attn.proj.{weight,bias}   l.attention.output.dense.{weight,bias}
    b.norm1.{weight,bias}       l.attention.output.LayerNorm.{weight,bias}
    b.mlp.fc.{weight,bias}      l.intermediate.dense.{weight,bias}
    b.mlp.proj.{weight,bias}    l.output.dense.{weight,bias}
    b.norm2.{weight,bias}       l.output.LayerNorm.{weight,bias}
    head_transform.dense.*      p.transform.dense.{weight,bias}
    head_transform.norm.*       p.transform.LayerNorm.{weight,bias}
    lm_head.weight              p.decoder.weight                    (tied to word_embeddings iff tie_embeddings)
    lm_head.bias                p.decoder.bias, written to p.bias too (one tensor when tied; untied,
                                transformers keeps p.bias as a separate copy that forward never reads)

Compare with ``model(ids, attention_mode="bidirectional", key_padding_mask=mask)``
against ``BertForMaskedLM(input_ids, attention_mask=mask)`` on real tokens: a
[PAD] query attends only to itself here and to every real key in BERT.
Dropout: BERT's hidden_dropout_prob is our one rate (attention_probs_dropout_prob
is set to the same on export); eval mode has none.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

from ..config import ModelConfig
from .common import needs_mismatches, same_kv_heads

TITLE = "BERT"
HF_CLASS = BertForMaskedLM
AUTO_CLASS = AutoModelForMaskedLM
NEEDS = {"norm": "layernorm", "norm_placement": "post", "head": "mlm", "mlp": "gelu_exact", "position": "learned",
         "bias": True, "attention": "mha"}
TYPE_VOCAB_SIZE = 2  # BERT's two segments; both rows zero on export


def mismatches(config: ModelConfig) -> list[str]:
    return needs_mismatches(config, NEEDS) + same_kv_heads(config)


def config_to_hf(c: ModelConfig) -> BertConfig:
    return BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
        intermediate_size=c.d_ff, hidden_act="gelu", hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.dropout, max_position_embeddings=c.block_size,
        type_vocab_size=TYPE_VOCAB_SIZE, initializer_range=c.init_std, layer_norm_eps=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings, is_decoder=False, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )


def _layer_pairs(i: int) -> list[tuple[str, str]]:
    """(ours, theirs) module names of block i whose .weight and .bias copy unchanged."""
    l, b = f"bert.encoder.layer.{i}.", f"blocks.{i}."
    return [(b + "attn.proj", l + "attention.output.dense"), (b + "norm1", l + "attention.output.LayerNorm"),
            (b + "mlp.fc", l + "intermediate.dense"), (b + "mlp.proj", l + "output.dense"),
            (b + "norm2", l + "output.LayerNorm")]


SHARED_PAIRS = [("norm", "bert.embeddings.LayerNorm"), ("head_transform.dense", "cls.predictions.transform.dense"),
                ("head_transform.norm", "cls.predictions.transform.LayerNorm")]
QKV = ("query", "key", "value")


def state_to_hf(sd: dict, c: ModelConfig) -> dict:
    e = "bert.embeddings."
    positions = sd["positions.table.weight"]
    out = {e + "word_embeddings.weight": sd["token_embedding.weight"], e + "position_embeddings.weight": positions,
           e + "token_type_embeddings.weight": positions.new_zeros(TYPE_VOCAB_SIZE, c.d_model)}
    pairs = list(SHARED_PAIRS)
    for i in range(c.n_layer):
        pairs += _layer_pairs(i)
        self_attn, qkv = f"bert.encoder.layer.{i}.attention.self.", f"blocks.{i}.attn.qkv."
        for kind in ("weight", "bias"):
            for name, part in zip(QKV, sd[qkv + kind].split(c.d_model, dim=0)):
                out[f"{self_attn}{name}.{kind}"] = part
    for ours, theirs in pairs:
        out[theirs + ".weight"], out[theirs + ".bias"] = sd[ours + ".weight"], sd[ours + ".bias"]
    out["cls.predictions.decoder.weight"] = sd["lm_head.weight"]
    out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"] = sd["lm_head.bias"]
    return out


def config_from_hf(h: BertConfig) -> ModelConfig:
    problems = []
    if h.hidden_act != "gelu":
        problems.append(f"hidden_act={h.hidden_act!r} (the workbench's BERT uses exact GELU, 'gelu')")
    if h.is_decoder or h.add_cross_attention:
        problems.append("is_decoder/add_cross_attention=True (only the bidirectional encoder converts)")
    if getattr(h, "position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type={h.position_embedding_type!r} (only 'absolute' converts)")
    if problems:
        raise ValueError("cannot import this BERT model: " + "; ".join(problems))
    return ModelConfig(
        vocab_size=h.vocab_size, block_size=h.max_position_embeddings, n_layer=h.num_hidden_layers,
        n_head=h.num_attention_heads, d_model=h.hidden_size, d_ff=h.intermediate_size,
        dropout=float(h.hidden_dropout_prob), norm="layernorm", norm_eps=h.layer_norm_eps, mlp="gelu_exact",
        position="learned", tie_embeddings=bool(h.tie_word_embeddings), bias=True, init_std=h.initializer_range,
        norm_placement="post", head="mlm",
    )


def state_from_hf(sd: dict, c: ModelConfig) -> dict:
    e = "bert.embeddings."
    segment_zero = sd[e + "token_type_embeddings.weight"][0]
    out = {"token_embedding.weight": sd[e + "word_embeddings.weight"],
           "positions.table.weight": sd[e + "position_embeddings.weight"] + segment_zero}  # fold token type 0
    pairs = list(SHARED_PAIRS)
    for i in range(c.n_layer):
        pairs += _layer_pairs(i)
        self_attn, qkv = f"bert.encoder.layer.{i}.attention.self.", f"blocks.{i}.attn.qkv."
        for kind in ("weight", "bias"):
            out[qkv + kind] = torch.cat([sd[f"{self_attn}{name}.{kind}"] for name in QKV], dim=0)
    for ours, theirs in pairs:
        out[ours + ".weight"], out[ours + ".bias"] = sd[theirs + ".weight"], sd[theirs + ".bias"]
    out["lm_head.weight"] = sd["cls.predictions.decoder.weight"]
    out["lm_head.bias"] = sd["cls.predictions.decoder.bias"]  # what BertLMPredictionHead.forward adds
    return out
