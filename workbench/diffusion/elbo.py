"""The masked-diffusion ELBO as a metric: Monte Carlo estimates with a standard error, the exact value
by enumeration for short sequences, and scoring candidate answers.

For a sequence x of length L and any denoiser p(x^i | x_visible), the continuous-time NELBO of
``objectives/masked_diffusion.py`` integrates t out in closed form: a set M of k masked positions
arises with density t^k (1 - t)^(L - k), and int_0^1 (1/t) t^k (1 - t)^(L - k) dt = (k-1)! (L-k)! / L!, so

    NELBO(x) = sum_{M != {}} (|M| - 1)! (L - |M|)! / L! * sum_{i in M} -log p(x^i | x_{M^c})        (1)

which is also the average over all L! orders sigma of the any-order autoregressive NLL
sum_j -log p(x^{sigma_j} | x^{sigma_<j})  (Hoogeboom et al. 2022; Ou et al. 2025, RADD): a masked
diffusion model is an ensemble of autoregressive models, one per order. ``exact_nelbo`` and
``any_order_nll`` compute both by enumeration (2^L - 1 masks, L! orders), the oracle for the Monte
Carlo estimators. With the *true* conditionals of a distribution, (1) equals -log p(x) exactly, for
every order; with a model's, it bounds -log p_theta(x) of the model's own generative process.

``nelbo`` estimates E_x NELBO(x) / L over data windows (MDLM's 1/t or LLaDA's exact-count estimator,
``samples`` draws per window, stratified), with a standard error; ``perplexity_bound`` is exp of it.
A ``prompt_len`` leaves the first tokens unmasked: the bound is then on -log p(x_P.. | x_<P), the
quantity a causal LM's loss on the same tokens measures exactly.

``answer_log_likelihood`` is LLaDA's ``get_log_likelihood``: the ELBO of an answer span given
everything else in the sequence, for classification and multiple choice (``choose_answer``). For a
one-token answer it is exact: log p(answer | the rest).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..objectives.base import MASK_ID, _config_holder
from ..objectives.masked_diffusion import MaskedDiffusion, masked_nll
from ..validation import check_int

Denoiser = Callable[[torch.Tensor], torch.Tensor]  # x_t (K, L) -> log p(x_0 | x_t) (K, L, V)


def model_denoiser(model, objective: MaskedDiffusion) -> Denoiser:
    """The trained model as a denoiser of (K, L) id tensors (eval mode, no gradient; t = |masked| / L if the
    model is time-conditioned)."""

    @torch.no_grad()
    def denoise(x_t: torch.Tensor) -> torch.Tensor:
        t = (x_t == MASK_ID).float().mean(dim=1)
        return _eval(model, objective, lambda: objective.log_probs(model, x_t.to(_device(model)), t))

    return denoise


def exact_nelbo(denoiser: Denoiser, x: Sequence[int], batch_size: int = 256) -> float:
    """Equation (1) by enumerating all 2^L - 1 masks of the 1-D sequence ``x`` (nats; L <= 16)."""
    x = torch.as_tensor(x, dtype=torch.long)
    L = _check_short(x, 16, "exact_nelbo")
    masks = torch.tensor([[(m >> i) & 1 for i in range(L)] for m in range(1, 2 ** L)], dtype=torch.bool)
    sizes = masks.sum(dim=1)
    coefficient = torch.tensor([math.factorial(k - 1) * math.factorial(L - k) / math.factorial(L)
                                for k in sizes.tolist()], dtype=torch.float64)
    total = 0.0
    for start in range(0, len(masks), batch_size):
        chunk = masks[start:start + batch_size]
        x0 = x.expand(len(chunk), L)
        x_t = torch.where(chunk, torch.full_like(x0, MASK_ID), x0)
        nll = masked_nll(denoiser(x_t).double().cpu(), x0, chunk).sum(dim=1)
        total += float((coefficient[start:start + batch_size] * nll).sum())
    return total


def any_order_nll(denoiser: Denoiser, x: Sequence[int]) -> float:
    """The any-order autoregressive NLL averaged over all L! orders (nats; L <= 7): equals ``exact_nelbo``."""
    x = torch.as_tensor(x, dtype=torch.long)
    L = _check_short(x, 7, "any_order_nll")
    orders = list(itertools.permutations(range(L)))
    total = 0.0
    for j in range(L):  # step j of every order at once: positions sigma_<j visible, sigma_j predicted
        x_t = x.repeat(len(orders), 1)
        for row, order in enumerate(orders):
            x_t[row, list(order[j:])] = MASK_ID
        log_probs = denoiser(x_t).double().cpu()
        targets = torch.tensor([order[j] for order in orders])
        total += float(-log_probs[torch.arange(len(orders)), targets, x[targets]].sum())
    return total / len(orders)


@dataclass
class NELBOEstimate:
    """A Monte Carlo NELBO per scored token with its standard error (and the per-window values)."""

    per_token: float          # nats per scored token: mean over windows of NELBO(x) / tokens scored
    stderr: float             # standard error of per_token
    per_window: torch.Tensor  # (N,) each window's NELBO per scored token (mean of its draws)
    samples: int              # Monte Carlo draws per window
    scored_tokens: int        # tokens scored per window (L - prompt_len)

    @property
    def perplexity_bound(self) -> float:
        return math.exp(self.per_token)

    @property
    def perplexity_stderr(self) -> float:  # delta method
        return self.perplexity_bound * self.stderr


@torch.no_grad()
def nelbo(model, objective: MaskedDiffusion, windows: torch.Tensor, samples: int = 16, prompt_len: int = 0,
          estimator: Optional[str] = None, generator: Optional[torch.Generator] = None,
          batch_size: int = 256) -> NELBOEstimate:
    """Monte Carlo NELBO per token of the (N, L) ``windows`` under the model, ``samples`` draws each.

    The draws of one window are stratified (antithetic t, or stratified counts for ``exact_count``); the
    standard error is that of the mean over windows (over the draws when N = 1, which overstates it a
    little since stratified draws are negatively correlated). The first ``prompt_len`` tokens of each window
    are never masked: the bound is then on the other tokens given them.
    """
    check_int("nelbo", "samples", samples)
    check_int("nelbo", "prompt_len", prompt_len, minimum=0)
    windows = torch.as_tensor(windows, dtype=torch.long)
    if windows.dim() != 2 or prompt_len >= windows.shape[1]:
        raise ValueError(f"nelbo: windows must be (N, L) with L > prompt_len={prompt_len}, got shape "
                         f"{tuple(windows.shape)}")
    N, L = windows.shape
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device = _device(model)
    maskable = torch.arange(L) >= prompt_len
    draws = []
    per_call = max(samples, batch_size // samples * samples)  # whole windows per forward pass

    def estimate():
        repeated = windows.repeat_interleave(samples, dim=0)
        for start in range(0, len(repeated), per_call):
            x0 = repeated[start:start + per_call].to(device)
            c = objective.mask(x0, generator, maskable.expand_as(x0), estimator=estimator, group=samples)
            draws.append(objective.sequence_nelbo(model, c).double().cpu())

    _eval(model, objective, estimate)
    values = torch.cat(draws).reshape(N, samples) / (L - prompt_len)
    per_window = values.mean(dim=1)
    spread = per_window if N > 1 else values[0]
    stderr = float(spread.std(unbiased=True) / math.sqrt(len(spread))) if len(spread) > 1 else float("nan")
    return NELBOEstimate(per_token=float(per_window.mean()), stderr=stderr, per_window=per_window,
                         samples=samples, scored_tokens=L - prompt_len)


@torch.no_grad()
def answer_log_likelihood(model, objective: MaskedDiffusion, before: Sequence[int], answer: Sequence[int],
                          after: Sequence[int] = (), samples: int = 32,
                          generator: Optional[torch.Generator] = None) -> float:
    """A lower bound (the ELBO) on log p(answer | before, after) in nats, by masking only answer tokens.

    LLaDA's ``get_log_likelihood``: each draw masks exactly k of the A answer tokens (k stratified over the
    draws), weight A / k. A one-token answer needs one draw and is exact.
    """
    before, answer, after = (torch.as_tensor(list(s), dtype=torch.long) for s in (before, answer, after))
    if len(answer) == 0:
        raise ValueError("answer_log_likelihood: the answer is empty; pass at least one token")
    sequence = torch.cat([before, answer, after])[None, :]
    block = _config_holder(model).config.block_size
    if sequence.shape[1] > block:
        raise ValueError(f"answer_log_likelihood: {sequence.shape[1]} tokens do not fit the model's context of "
                         f"{block}; shorten the text around the answer")
    samples = 1 if len(answer) == 1 else samples
    positions = torch.arange(sequence.shape[1])
    maskable = ((positions >= len(before)) & (positions < len(before) + len(answer)))[None, :]
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device = _device(model)

    def estimate():
        x0 = sequence.expand(samples, -1).to(device)
        c = objective.mask(x0, generator, maskable.expand(samples, -1), estimator="exact_count")
        return float(objective.sequence_nelbo(model, c).double().mean())

    return -_eval(model, objective, estimate)


def choose_answer(model, objective: MaskedDiffusion, before: Sequence[int], candidates: Sequence[Sequence[int]],
                  after: Sequence[int] = (), samples: int = 32, seed: int = 0) -> tuple[int, list[float]]:
    """Multiple choice: the candidate with the highest ELBO between ``before`` and ``after``, and every score."""
    if not candidates:
        raise ValueError("choose_answer: no candidates; pass a list of token-id sequences")
    scores = [answer_log_likelihood(model, objective, before, c, after, samples, torch.Generator().manual_seed(seed))
              for c in candidates]
    return max(range(len(scores)), key=scores.__getitem__), scores


# --------------------------------------------------------------------------- helpers
def _check_short(x: torch.Tensor, longest: int, owner: str) -> int:
    if x.dim() != 1 or not 1 <= len(x) <= longest:
        raise ValueError(f"{owner}: x must be one sequence of 1 to {longest} tokens (enumeration grows "
                         f"exponentially), got shape {tuple(x.shape)}")
    return len(x)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _eval(model, objective, fn):
    """Run ``fn`` with model and objective in eval mode, restoring their modes afterwards."""
    was = model.training, objective.training
    model.eval()
    objective.eval()
    try:
        return fn()
    finally:
        model.train(was[0])
        objective.train(was[1])


__all__ = ["Denoiser", "model_denoiser", "exact_nelbo", "any_order_nll", "NELBOEstimate", "nelbo",
           "answer_log_likelihood", "choose_answer"]
