"""Look inside a model: attention maps, next-token distributions and loss by position, as plain numbers.

These feed the notebook widgets (``workbench.viz.widgets``) but need no
Jupyter: they return NumPy arrays and lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .generate import filter_logits, special_ids_to_suppress, suppress_logits


def _run(model, tokenizer, text: str, empty_message: str, **forward_options):
    """Encode ``text`` (cropped to the context), run the model in eval mode, restore its mode."""
    ids = tokenizer.encode(text)[-model.config.block_size:]
    if not ids:
        raise ValueError(empty_message)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return ids, model(torch.tensor([ids], device=device), **forward_options)
    finally:
        model.train(was_training)


@dataclass
class AttentionMaps:
    probs: np.ndarray        # (layers, heads, T, T)
    tokens: list[str]        # one display label per position


@torch.no_grad()
def attention_maps(model, tokenizer, text: str, attention_mode: str = "causal") -> AttentionMaps:
    """Every layer's and head's attention probabilities over ``text`` (cropped to block_size)."""
    ids, out = _run(model, tokenizer, text, "the text is empty; type a few characters to look at their attention",
                    attention_mode=attention_mode, return_attentions=True)
    probs = torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()
    return AttentionMaps(probs=probs, tokens=tokenizer.token_strings(ids))


@dataclass
class NextTokenDistribution:
    tokens: list[str]        # labels of the most likely tokens, most likely first
    probs: np.ndarray        # their probability after temperature and top-k / top-p (what is sampled from)
    raw_probs: np.ndarray    # their probability at temperature 1, no top-k / top-p
    kept: np.ndarray         # bool: still sampleable after top-k / top-p
    suppressed: list[str] = field(default_factory=list)  # special tokens left out (never sampled)


@torch.no_grad()
def next_token_distribution(model, tokenizer, text: str, temperature: float = 1.0, top_k: Optional[int] = None,
                            top_p: Optional[float] = None, show: int = 20, suppress_special: bool = False,
                            stop_tokens=()) -> NextTokenDistribution:
    """The distribution the sampler draws the next token from, for the ``show`` likeliest tokens.

    With ``suppress_special`` the special tokens a plain-text model never produces
    (``workbench.generate.special_ids_to_suppress``: [PAD], [MASK], [BOS], and [EOS]
    unless it is in ``stop_tokens``) are removed before temperature and filtering,
    exactly as ``sample_text`` (whose default is on) removes them: they are not shown and
    the probabilities (``probs`` and ``raw_probs``) renormalize over the other tokens.
    Off by default here, so ``raw_probs`` is the model's own softmax.
    """
    _, out = _run(model, tokenizer, text, "the prompt is empty; type at least one character")
    logits = out.logits[0, -1].float().cpu()
    suppress = special_ids_to_suppress(tokenizer, stop_tokens) if suppress_special else []
    logits = suppress_logits(logits, suppress)
    raw = logits.softmax(-1)
    if temperature == 0:
        final = torch.zeros_like(raw)
        final[raw.argmax()] = 1.0
    else:
        final = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    order = raw.argsort(descending=True)[:min(show, raw.numel() - len(suppress))]
    return NextTokenDistribution(tokens=tokenizer.token_strings(order.tolist()), probs=final[order].numpy(),
                                 raw_probs=raw[order].numpy(), kept=(final[order] > 0).numpy(),
                                 suppressed=tokenizer.token_strings(suppress))


@torch.no_grad()
def loss_by_position(model, data, length: int, batches: int = 8, batch_size: int = 16, split: str = "val",
                     seed: int = 0) -> np.ndarray:
    """Mean next-token loss (nats) at each position 0..length-1, over random windows of ``data``.

    Position t predicts token t + 1 from tokens 0..t. With ``length`` past the
    model's training context this shows how a position scheme extrapolates
    (Press et al. 2022, figure 1); learned positions cannot run there at all
    and raise a ValueError that says so.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    total = torch.zeros(length)
    try:
        for _ in range(batches):
            batch = data.get_batch(split, batch_size, length + 1, generator).to(device)
            logits = model(batch[:, :-1]).logits.float()
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
            total += losses.mean(0).cpu()
    finally:
        model.train(was_training)
    return (total / batches).numpy()


MASK_TEXT = "[MASK]"


def encode_with_masks(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` where each literal "[MASK]" becomes the [MASK] id (tokenizers read the string
    "[MASK]" as ordinary characters, so a learner can type masks into a prompt only through this)."""
    pieces = text.split(MASK_TEXT)
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids.append(tokenizer.mask_id)
        if piece:
            ids.extend(tokenizer.encode(piece))
    return ids


@dataclass
class MaskPredictions:
    positions: list[int]       # where the [MASK]s are
    tokens: list[list[str]]    # per mask: the k likeliest tokens, likeliest first
    probs: np.ndarray          # (masks, k) their probabilities


@torch.no_grad()
def mask_predictions(model, tokenizer, text: str, k: int = 5, attention_mode: str = "bidirectional",
                     suppress_special: bool = True) -> MaskPredictions:
    """What a masked LM puts at each "[MASK]" of ``text``: its ``k`` likeliest tokens and their probabilities
    (read in ``attention_mode``, bidirectional for BERT). Special tokens are left out unless asked for."""
    ids = encode_with_masks(tokenizer, text)[-model.config.block_size:]
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if not positions:
        raise ValueError(f"the text has no {MASK_TEXT}; put {MASK_TEXT} where a token should be predicted")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.tensor([ids], device=device), attention_mode=attention_mode).logits[0].float().cpu()
    finally:
        model.train(was_training)
    if suppress_special:
        logits = suppress_logits(logits, special_ids_to_suppress(tokenizer))
    probs = logits[positions].softmax(-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return MaskPredictions(positions=positions, tokens=[tokenizer.token_strings(row.tolist()) for row in top.indices],
                           probs=top.values.numpy())
