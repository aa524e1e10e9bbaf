"""Learning-rate schedule: linear warmup, then cosine decay (Loshchilov & Hutter 2017).

    lr(s) = lr_max * (s + 1) / W                                   for s < W
    lr(s) = lr_min + (lr_max - lr_min) * (1 + cos(pi * r)) / 2     r = (s - W) / (S - W)
    lr(s) = lr_min                                                 for s >= S
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
