"""Pictures of a masked diffusion sampler at work: the canvas after any step of a ``DenoisingTrace``.

Each position is a box: grey "▢" while still [MASK], white for tokens that were given (the prompt), and
coloured by the model's confidence in the token it wrote, from red (unsure) to green (sure), with a thick
border on the tokens written by this very step. Pure functions: numbers in, HTML out.
"""
from __future__ import annotations

import html
import math

from ..data.tokenizers import visible
from ..objectives.base import MASK_ID

MASK_BOX = "▢"


def confidence_colour(p: float) -> str:
    """red (p = 0) through yellow to green (p = 1), as an rgb() string."""
    p = min(max(p, 0.0), 1.0)
    red, green = (220, int(60 + 340 * p)) if p < 0.5 else (int(220 - 360 * (p - 0.5)), 200)
    return f"rgb({red},{min(green, 200)},90)"


def denoising_html(trace, step: int, tokenizer, row: int = 0, title: str = "") -> str:
    """The canvas of ``trace`` after ``step`` steps (0 = before the first), row ``row``, as coloured boxes."""
    states = trace.states
    step = min(max(int(step), 0), len(states) - 1)
    canvas = states[step] if states[step].dim() == 1 else states[step][row]
    written = trace.committed_at if trace.committed_at.dim() == 1 else trace.committed_at[row]
    confidence = trace.confidence if trace.confidence.dim() == 1 else trace.confidence[row]
    boxes = []
    for token, at, p in zip(canvas.tolist(), written.tolist(), confidence.tolist()):
        if token == MASK_ID:
            style, text, tip = "background:#e6e6e6;color:#999", MASK_BOX, "still [MASK]"
        elif at == 0:
            style, text, tip = "background:#ffffff", visible(tokenizer.decode([token])), "given"
        else:
            style = f"background:{confidence_colour(p)}" + (";border:2px solid #000" if at == step else "")
            text = visible(tokenizer.decode([token]))
            tip = f"written at step {at}, confidence {p:.2f}" if not math.isnan(p) else f"written at step {at}"
        boxes.append(f'<span title="{html.escape(tip)}" style="{style};border:1px solid #bbb;padding:1px 2px;'
                     f'margin:1px;font-family:monospace;display:inline-block">{html.escape(text)}</span>')
    left = int((canvas == MASK_ID).sum())
    heading = f"<b>{html.escape(title)}</b> · " if title else ""
    return (f"<div style='line-height:1.9'>{heading}step {step} of {len(states) - 1} · {left} masks left"
            f"<br>{''.join(boxes)}<br><small>grey ▢: [MASK] · white: given · colour: the model's confidence in "
            f"the token it wrote (red 0 → green 1) · black border: written at this step</small></div>")


__all__ = ["denoising_html", "confidence_colour", "MASK_BOX"]
