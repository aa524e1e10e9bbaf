"""Prefix language modeling: a non-causal decoder (Raffel et al. 2020, sec. 3.2.1; Dong et al. 2019, UniLM).

Each row of a batch is split at a prefix length P. The first P input
tokens form the prefix, read bidirectionally; the rest is read causally:

    query i may attend key j   iff   j <= i  or  j < P.

Inputs are the window without its last token, x_0..x_{T-1}; position t
predicts x_{t+1}, as in causal LM. A target that lies inside the prefix
(window index t + 1 < P) is visible to position t through the prefix's
bidirectional attention, so it is not scored; every target outside the
prefix (t + 1 >= P) is:

    L(theta) = -(1 / N) * sum_{t : t + 1 >= P} log p_theta(x_{t+1} | x_<P bidirectional, x_P..x_t causal)

Position P - 1, the prefix's last, predicts the first suffix token x_P,
which it cannot see (key P is neither <= P - 1 nor < P). With P = 0 every
target is scored and the mask is causal: this is exactly the causal LM
loss. P = 1 gives the same mask and scores the same targets, so for P <= 1
the causal mask (and PyTorch's fused causal kernel) is used and the loss is
CLM's to the last bit.

``prefix_fraction=None`` draws P uniformly in {0, ..., T - 1} for every row
(from the generator); a float f in [0, 1) fixes P = floor(f * T).

``prefix_lm_generate`` samples from such a model as it was trained: the
prompt is the prefix, read bidirectionally once into a KV cache; each new
token then attends causally to the prompt and to the tokens before it.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from ..generate import next_token
from ..validation import check_int, check_range
from .base import IGNORE, OBJECTIVES, Corruption, Objective


@OBJECTIVES.register("prefix_lm")
class PrefixLM(Objective):
    name = "prefix_lm"
    attention_mode = "prefix"

    def __init__(self, prefix_fraction: Optional[float] = None):
        if prefix_fraction is not None:
            check_range("PrefixLM", "prefix_fraction", prefix_fraction, 0.0, 1.0, high_open=True)
        super().__init__(prefix_fraction=prefix_fraction)
        self.prefix_fraction = prefix_fraction

    def prefix_lengths(self, batch_size: int, length: int, generator=None) -> torch.Tensor:
        """P for each row (a CPU tensor): uniform in {0, ..., length - 1}, or floor(prefix_fraction * length)."""
        if self.prefix_fraction is None:
            return torch.randint(0, length, (batch_size,), generator=generator, device="cpu")
        return torch.full((batch_size,), math.floor(self.prefix_fraction * length), dtype=torch.long)

    def corrupt(self, batch: torch.Tensor, vocab_size: int, generator=None) -> Corruption:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        B, T = inputs.shape
        prefix = self.prefix_lengths(B, T, generator)
        target_index = torch.arange(1, T + 1)             # window index of the token position t predicts
        in_prefix = target_index[None, :] < prefix[:, None]  # (B, T): that token is visible to position t
        targets = targets.masked_fill(in_prefix.to(batch.device), IGNORE)
        if int(prefix.max()) <= 1:  # j < P adds nothing to j <= i: the mask is causal
            return Corruption(inputs=inputs, targets=targets, attention_mode="causal", original=inputs)
        return Corruption(inputs=inputs, targets=targets, attention_mode="prefix",
                          prefix_len=prefix.to(batch.device), original=inputs)


@torch.no_grad()
def prefix_lm_generate(model, prompt_ids: Union[torch.Tensor, Sequence[int]], max_new_tokens: int,
                       temperature: float = 1.0, top_k: Optional[int] = None,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Continue ``prompt_ids`` (1-D, or (B, P) with one prompt length for all rows) by ``max_new_tokens``.

    The prompt is read once with ``attention_mode="prefix"`` and ``prefix_len = P`` into a KV cache
    (every prompt token sees the whole prompt); each new token is then fed causally through the cache.
    That is the prefix LM's mask over the whole sequence, so the tokens equal those of rerunning the
    full sequence in prefix mode at every step. Sampling is softmax(z / temperature) within the top_k
    (``workbench.generate.next_token``); temperature 0 is argmax. Draws come from ``generator``
    (on the device it lives on; torch's global RNG if None).

    The prompt is the prefix, so the model's window cannot slide past it: the prompt and every new token
    but the last must fit the context, P + max_new_tokens - 1 <= block_size.
    Returns (B, P + max_new_tokens) ids (1-D in, 1-D out).
    """
    owner = "prefix_lm_generate"
    check_int(owner, "max_new_tokens", max_new_tokens, minimum=0)
    check_range(owner, "temperature", temperature, 0.0, float("inf"))
    if top_k is not None:
        check_int(owner, "top_k", top_k)
    device = next(model.parameters()).device
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    squeeze = ids.dim() == 1
    ids = ids[None] if squeeze else ids
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"{owner}: prompt_ids must be a non-empty 1-D sequence or a (batch, length) tensor, "
                         f"got shape {tuple(ids.shape)}")
    prompt_len = ids.shape[1]
    block = model.config.block_size
    if prompt_len + max(max_new_tokens - 1, 0) > block:
        raise ValueError(
            f"{owner}: a prompt of {prompt_len} tokens and max_new_tokens={max_new_tokens} need "
            f"{prompt_len + max(max_new_tokens - 1, 0)} positions but block_size is {block}; the prompt is the "
            "prefix and the window cannot slide past it: shorten the prompt or max_new_tokens"
        )
    if max_new_tokens == 0:
        return ids[0] if squeeze else ids
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(ids.shape[0], prompt_len + max_new_tokens - 1)
        logits = model(ids, attention_mode="prefix", prefix_len=prompt_len, cache=cache).logits[:, -1]
        for step in range(max_new_tokens):
            token = _pick(logits, temperature, top_k, generator)
            ids = torch.cat([ids, token[:, None]], dim=1)
            if step + 1 < max_new_tokens:
                logits = model(token[:, None], cache=cache).logits[:, -1]
    finally:
        model.train(was_training)
    return ids[0] if squeeze else ids


def _pick(logits: torch.Tensor, temperature: float, top_k: Optional[int], generator) -> torch.Tensor:
    """next_token, drawing on the generator's device (a CPU generator samples a CUDA model's logits on CPU)."""
    if generator is None or temperature == 0 or generator.device == logits.device:
        return next_token(logits, temperature, top_k, None, generator)
    return next_token(logits.to(generator.device), temperature, top_k, None, generator).to(logits.device)


__all__ = ["PrefixLM", "prefix_lm_generate"]
