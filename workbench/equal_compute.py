"""Comparing pretraining objectives fairly: the same backbone, data and training compute for each.

"Same compute" means the same training FLOPs, counted by the library's own accounting
(``Objective.flops_per_token(model)``: the model's 6N + attention per token, plus whatever the objective
runs besides it, such as ELECTRA's generator). With a budget of C FLOPs, an objective whose step processes
``tokens_per_step`` tokens at F FLOPs each trains for

    steps = floor(C / (F * tokens_per_step))

so ELECTRA, which also runs its generator, takes fewer steps than CLM. Masked objectives pay for every token
of the window but score only the masked ones: equal compute is not equal scored tokens, and the comparison
is about what each objective gets for the same FLOPs.

``OBJECTIVE_SETUPS`` are the objectives notebook 05 compares; ``representation_mode`` says how a trained
model reads a probe example (the attention mode it was trained to use at the end of training).
"""
from __future__ import annotations

import math

from .objectives import Objective, make_objective
from .validation import check_int

# label -> (registered objective name, options)
OBJECTIVE_SETUPS: dict[str, tuple[str, dict]] = {
    "CLM": ("clm", {}),
    "prefix LM": ("prefix_lm", {}),
    "MLM 15%": ("mlm", {"mask_ratio": 0.15}),
    "MLM 40%": ("mlm", {"mask_ratio": 0.40}),
    "span corruption": ("t5_span", {}),
    "ELECTRA": ("electra", {}),
    "MEAP": ("meap", {"mask_ratio": 0.15}),
    "CLM then MLM": ("clm_then_mlm", {"switch_at": 0.5, "second_options": {"mask_ratio": 0.40}}),
}


def make_setup(label: str, tokenizer=None) -> Objective:
    """A fresh objective for ``label`` of ``OBJECTIVE_SETUPS``."""
    if label not in OBJECTIVE_SETUPS:
        raise ValueError(f"unknown setup {label!r}; the setups are: {', '.join(OBJECTIVE_SETUPS)}")
    name, options = OBJECTIVE_SETUPS[label]
    return make_objective(name, tokenizer, **options)


def steps_for_flops(flops_budget: float, flops_per_token: int, tokens_per_step: int) -> int:
    """Optimizer steps that spend ``flops_budget`` (rounded down; at least one step)."""
    check_int("steps_for_flops", "flops_per_token", flops_per_token)
    check_int("steps_for_flops", "tokens_per_step", tokens_per_step)
    if not (math.isfinite(flops_budget) and flops_budget > 0):
        raise ValueError(f"steps_for_flops: flops_budget={flops_budget!r} must be a finite number > 0")
    return max(1, math.floor(flops_budget / (flops_per_token * tokens_per_step)))


def representation_mode(objective: Objective) -> str:
    """The attention mode a trained model reads a whole example with: causal for next-token objectives,
    bidirectional for masked ones, and for a prefix LM the whole example as its prefix (bidirectional)."""
    objective.set_progress(1, 1)  # the end of training (a two-phase objective: its second phase)
    mode = objective.attention_mode
    return "bidirectional" if mode == "prefix" else mode
