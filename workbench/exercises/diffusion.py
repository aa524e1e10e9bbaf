"""Exercises of notebook 06 (masked diffusion LMs): the 1/t-weighted loss, one low-confidence remasking step,
and how many tokens each step commits.

Each reference is the library's own computation: ``masked_diffusion.subs_log_probs``, ``masked_nll`` and
``loss_weight`` (the objective's loss), ``sampling.low_confidence_step`` and ``sampling.transfer_schedule``.
"""
from __future__ import annotations

import torch

from ..diffusion.sampling import low_confidence_step, transfer_schedule
from ..objectives.base import MASK_ID
from ..objectives.masked_diffusion import loss_weight, masked_nll, subs_log_probs
from . import register
from .checking import Case, Exercise, Mistake


# --------------------------------------------------------------------------- 06.1 the 1/t-weighted loss
def _diffusion_loss_reference(logits, x0, masked, t):
    x_t = torch.where(masked, torch.full_like(x0, MASK_ID), x0)
    nll = masked_nll(subs_log_probs(logits, x_t), x0, masked)
    return (loss_weight(t.double()).float()[:, None] * nll).sum() / x0.numel()


def _subs_only(logits):
    """log softmax with the [MASK] logit at -inf, at every position (no carry-over)."""
    logits = logits.float().clone()
    logits[..., MASK_ID] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def _picked(logits, x0, masked, log_probs=None):
    """-log p(x0) at the ``masked`` positions, 0 elsewhere (SUBS log-probabilities unless others are given)."""
    log_probs = _subs_only(logits) if log_probs is None else log_probs
    nll = -log_probs.gather(-1, x0[..., None]).squeeze(-1)
    return torch.where(masked, nll, torch.zeros_like(nll))


def _normalized_by_masked_count(logits, x0, masked, t):
    return (_picked(logits, x0, masked) / t[:, None]).sum() / masked.sum().clamp_min(1)


def _mask_logit_kept(logits, x0, masked, t):
    kept = torch.log_softmax(logits.float(), dim=-1)
    return (_picked(logits, x0, masked, kept) / t[:, None]).sum() / x0.numel()


def _weight_t(logits, x0, masked, t):
    return (_picked(logits, x0, masked) * t[:, None]).sum() / x0.numel()


def _no_weight(logits, x0, masked, t):
    return _picked(logits, x0, masked).sum() / x0.numel()


def _every_position_scored(logits, x0, masked, t):
    return (_picked(logits, x0, torch.ones_like(masked)) / t[:, None]).sum() / x0.numel()


def _loss_cases():
    g = torch.Generator().manual_seed(61)

    def case(label, batch, length, vocab=10, p=0.5, mask_logit=0.0, t=None):
        logits = torch.randn(batch, length, vocab, generator=g)
        logits[..., MASK_ID] += mask_logit
        x0 = torch.randint(4, vocab, (batch, length), generator=g)
        t = torch.rand(batch, generator=g) * 0.9 + 0.05 if t is None else torch.tensor(t)
        masked = torch.rand(batch, length, generator=g) < p
        masked[:, 0] = True  # at least one hidden token per row
        return Case(label, (logits, x0, masked, t))

    return [
        case("one row of 6 tokens, t = 0.5", 1, 6, t=[0.5]),
        case("3 rows of 8 tokens, random t", 3, 8),
        case("the network gives [MASK] a large logit (it must get probability 0)", 2, 10, mask_logit=4.0),
        case("small t: few hidden tokens, each weighted 1/t", 4, 12, p=0.1, t=[0.05, 0.1, 0.08, 0.2]),
        case("t close to 1: nearly everything hidden", 2, 16, vocab=20, p=0.95, t=[0.97, 0.99]),
    ]


register(Exercise(
    id="06.1", title="the 1/t-weighted diffusion loss", function_name="diffusion_loss", difficulty="medium",
    minutes=15, reference=_diffusion_loss_reference, cases=_loss_cases,
    mistakes=[
        Mistake("this is divided by the number of hidden tokens: MDLM and LLaDA divide by ALL B * L tokens, so the "
                "loss is the NELBO per token", _normalized_by_masked_count),
        Mistake("the [MASK] logit takes part in the softmax: SUBS sets it to -inf first, so [MASK] gets probability 0",
                _mask_logit_kept),
        Mistake("this multiplies by t: each row's sum is weighted by 1/t (divide by t)", _weight_t),
        Mistake("there is no weight: each row's sum of -log p over its hidden tokens is multiplied by 1/t",
                _no_weight),
        Mistake("visible positions are scored too: only hidden positions cost anything (a visible token is copied)",
                _every_position_scored),
    ],
))


