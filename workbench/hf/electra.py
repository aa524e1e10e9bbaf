"""ELECTRA's discriminator (Clark et al. 2020) -> transformers ``ElectraForPreTraining``.

What an ELECTRA run keeps is the discriminator: the Trainer's model plus the head the ``Electra``
objective owns. ``ElectraForPreTraining`` is exactly that pair, so the export gives a model whose
logits (one per token, > 0 = "replaced") equal ``objective.discriminator_logits(model, ids)``:

    logits = dense_prediction(GELU(dense(h_L)))     h_L = the encoder's last hidden state

transformers' ELECTRA encoder is BERT's (post-norm blocks, exact GELU, learned positions, biases,
word + position + token_type embeddings then LayerNorm). Here the embeddings are as wide as the
hidden states (``embedding_size == hidden_size``), so there is no ``embeddings_project``. So the
discriminator must be BERT-shaped: norm="layernorm", norm_placement="post", mlp="gelu_exact",
position="learned", bias=True, attention="mha", n_kv_head == n_head. The head may be "linear" or
"mlm": the discriminator never uses its LM head, so neither the decoder nor BERT's MLM head transform
is exported (``ElectraForPreTraining`` has no place for them).

Weight names, workbench -> ELECTRA: the encoder maps exactly as BERT's (``workbench.hf.bert``: the
same per-layer table with ``bert.`` renamed ``electra.``, token types written as zeros), and the head:

    objective.discriminator_head.dense.{weight,bias}             discriminator_predictions.dense.{weight,bias}
    objective.discriminator_head.dense_prediction.{weight,bias}  discriminator_predictions.dense_prediction.*

Compare on real tokens: with padding, pass ``key_padding_mask`` here and ``attention_mask`` there (a [PAD]
query attends only to itself here and to every real key in transformers). Eval mode has no dropout.
"""
from __future__ import annotations

from transformers import ElectraConfig, ElectraForPreTraining

from ..objectives.electra import Electra
from . import bert
from .common import load_exactly, needs_mismatches, same_kv_heads

TITLE = "ELECTRA discriminator"
HF_CLASS = ElectraForPreTraining
NEEDS = {k: v for k, v in bert.NEEDS.items() if k != "head"}  # BERT's encoder; the LM head is not exported


def mismatches(config) -> list[str]:
    return needs_mismatches(config, NEEDS) + same_kv_heads(config)


def config_to_hf(c) -> ElectraConfig:
    return ElectraConfig(
        vocab_size=c.vocab_size, embedding_size=c.d_model, hidden_size=c.d_model, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, intermediate_size=c.d_ff, hidden_act="gelu", hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.dropout, max_position_embeddings=c.block_size,
        type_vocab_size=bert.TYPE_VOCAB_SIZE, initializer_range=c.init_std, layer_norm_eps=c.norm_eps,
        position_embedding_type="absolute", is_decoder=False, pad_token_id=None, bos_token_id=None,
        eos_token_id=None,
    )


def state_to_hf(model_state: dict, head_state: dict, c) -> dict:
    """ELECTRA's state dict from the discriminator's and its head's, reusing BERT's encoder mapping."""
    # bert.state_to_hf also maps BERT's MLM head; give it placeholders for a head="linear" model and drop
    # everything it writes under cls. (the encoder is all ELECTRA's discriminator shares with BERT)
    placeholders = {name: None for name in ("head_transform.dense.weight", "head_transform.dense.bias",
                                            "head_transform.norm.weight", "head_transform.norm.bias",
                                            "lm_head.weight", "lm_head.bias")}
    encoder = bert.state_to_hf({**placeholders, **model_state}, c)
    out = {"electra." + name[len("bert."):]: tensor for name, tensor in encoder.items() if name.startswith("bert.")}
    for name, tensor in head_state.items():
        out["discriminator_predictions." + name] = tensor
    return out


def electra_discriminator_to_transformers(model, objective: Electra) -> ElectraForPreTraining:
    """The discriminator ``model`` with ``objective``'s head as an ``ElectraForPreTraining`` (same device,
    dtype and train/eval mode) whose logits equal ``objective.discriminator_logits(model, ids)``."""
    model = getattr(model, "_orig_mod", model)
    config = model.config
    wrong = mismatches(config)
    if wrong:
        raise ValueError(
            "this discriminator cannot export to ElectraForPreTraining, whose encoder is BERT's: it needs "
            + ", ".join(wrong) + ". Train an ELECTRA discriminator from a BERT-shaped config (config.replace(...))"
        )
    if not isinstance(objective, Electra):
        raise ValueError(f"objective must be the Electra objective the model was trained with, got "
                         f"{type(objective).__name__}")
    objective._check_setup(model)
    hf_config = config_to_hf(config)
    hf_model = ElectraForPreTraining._from_config(hf_config, attn_implementation="sdpa")
    weight = model.token_embedding.weight
    hf_model.to(device=weight.device, dtype=weight.dtype)
    load_exactly(hf_model, state_to_hf(model.state_dict(), objective.discriminator_head.state_dict(), config))
    return hf_model.train(model.training)


__all__ = ["electra_discriminator_to_transformers", "mismatches", "config_to_hf", "state_to_hf"]
