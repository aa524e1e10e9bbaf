"""A GPT built from small parts: embedding -> blocks -> norm -> LM head.

Each block is pre-norm (GPT-2, Radford et al. 2019):

    h = x + Attention(Norm(x))
    y = h + MLP(Norm(h))

and the LM head maps the final normalized state to one logit per vocabulary
entry. With ``tie_embeddings`` the head reuses the token embedding matrix
(Press & Wolf 2017).

``norm_placement="post"`` gives the original Transformer's and BERT's order
instead (Vaswani et al. 2017; Devlin et al. 2019): the embeddings are
normalized, and each sub-layer's residual sum is normalized after the add,

    h = Norm(x + Attention(x)),   y = Norm(h + MLP(h)),

with no final norm. ``head="mlm"`` adds BERT's prediction head transform,
Norm(act(W h + b)), before the decoder, which then has a bias of its own.
The same model is a GPT with ``attention_mode="causal"`` and a BERT-style
encoder with ``attention_mode="bidirectional"``.

For teaching, ``forward`` can return every block's attention probabilities
(``return_attentions``) and the residual stream after the embedding and
after each block (``return_hidden_states``), and the model reports its
parameter count, FLOPs per token and KV-cache bytes per token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from ..config import ModelConfig
from ..device import seeded
from .attention import ATTENTION, AttentionContext
from .mlp import activation, make_mlp
from .norms import make_norm
from .positions import LearnedPositions, RotaryEmbedding, alibi_slopes


def rotary_dim(config: ModelConfig) -> int:
    """Channels RoPE rotates per head: head_dim, or what the variant's ``rotary_dim(config)`` says (MLA's
    decoupled RoPE key is rope_head_dim wide)."""
    variant = ATTENTION.get(config.attention)
    return variant.rotary_dim(config) if hasattr(variant, "rotary_dim") else config.head_dim


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.post_norm = config.norm_placement == "post"
        self.norm1 = make_norm(config)
        self.attn = ATTENTION.get(config.attention)(config, layer_index)
        self.norm2 = make_norm(config)
        self.mlp = make_mlp(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, ctx: AttentionContext, cache=None, cache_start: int = 0):
        if self.post_norm:
            attended, probs = self.attn(x, ctx, cache, cache_start)
            x = self.norm1(x + self.dropout(attended))
            return self.norm2(x + self.dropout(self.mlp(x))), probs
        attended, probs = self.attn(self.norm1(x), ctx, cache, cache_start)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x, probs


class MLMHeadTransform(nn.Module):
    """BERT's prediction-head transform (Devlin et al. 2019): Norm(act(W h + b)), applied before the decoder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model, bias=True)
        self.act = activation(config)
        self.norm = make_norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class Cache:
    """The whole model's generation state: one cache per layer and the length so far."""

    def __init__(self, layers: list, max_len: int):
        self.layers = layers
        self.max_len = max_len
        self.length = 0

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)


@dataclass
class ModelOutput:
    logits: torch.Tensor                             # (B, T, vocab)
    attentions: Optional[list[torch.Tensor]] = None  # per layer (B, heads, T_q, T_k)
    hidden_states: Optional[list[torch.Tensor]] = None  # embedding output, then each block's output
    cache: Optional[Cache] = None