# --------------------------------------------------------------------------- 06.2 one low-confidence step
def _remask_step_reference(logits, canvas, k):
    return low_confidence_step(subs_log_probs(logits, canvas), canvas, torch.full((canvas.shape[0],), k))[0]


def _commit(canvas, tokens, score, k, candidates):
    ranked = torch.where(candidates, score, torch.full_like(score, float("-inf")))
    top = ranked.topk(k, dim=1).indices
    chosen = torch.zeros_like(candidates).scatter(1, top, True) & candidates
    return torch.where(chosen, tokens, canvas)


def _step_with_mask_logit(logits, canvas, k):
    probs = torch.softmax(logits.float(), -1)
    return _commit(canvas, probs.argmax(-1), probs.max(-1).values, k, canvas == MASK_ID)


def _step_over_every_position(logits, canvas, k):
    probs = _subs_only(logits).exp()
    return _commit(canvas, probs.argmax(-1), probs.max(-1).values, k, torch.ones_like(canvas, dtype=torch.bool))


def _step_least_confident(logits, canvas, k):
    probs = _subs_only(logits).exp()
    return _commit(canvas, probs.argmax(-1), -probs.max(-1).values, k, canvas == MASK_ID)


def _step_by_logit(logits, canvas, k):
    masked_logits = logits.float().clone()
    masked_logits[..., MASK_ID] = float("-inf")
    return _commit(canvas, masked_logits.argmax(-1), masked_logits.max(-1).values, k, canvas == MASK_ID)


def _remask_cases():
    g = torch.Generator().manual_seed(62)

    def case(label, batch, length, k, vocab=12, hidden=0.6, spread=2.0):
        logits = spread * torch.randn(batch, length, vocab, generator=g)
        logits += 3 * torch.randn(batch, length, 1, generator=g)  # rows of logits on different levels
        canvas = torch.randint(4, vocab, (batch, length), generator=g)
        hide = torch.rand(batch, length, generator=g) < hidden
        hide[:, :k + 1] = True
        canvas[hide] = MASK_ID
        return Case(label, (logits, canvas, k))

    return [
        case("one row of 8, commit 1", 1, 8, 1),
        case("2 rows of 10, commit 3", 2, 10, 3),
        case("4 rows of 12, commit 2, confident predictions at some visible positions", 4, 12, 2, spread=4.0),
        case("3 rows of 16, commit 4, vocabulary 20", 3, 16, 4, vocab=20),
    ]


register(Exercise(
    id="06.2", title="one low-confidence remasking step", function_name="remask_step", difficulty="medium",
    minutes=20, reference=_remask_step_reference, cases=_remask_cases,
    mistakes=[
        Mistake("[MASK] took part: set its logit to -inf before the softmax, so it is never predicted and the "
                "confidences are those of real tokens", _step_with_mask_logit),
        Mistake("a visible token was overwritten: choose the k most confident among the [MASK] positions only",
                _step_over_every_position),
        Mistake("this commits the LEAST confident predictions: take the k with the highest probability",
                _step_least_confident),
        Mistake("the ranking used the largest logit: confidence is the softmax probability of the predicted token "
                "(logits of different positions are on different scales)", _step_by_logit),
    ],
))


# --------------------------------------------------------------------------- 06.3 tokens per step
def _remainder_last(n_masked, steps):
    base, remainder = divmod(n_masked, steps)
    return [base + (1 if i >= steps - remainder else 0) for i in range(steps)]


def _rounded_up(n_masked, steps):
    return [-(-n_masked // steps)] * steps


def _rounded_down(n_masked, steps):
    return [n_masked // steps] * steps


def _schedule_cases():
    return [Case("10 hidden tokens in 4 steps", (10, 4)), Case("8 hidden tokens in 8 steps", (8, 8)),
            Case("3 hidden tokens in 5 steps (some steps commit nothing)", (3, 5)),
            Case("48 hidden tokens in 7 steps", (48, 7)), Case("64 hidden tokens in 16 steps", (64, 16))]


register(Exercise(
    id="06.3", title="tokens to commit per step", function_name="tokens_per_step", difficulty="easy", minutes=5,
    reference=transfer_schedule, cases=_schedule_cases,
    mistakes=[
        Mistake("the extra tokens go to the LAST steps: LLaDA gives the remainder to the first steps",
                _remainder_last),
        Mistake("rounded up at every step: the steps must commit exactly n_masked tokens in all", _rounded_up),
        Mistake("rounded down at every step: the remainder n_masked % steps is never committed", _rounded_down),
    ],
))
