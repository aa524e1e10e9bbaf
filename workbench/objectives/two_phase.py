"""Two objectives in sequence on the same weights: causal LM first, then masked LM.

Gisserot-Boukhlef et al. (2025), "Should we still pretrain encoders with
masked language modeling?", train one set of weights in two phases: first
as a decoder (causal mask, next-token loss), then as an encoder
(bidirectional mask, masked-token loss with a 20-50% mask ratio). With
total_steps S and switch fraction f the objective of optimizer step s is

    L_s(theta) = L_first(theta)    if s <  s*          s* = floor(f * S + 1/2)
               = L_second(theta)   if s >= s*

(s counts from 0; s* is f * S rounded half up, not Python's round, which
rounds ties to even). At a fixed budget, splits from 25/75 to 75/25 beat
pure MLM on representation tasks in their experiments.

Nothing else changes at the switch: the model, the optimizer's moments and
the learning-rate schedule carry on. The phase is a function of the step
alone, so a run resumed from a checkpoint (before or after the switch)
repeats the uninterrupted run exactly.

Each phase is a full objective built by name from the registry, held as a
submodule (``first_phase``, ``second_phase``): whatever either one owns is
trained, clipped and checkpointed by the Trainer with the model. Each is told
its progress within its own phase (``set_progress(s, s*)`` for the first,
``set_progress(s - s*, S - s*)`` for the second), so a sub-objective with a
schedule of its own runs it over its phase.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Optional

import torch

from ..validation import check_int, is_number
from .base import OBJECTIVES, Corruption, Objective, ObjectiveOutput, make_objective

OWNER = "clm_then_mlm"
DEFAULT_SECOND_OPTIONS = {"mlm": {"mask_ratio": 0.3}}  # used when second_options is not given


def switch_step(switch_at: float, total_steps: int) -> int:
    """The first step of the second phase: switch_at * total_steps rounded half up."""
    return math.floor(switch_at * total_steps + 0.5)


@OBJECTIVES.register("clm_then_mlm")
class TwoPhase(Objective):
    """``first`` for steps [0, s*), ``second`` from step s* on, with s* = round(switch_at * total_steps).

    Options (JSON values, recorded in checkpoints): ``first`` and ``second`` are registered objective
    names; ``switch_at`` is the fraction of the run spent in the first phase, 0 < switch_at < 1;
    ``first_options`` and ``second_options`` are dicts passed to each one's constructor.
    ``second_options`` defaults to ``{"mask_ratio": 0.3}`` when ``second`` is "mlm" and to ``{}``
    otherwise.
    """

    name = "clm_then_mlm"

    def __init__(self, first: str = "clm", second: str = "mlm", switch_at: float = 0.5,
                 first_options: Optional[dict] = None, second_options: Optional[dict] = None, tokenizer=None):
        if not is_number(switch_at) or not 0 < switch_at < 1:
            raise ValueError(f"{OWNER}.switch_at={switch_at!r} is invalid: it must be a fraction of the run "
                             "strictly between 0 and 1 (0.5 switches half-way)")
        first_options = _options_dict("first_options", {} if first_options is None else first_options)
        if second_options is None:
            second_options = DEFAULT_SECOND_OPTIONS.get(second, {}) if isinstance(second, str) else {}
        second_options = _options_dict("second_options", second_options)
        phases = [_build_phase(field, value, tokenizer, opts)
                  for field, value, opts in (("first", first, first_options), ("second", second, second_options))]
        super().__init__(first=first, second=second, switch_at=switch_at, first_options=first_options,
                         second_options=second_options)
        self.first_phase, self.second_phase = phases
        self.switch_at = float(switch_at)
        self.extra_vocab = _shared_extra_vocab(self.first_phase, self.second_phase)
        self.phase = 1  # before any set_progress: training starts in the first phase

    # ------------------------------------------------------------------ which phase
    @property
    def active(self) -> Objective:
        """The objective of the current phase."""
        return self.first_phase if self.phase == 1 else self.second_phase

    @property
    def attention_mode(self) -> str:
        return self.active.attention_mode

    def set_progress(self, step: int, total_steps: int) -> None:
        check_int(f"{OWNER}.set_progress", "step", step, minimum=0)
        check_int(f"{OWNER}.set_progress", "total_steps", total_steps, minimum=1)
        boundary = switch_step(self.switch_at, total_steps)
        self.phase = 1 if step < boundary else 2
        if self.phase == 1:
            self.first_phase.set_progress(step, boundary)
        else:
            self.second_phase.set_progress(step - boundary, max(total_steps - boundary, 1))

    # ------------------------------------------------------------------ the interface
    def setup(self, model, seed: int = 0) -> None:
        self.first_phase.setup(model, seed=seed)
        self.second_phase.setup(model, seed=seed)

    def corrupt(self, batch: torch.Tensor, vocab_size: int, generator=None) -> Corruption:
        return self.active.corrupt(batch, vocab_size, generator)

    def loss(self, model, batch: torch.Tensor, generator=None) -> ObjectiveOutput:
        out = self.active.loss(model, batch, generator)
        return dataclasses.replace(out, metrics={**out.metrics, "phase": self.phase})

    def flops_per_token(self, model) -> int:
        """The larger of the two phases' FLOPs per token.

        The Trainer reads one number per run to count FLOPs, so a run whose phases cost differently is
        counted at the dearer phase (an upper bound). CLM and MLM both run the model once per token
        and cost the same.
        """
        return max(self.first_phase.flops_per_token(model), self.second_phase.flops_per_token(model))


def _options_dict(field: str, value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{OWNER}.{field}={value!r} is invalid: it must be a dict of option name -> JSON value "
                         "(e.g. {\"mask_ratio\": 0.3})")
    return copy.deepcopy(value)


def _build_phase(field: str, name, tokenizer, options: dict) -> Objective:
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ValueError(f"{OWNER}.{field}={name!r} is invalid: it must be a registered objective, one of "
                         f"{', '.join(map(repr, OBJECTIVES.names()))}")
    try:
        return make_objective(name, tokenizer, **copy.deepcopy(options))
    except ValueError as error:
        raise ValueError(f"{OWNER}.{field}_options={options!r} is invalid for objective {name!r}: {error}") from None


def _shared_extra_vocab(first: Objective, second: Objective) -> int:
    """The ids both phases' model needs beyond the tokenizer's.

    The model is built once for the run, with the larger number of extra ids (T5's sentinels). A phase
    that adds none is told about the other's (an instance attribute), so that it too treats them as not
    ordinary text (``tokenizer_vocab``); two phases that each add a different number cannot share one
    vocabulary.
    """
    extras = {first.extra_vocab, second.extra_vocab} - {0}
    if len(extras) > 1:
        raise ValueError(f"{OWNER}: objectives {first.name!r} and {second.name!r} need different extra vocabularies "
                         f"({first.extra_vocab} and {second.extra_vocab} ids); choose phases that agree")
    extra = max(extras, default=0)
    for phase in (first, second):
        if phase.extra_vocab != extra:
            phase.extra_vocab = extra
    return extra


__all__ = ["TwoPhase", "switch_step"]
