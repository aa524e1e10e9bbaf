"""Autoregressive sampling with a KV cache.

At each step the model gives logits z for the next token; we sample from

    p_i = softmax(z / T)_i        (T = temperature; T = 0 means argmax)

optionally keeping only the k most likely tokens (top-k) or the smallest
set whose probability reaches p (top-p / nucleus, Holtzman et al. 2020).

With ``use_cache`` the prompt is run once (prefill) and each new token
costs one position's work: the keys and values of earlier tokens are kept
in the cache instead of recomputed. When the context reaches
``block_size`` the cache is full; from then on each step recomputes over the
last ``block_size`` tokens, exactly as the uncached path does, so cached and
uncached greedy decoding give the same tokens.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch

from .validation import check_int, check_range


def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """Set logits outside the top-k / top-p set to -inf (last dim is the vocabulary)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token if the tokens before it already reach top_p (the first token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, temperature: float, top_k, top_p, generator) -> torch.Tensor:
    """Pick the next token id for each row of logits (B, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    prompt: Union[torch.Tensor, Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    stop_tokens: Iterable[int] = (),
    use_cache: bool = True,
    seed: Optional[int] = None,
    pad_id: int = 0,
) -> torch.Tensor:
    """Continue ``prompt`` (ids, 1-D or (B, T)) by up to ``max_new_tokens`` tokens.

    A sequence that emits a stop token is finished: it is padded with
    ``pad_id`` while others continue, and generation ends when all are done.
    Returns (B, T + new) ids (1-D in, 1-D out).
    """
    check_int("generate", "max_new_tokens", max_new_tokens, minimum=0)
    check_range("generate", "temperature", temperature, 0.0, float("inf"))
    if top_k is not None:
        check_int("generate", "top_k", top_k)
    if top_p is not None:
        check_range("generate", "top_p", top_p, 0.0, 1.0, low_open=True)
    device = next(model.parameters()).device
    ids = torch.as_tensor(prompt, dtype=torch.long, device=device)
    squeeze = ids.dim() == 1
    ids = ids[None] if squeeze else ids
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty; give at least one token (e.g. a newline or the [BOS] id)")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    block = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
        pending = ids[:, -block:]  # tokens the model has not seen yet (the prompt, cropped)
        # room for the prompt and every new token, never more than the model's context
        cache = model.new_cache(ids.shape[0], min(block, pending.shape[1] + max_new_tokens)) if use_cache else None
        for _ in range(max_new_tokens):
            if cache is not None and cache.length + pending.shape[1] > cache.max_len:
                cache = None  # full: continue like the uncached path, over the last block tokens
            if cache is None:
                logits = model(ids[:, -block:]).logits[:, -1]
            else:
                logits = model(pending, cache=cache).logits[:, -1]
            token = next_token(logits, temperature, top_k, top_p, generator)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            ids = torch.cat([ids, token[:, None]], dim=1)
            pending = token[:, None]
            if stop.numel():
                finished |= torch.isin(token, stop)
                if bool(finished.all()):
                    break
    finally:
        model.train(was_training)
    return ids[0] if squeeze else ids


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, **kwargs) -> str:
    """Encode ``prompt``, generate, and decode the whole text (prompt included)."""
    ids = tokenizer.encode(prompt)
    out = generate(model, ids, max_new_tokens, **kwargs)
    return tokenizer.decode(out.tolist(), skip_special=True)
