"""Pictures of what an objective does to a batch: which tokens it hides, replaces or keeps, and where it scores.

Every objective's ``corrupt(batch, vocab_size, generator)`` returns a ``Corruption`` (inputs the model reads,
targets with IGNORE where nothing is scored, the attention mode, the prefix length and, where positions line up,
the clean tokens). ``corruption_roles`` names each position's role from those tensors alone, so one picture
serves every objective; ``corruption_html`` colours one row for a notebook, and ``corruption_stats`` counts the
roles over a batch.
"""
from __future__ import annotations

import html
from typing import Optional

import torch

from ..data.tokenizers import MASK_ID, PAD_ID, visible
from ..objectives.base import IGNORE, Corruption

# role -> (background colour, what it means); the order is the legend's
ROLES = {
    "masked": ("#f4a261", "replaced by [MASK]"),
    "replaced": ("#e76f51", "replaced by another token"),
    "sentinel": ("#9b5de5", "a sentinel standing for a dropped span"),
    "scored": ("#90be6d", "unchanged, but the loss is taken here"),
    "prefix": ("#d7e3fc", "inside the prefix (read in both directions, not scored)"),
    "context": ("#ffffff", "unchanged, not scored"),
    "pad": ("#e0e0e0", "padding"),
}


def corruption_roles(corruption: Corruption, row: int, tokenizer_vocab: int) -> list[str]:
    """The role of each position of ``row``: masked, replaced, sentinel, scored, prefix, context or pad."""
    inputs = corruption.inputs[row].tolist()
    scored = (corruption.targets[row] != IGNORE).tolist()
    original = corruption.original[row].tolist() if corruption.original is not None else None
    prefix = int(corruption.prefix_len[row]) if corruption.prefix_len is not None else 0
    roles = []
    for i, token in enumerate(inputs):
        changed = original is not None and token != original[i]
        if token >= tokenizer_vocab:
            roles.append("sentinel")
        elif token == PAD_ID and not scored[i]:
            roles.append("pad")
        elif token == MASK_ID and (changed or original is None):
            roles.append("masked")
        elif changed:
            roles.append("replaced")
        elif scored[i]:
            roles.append("scored")
        elif i < prefix:
            roles.append("prefix")
        else:
            roles.append("context")
    return roles


def corruption_stats(corruption: Corruption, tokenizer_vocab: int) -> dict[str, float]:
    """The fraction of positions in each role over the whole batch, and the fraction scored."""
    counts = {role: 0 for role in ROLES}
    for row in range(corruption.inputs.shape[0]):
        for role in corruption_roles(corruption, row, tokenizer_vocab):
            counts[role] += 1
    total = corruption.inputs.numel()
    stats = {role: count / total for role, count in counts.items()}
    stats["scored (any role)"] = float((corruption.targets != IGNORE).float().mean())
    return stats


def corruption_html(corruption: Corruption, row: int, tokenizer, tokenizer_vocab: Optional[int] = None,
                    title: str = "") -> str:
    """One row as coloured token boxes with a legend (an HTML string; the roles are ``corruption_roles``)."""
    vocab = tokenizer.vocab_size if tokenizer_vocab is None else tokenizer_vocab
    roles = corruption_roles(corruption, row, vocab)
    boxes = []
    for token, role in zip(corruption.inputs[row].tolist(), roles):
        colour, meaning = ROLES[role]
        text = f"⟨S{token - vocab}⟩" if token >= vocab else visible(tokenizer.decode([token]))
        boxes.append(f'<span title="{html.escape(meaning)}" style="background:{colour};border:1px solid #bbb;'
                     f'padding:1px 2px;margin:1px;font-family:monospace;display:inline-block">'
                     f"{html.escape(text)}</span>")
    used = [r for r in ROLES if r in roles]
    legend = " ".join(f'<span style="background:{ROLES[r][0]};border:1px solid #bbb;padding:1px 4px">'
                      f"{html.escape(ROLES[r][1])}</span>" for r in used)
    mode = corruption.attention_mode + (f", prefix of {int(corruption.prefix_len[row])} tokens"
                                        if corruption.prefix_len is not None else "")
    heading = f"<b>{html.escape(title)}</b> · " if title else ""
    return (f"<div style='line-height:1.9'>{heading}attention: {html.escape(mode)} · "
            f"{sum(r != 'context' and r != 'prefix' and r != 'pad' for r in roles)} of {len(roles)} positions "
            f"changed or scored<br>{''.join(boxes)}<br><small>{legend}</small></div>")


def corrupt_text(objective, tokenizer, text: str, seed: int = 0) -> Corruption:
    """The objective's corruption of one text, read as a batch of one window (its tokens, plus the one more
    that every batch window carries), with masks drawn from ``seed``."""
    ids = torch.tensor([tokenizer.encode(text)])
    if ids.shape[1] < 2:
        raise ValueError(f"the text {text!r} has fewer than 2 tokens; give a longer text")
    return objective.corrupt(ids, tokenizer.vocab_size, torch.Generator().manual_seed(seed))