class GPT(nn.Module):
    """A decoder-only Transformer (GPT-2's shape) assembled from the parts named in ``config``.

    ``seed`` makes the initial weights a function of the seed alone (torch's global RNG is left as it
    was); without it they come from the global RNG, as in any torch module.
    """

    def __init__(self, config: ModelConfig, seed: Optional[int] = None):
        super().__init__()
        self.config = config
        with seeded(seed):  # the initial weights are drawn inside
            self._build(config)

    def _build(self, config: ModelConfig) -> None:
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = LearnedPositions(config.block_size, config.d_model) if config.position == "learned" else None
        self.rope = RotaryEmbedding(rotary_dim(config), config.rope_base) if config.position == "rope" else None
        if config.position == "alibi":
            self.register_buffer("alibi", alibi_slopes(config.n_head), persistent=False)
        else:
            self.alibi = None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)  # pre-norm: after the last block; post-norm: on the embeddings
        self.head_transform = MLMHeadTransform(config) if config.head == "mlm" else None
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.head == "mlm")
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the
        # residual stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(param, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        *,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mode: str = "causal",
        prefix_len: Union[int, torch.Tensor, None] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        cache: Optional[Cache] = None,
        return_attentions: bool = False,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """Run the model on token ids (B, T) or embeddings (B, T, d_model).

        ``attention_mode``: "causal", "bidirectional" or "prefix" (with
        ``prefix_len``, an int or a (B,) tensor). ``key_padding_mask`` (B, T)
        is True for real tokens. ``cache`` (from ``new_cache``) makes this an
        incremental step: the inputs continue the cached sequence.
        """
        x = self._embed(input_ids, inputs_embeds)
        B, T, _ = x.shape
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + T, device=x.device)
        if self.positions is not None:
            x = x + self.positions(positions)
        if self.config.norm_placement == "post":
            x = self.norm(x)
        x = self.dropout(x)
        if isinstance(prefix_len, int):
            prefix_len = torch.full((B,), prefix_len, device=x.device, dtype=torch.long)
        ctx = AttentionContext(
            mode=attention_mode,
            positions=positions,
            prefix_len=prefix_len,
            key_padding=key_padding_mask,
            rope=self.rope.cos_sin(positions) if self.rope is not None else None,
            need_weights=return_attentions,
            alibi=self.alibi,
        )
        if attention_mode not in ("causal", "bidirectional", "prefix"):
            ctx.mask(T)  # raises the clear error
        ctx.check_mode(self.blocks[0].attn)
        # A cache holds states that later tokens must not change, so every call is causal, with one
        # exception: a prefix LM's prompt, read bidirectionally by the first call into an empty cache with
        # the whole prefix in that call. Later calls are causal, which is exactly the prefix LM's mask.
        prompt_prefill = (attention_mode == "prefix" and cache is not None and cache.length == 0
                          and (prefix_len is None or int(prefix_len.max()) <= T))
        if cache is not None and attention_mode != "causal" and not prompt_prefill:
            raise ValueError(
                f"a KV cache only makes sense with attention_mode='causal' (got {attention_mode!r}): "
                "later tokens would change earlier tokens' states; run without a cache (a prefix LM may use "
                "attention_mode='prefix' only on the first call into an empty cache, with prefix_len <= the "
                "tokens of that call)"
            )
        attentions = [] if return_attentions else None
        hidden_states = [x] if return_hidden_states else None
        for i, block in enumerate(self.blocks):
            x, probs = block(x, ctx, cache.layers[i] if cache is not None else None, start)
            if attentions is not None:
                attentions.append(probs)
            if hidden_states is not None:
                hidden_states.append(x)
        if cache is not None:
            cache.length += T
        if self.config.norm_placement == "pre":
            x = self.norm(x)
        if self.head_transform is not None:
            x = self.head_transform(x)
        logits = self.lm_head(x)
        return ModelOutput(logits=logits, attentions=attentions, hidden_states=hidden_states, cache=cache)

    def _embed(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (B, T) or inputs_embeds (B, T, d_model)")
        if inputs_embeds is not None:
            return inputs_embeds
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, time), got {tuple(input_ids.shape)}")
        if input_ids.numel() and (int(input_ids.max()) >= self.config.vocab_size or int(input_ids.min()) < 0):
            raise ValueError(
                f"input_ids contain ids outside [0, {self.config.vocab_size}); the tokenizer and the model "
                "disagree on the vocabulary: build the model with vocab_size=tokenizer.vocab_size"
            )
        return self.token_embedding(input_ids)

    # ------------------------------------------------------------------ cache
    def new_cache(self, batch_size: int, max_len: Optional[int] = None) -> Cache:
        """An empty generation cache for ``batch_size`` sequences of up to ``max_len`` tokens."""
        max_len = max_len or self.config.block_size
        param = self.token_embedding.weight
        layers = [block.attn.new_cache(batch_size, max_len, param.device, param.dtype) for block in self.blocks]
        return Cache(layers, max_len)

    # ------------------------------------------------------------------ accounting
    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters, counting a tied matrix once. ``non_embedding`` drops token/position tables
        (Kaplan et al. 2020 count N this way)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.token_embedding.weight.numel()
            if self.positions is not None:
                total -= self.positions.table.weight.numel()
        return total

    def flops_per_token(self, context: Optional[int] = None, training: bool = True) -> int:
        """FLOPs to process one token: 2 per multiply-add of every weight matrix (incl. the LM head)
        plus attention's q k^T and probs @ v over ``context`` keys; training (forward + backward)
        is 3x forward. For full attention this is PaLM's accounting (Chowdhery et al. 2022, App. B:
        6N + 12 L d T per token); Kaplan et al. (2020) count 2 L T d for attention's forward instead of 4."""
        context = context or self.config.block_size
        # every nn.Linear weight once (the LM head included, tied or not); biases and norm gains are not matmuls
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        forward = 2 * matmul_params + sum(b.attn.attention_flops_per_token(context) for b in self.blocks)
        return 3 * forward if training else forward

    def cache_bytes(self, context: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of generation state (KV cache, latent or recurrent state) after ``context`` tokens, all layers."""
        element = torch.empty((), dtype=dtype).element_size()
        return sum(block.attn.cache_bytes(context, element) for block in self.blocks)

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        """What one more token of context adds to the cache at full context (0 for fixed-size states)."""
        context = self.config.block_size
        return self.cache_bytes(context, dtype) - self.cache_bytes(context - 1, dtype)

    def summary(self) -> str:
        c = self.config
        heads = f"{c.n_head} heads ({c.n_kv_head} kv)" if c.attention == "mha" else f"{c.n_head} heads, {c.attention}"
        return (
            f"GPT: {c.n_layer} layers, {heads}, width {c.d_model}, "
            f"context {c.block_size}, vocab {c.vocab_size}, {c.norm}, {c.mlp}, {c.position} positions | "
            f"{self.num_parameters():,} parameters, {self.flops_per_token():,} training FLOPs/token, "
            f"{self.kv_cache_bytes_per_token():,} KV-cache bytes/token (fp32)"
        )
