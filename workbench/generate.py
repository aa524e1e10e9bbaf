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

**Special tokens.** Every vocabulary reserves ``[PAD] [MASK] [BOS] [EOS]``
(ids 0-3). A model trained on plain text never sees them as targets, yet an
untrained or briefly trained one still gives them some probability.
``generate(..., suppress_tokens=ids)`` sets those logits to -inf before
temperature, top-k and top-p, so they are never drawn and the rest
renormalizes. ``sample_text`` does this by default (``suppress_special=True``)
for the ids ``special_ids_to_suppress`` returns: always ``[PAD]``, ``[MASK]``
and ``[BOS]`` (no causal LM here is trained to produce them); ``[EOS]`` too,
unless it is one of the ``stop_tokens`` (then sampling it is how a text ends,
so it must stay possible). ``workbench.inspect.next_token_distribution``
takes the same switch, so the distribution a widget shows is exactly the one
sampled from.
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


def special_ids_to_suppress(tokenizer, stop_tokens: Iterable[int] = ()) -> list[int]:
    """The special ids a plain-text model never produces: [PAD], [MASK], [BOS], and [EOS] unless it stops."""
    ids = [tokenizer.pad_id, tokenizer.mask_id, tokenizer.bos_id]
    if tokenizer.eos_id not in set(stop_tokens):
        ids.append(tokenizer.eos_id)
    return sorted(set(ids))


def suppress_logits(logits: torch.Tensor, suppress_tokens: Sequence[int] = ()) -> torch.Tensor:
    """Set the logits of ``suppress_tokens`` (ids, last dim is the vocabulary) to -inf."""
    if len(suppress_tokens) == 0:
        return logits
    logits = logits.clone()
    logits[..., list(suppress_tokens)] = float("-inf")
    return logits


def next_token(logits: torch.Tensor, temperature: float, top_k, top_p, generator,
               suppress_tokens: Sequence[int] = ()) -> torch.Tensor:
    """Pick the next token id for each row of logits (B, vocab), never one of ``suppress_tokens``."""
    logits = suppress_logits(logits, suppress_tokens)
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
    suppress_tokens: Iterable[int] = (),
) -> torch.Tensor:
    """Continue ``prompt`` (ids, 1-D or (B, T)) by up to ``max_new_tokens`` tokens.

    A sequence that emits a stop token is finished: it is padded with
    ``pad_id`` while others continue, and generation ends when all are done.
    Returns (B, T + new) ids (1-D in, 1-D out). Ids in ``suppress_tokens`` are
    never generated (their logits are -inf before temperature and filtering).
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
    suppress = sorted(set(int(i) for i in suppress_tokens))
    vocab = model.config.vocab_size
    if suppress and not all(0 <= i < vocab for i in suppress):
        raise ValueError(f"generate: suppress_tokens must be ids in 0..{vocab - 1}, got {suppress}")
    if len(suppress) >= vocab:
        raise ValueError("generate: suppress_tokens would suppress every token of the vocabulary")
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
            token = next_token(logits, temperature, top_k, top_p, generator, suppress)
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


def sample_text(model, tokenizer, prompt: str, max_new_tokens: int = 200, *, suppress_special: bool = True,
                **kwargs) -> str:
    """Encode ``prompt``, generate, and decode the whole text (prompt included).

    With ``suppress_special`` (the default) the special tokens a plain-text model
    never produces are never sampled (``special_ids_to_suppress``: [PAD], [MASK],
    [BOS], and [EOS] unless it is in ``stop_tokens``); any ``suppress_tokens``
    given are suppressed as well.
    """
    ids = tokenizer.encode(prompt)
    if suppress_special:
        extra = list(kwargs.pop("suppress_tokens", ()))
        kwargs["suppress_tokens"] = sorted(set(extra) | set(special_ids_to_suppress(
            tokenizer, kwargs.get("stop_tokens", ()))))
    out = generate(model, ids, max_new_tokens, **kwargs)
    return tokenizer.decode(out.tolist(), skip_special=True)
