"""Masked diffusion language modeling: MDLM (Sahoo et al. 2024) and LLaDA's estimator (Nie et al. 2025).

A masked diffusion LM learns to undo a *forward process* that hides tokens. At time t in [0, 1] every
token of a clean sequence x_0 is replaced by [MASK] independently with probability 1 - alpha_t; at
t = 1 everything is hidden. MDLM's log-linear schedule (MDLM eq. 10, ``LogLinearNoise``) is

    sigma(t)      = -log(1 - (1 - eps) t),      alpha_t = exp(-sigma(t)) = 1 - (1 - eps) t,
    P(masked | t) = 1 - alpha_t = (1 - eps) t,  eps = 1e-3.

The network (the workbench's GPT, run bidirectionally) predicts x_0 at every masked position from
x_t. With the **SUBS parameterization** (MDLM sec. 3.2.3) it never predicts [MASK] (that logit is
-inf: "zero masking") and an unmasked position is copied from x_t ("carry-over"), so it costs exactly
nothing. The negative ELBO is then a weighted masked-token cross entropy (MDLM eq. 10-11):

    NELBO(x_0) = E_{t ~ U[0,1]} [ w(t) * sum_{i : x_t^i = [MASK]} -log p_theta(x_0^i | x_t) ],
    w(t) = -alpha_t' / (1 - alpha_t) = sigma'(t) / expm1(sigma(t)) = 1 / t    (exactly, for any eps).

The weight is 1/t, not 1/P(masked | t) = 1/((1 - eps) t). NELBO(x_0) >= -log p_theta(x_0), so
exp(NELBO / L) bounds the model's perplexity from above.

Estimators of the expectation over t (``estimator``):

* ``"mdlm"`` (MDLM's ``_sample_t`` and ``_loss``): t = (1 - eps) u + eps with u ~ U(0, 1), the batch's
  u's *antithetic* (stratified: row b draws u from [b/B, (b+1)/B)), which lowers the variance;
  each token masked independently with probability (1 - eps) t; weight 1/t.
* ``"exact_count"`` (LLaDA's ``get_log_likelihood.py``): draw the number of masked tokens
  k ~ U{1, ..., L} instead (stratified across the batch: k_b = floor(L ((u_0 + b/B) mod 1)) + 1), mask
  exactly k positions chosen uniformly, weight L / k. Integrating t out, E_t[(1/t) 1{|M| = k}] = 1 / (k C(L, k)), so both estimators have
  the same expectation, sum_k (1/k) E_{|M|=k}[sum_{i in M} -log p(x_0^i | x_M^c)]; this one has a lower
  variance (no 1/t blow-up near t = 0).

Both normalize the summed weighted cross entropy by *all* B * L tokens of the batch, not by the
masked count (MDLM ``_loss``: ``nlls.sum() / attention_mask.sum()``; LLaDA: ``/ (b * L)``), so the
loss is the NELBO per token and ``n_tokens`` is B * L.

``time_conditioning`` (MDLM's option, off by default there and here; RADD and LLaDA show it is not
needed) adds an embedding of sigma(t) to every input embedding: a sinusoidal code, then
Linear -> SiLU -> Linear, owned (trained, saved) by this objective.

The model reads the first block_size tokens of each (B, block_size + 1) window, without shifting.
Sampling, the ELBO as a metric and answer scoring are in ``workbench.diffusion``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..device import seeded
from ..validation import check_choice, check_range
from .base import MASK_ID, OBJECTIVES, Corruption, Objective, ObjectiveOutput, _config_holder, uniform

ESTIMATORS = ("mdlm", "exact_count")
DEFAULT_EPS = 1e-3  # MDLM's and LLaDA's eps


# --------------------------------------------------------------------------- the log-linear schedule
def mask_probability(t: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """1 - alpha_t = (1 - eps) t: the chance that a token is hidden at time t."""
    return (1 - eps) * t


def sigma(t: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """The total noise sigma(t) = -log(1 - (1 - eps) t) (alpha_t = exp(-sigma(t)))."""
    return -torch.log1p(-(1 - eps) * t)


def sigma_rate(t: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """d sigma / d t = (1 - eps) / (1 - (1 - eps) t)."""
    return (1 - eps) / (1 - (1 - eps) * t)


def loss_weight(t: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """The ELBO's weight sigma'(t) / expm1(sigma(t)), computed as MDLM does; it equals 1/t for every eps."""
    return sigma_rate(t, eps) / torch.expm1(sigma(t, eps))


def sample_times(batch_size: int, eps: float = DEFAULT_EPS, antithetic: bool = True, generator=None,
                 device="cpu", group: Optional[int] = None) -> torch.Tensor:
    """t = (1 - eps) u + eps, u ~ U(0, 1); antithetic: row b's u lies in [b / B, (b + 1) / B) (MDLM ``_sample_t``).

    ``group`` stratifies within consecutive groups of that many rows instead of across the whole batch
    (several draws for one sequence: each sequence gets the whole range of t).
    """
    u = uniform((batch_size,), generator, device).double()
    if antithetic:
        n = group or batch_size
        u = (u / n + (torch.arange(batch_size, device=device) % n).double() / n) % 1
    return ((1 - eps) * u + eps).float()


def stratified_uniforms(batch_size: int, generator=None, device="cpu", group: Optional[int] = None) -> torch.Tensor:
    """(u_0 + b / B) mod 1 for b = 0..B-1 with one u_0 ~ U(0, 1): each row's value is uniform, and together they
    cover [0, 1) evenly (LLaDA's stratified masked counts, ``get_log_likelihood.py`` ``forward_process``).
    ``group``: one u_0 per consecutive group of that many rows, stratified within it."""
    n = group or batch_size
    u0 = uniform(((batch_size + n - 1) // n,), generator, device).double().repeat_interleave(n)[:batch_size]
    return ((u0 + (torch.arange(batch_size, device=device) % n).double() / n) % 1).float()


# --------------------------------------------------------------------------- SUBS
def subs_log_probs(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int = MASK_ID) -> torch.Tensor:
    """SUBS (MDLM sec. 3.2.3): log p_theta(x_0 | x_t), (B, T, V) in float32.

    [MASK] gets probability 0 everywhere (zero masking); an unmasked position puts all its mass on the
    token it shows (carry-over: log-prob 0 there, -inf elsewhere); a masked one is the softmax of the other
    logits.
    """
    logits = logits.float().clone()
    logits[..., mask_id] = float("-inf")
    predicted = F.log_softmax(logits, dim=-1)
    carried = torch.full_like(predicted, float("-inf")).scatter(-1, x_t.unsqueeze(-1), 0.0)
    return torch.where((x_t == mask_id).unsqueeze(-1), predicted, carried)


def masked_nll(log_probs: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """-log p_theta(x_0^i | x_t) at the masked positions, exactly 0 elsewhere: (B, T)."""
    nll = -log_probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return torch.where(masked, nll, torch.zeros_like(nll))


@dataclass
class DiffusionCorruption(Corruption):
    """A Corruption that also carries the diffusion time and each row's ELBO weight."""

    t: Optional[torch.Tensor] = None       # (B,) diffusion time (for exact_count: k / L)
    weight: Optional[torch.Tensor] = None  # (B,) 1/t (mdlm) or L/k (exact_count)


class TimeEmbedding(nn.Module):
    """sigma(t) -> sinusoidal features -> Linear -> SiLU -> Linear(d_model) (MDLM's DiT ``TimestepEmbedder``)."""

    def __init__(self, d_model: int, features: int = 64):
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        half = self.features // 2
        frequencies = torch.exp(-math.log(10_000) * torch.arange(half, device=noise.device) / half)
        angles = noise.float()[:, None] * frequencies[None, :]
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1))


@OBJECTIVES.register("mdlm")
class MaskedDiffusion(Objective):
    """The masked diffusion objective: the NELBO per token, with SUBS, log-linear schedule, weight 1/t."""

    name = "mdlm"
    attention_mode = "bidirectional"

    def __init__(self, eps: float = DEFAULT_EPS, antithetic: bool = True, estimator: str = "mdlm",
                 time_conditioning: bool = False):
        check_range("MaskedDiffusion", "eps", eps, 0.0, 1.0, high_open=True)
        check_choice("MaskedDiffusion", "estimator", estimator, ESTIMATORS)
        for name, value in (("antithetic", antithetic), ("time_conditioning", time_conditioning)):
            if not isinstance(value, bool):
                raise ValueError(f"MaskedDiffusion.{name}={value!r} is invalid: it must be True or False")
        super().__init__(eps=eps, antithetic=antithetic, estimator=estimator, time_conditioning=time_conditioning)
        self.eps, self.antithetic, self.estimator = float(eps), antithetic, estimator
        self.time_conditioning = time_conditioning
        self.time_embedding: Optional[TimeEmbedding] = None

    def setup(self, model, seed: int = 0) -> None:
        if self.time_conditioning and self.time_embedding is None:
            with seeded(seed):
                self.time_embedding = TimeEmbedding(_config_holder(model).config.d_model)

    # ------------------------------------------------------------------ the forward process
    def mask(self, x0: torch.Tensor, generator=None, maskable: Optional[torch.Tensor] = None,
             estimator: Optional[str] = None, group: Optional[int] = None) -> DiffusionCorruption:
        """Draw x_t from the clean (B, L) x0: which positions are hidden, the time, each row's weight.

        ``maskable`` (B, L) bool limits the hiding to some positions (a prompt is never hidden; the count
        of the exact-count estimator is then out of each row's maskable positions). ``group`` stratifies the
        draws within consecutive groups of rows (several draws of one sequence) instead of across the batch.
        """
        estimator = estimator or self.estimator
        B, L = x0.shape
        device = x0.device
        maskable = torch.ones_like(x0, dtype=torch.bool) if maskable is None else maskable.to(device)
        n = maskable.sum(dim=1)
        if bool((x0 == MASK_ID).any()):
            raise ValueError(f"masked diffusion: the clean tokens contain the [MASK] id {MASK_ID}, which this objective "
                             "reserves for hidden positions; encode the text with a workbench tokenizer (ids 0-3 are "
                             "special and never occur in text) or shift the data's ids past them")
        if bool((n == 0).any()):
            raise ValueError("masked diffusion: a row has no position that may be masked (its whole length is "
                             "prompt); give every row at least one position to score")
        scores = uniform((B, L), generator, device)
        if estimator == "mdlm":
            t = sample_times(B, self.eps, self.antithetic, generator, device, group)
            masked = (scores < mask_probability(t, self.eps)[:, None]) & maskable
            weight = loss_weight(t, self.eps)
        else:
            v = stratified_uniforms(B, generator, device, group) if self.antithetic else uniform((B,), generator, device)
            k = torch.minimum((v * n).floor().long() + 1, n)  # uniform in {1, ..., n} for every row
            ranks = scores.masked_fill(~maskable, 2.0).argsort(dim=1).argsort(dim=1)
            masked = ranks < k[:, None]
            t = k.float() / n.float()
            weight = n.float() / k.float()
        x_t = torch.where(masked, torch.full_like(x0, MASK_ID), x0)
        targets = torch.where(masked, x0, torch.full_like(x0, -100))
        return DiffusionCorruption(inputs=x_t, targets=targets, attention_mode="bidirectional", original=x0,
                                   t=t, weight=weight)

    def corrupt(self, batch: torch.Tensor, vocab_size: int, generator=None) -> DiffusionCorruption:
        return self.mask(batch[:, :-1], generator)

    # ------------------------------------------------------------------ the reverse model
    def log_probs(self, model, x_t: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        """SUBS log p_theta(x_0 | x_t), (B, L, V): the model run bidirectionally on x_t (and t if conditioned)."""
        if self.time_embedding is not None:
            if t is None:
                raise ValueError("this masked diffusion model is time-conditioned: pass the time t (B,) "
                                 "(samplers pass it; with time_conditioning=False none is needed)")
            t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).expand(x_t.shape[0])
            gpt = _config_holder(model)
            embeds = gpt.token_embedding(x_t) + self.time_embedding(sigma(t, self.eps))[:, None, :]
            logits = model(inputs_embeds=embeds, attention_mode="bidirectional").logits
        else:
            logits = model(x_t, attention_mode="bidirectional").logits
        return subs_log_probs(logits, x_t)

    def sequence_nelbo(self, model, corruption: DiffusionCorruption) -> torch.Tensor:
        """One Monte Carlo draw of each row's NELBO in nats: weight * sum of masked -log p, (B,)."""
        log_probs = self.log_probs(model, corruption.inputs, corruption.t)
        nll = masked_nll(log_probs, corruption.original, corruption.inputs == MASK_ID)
        return corruption.weight * nll.sum(dim=1)

    def loss(self, model, batch: torch.Tensor, generator=None) -> ObjectiveOutput:
        c = self.corrupt(batch, self.tokenizer_vocab(_config_holder(model)), generator)
        per_row = self.sequence_nelbo(model, c)
        n_tokens = c.inputs.numel()
        masked = float((c.inputs == MASK_ID).float().mean())
        return ObjectiveOutput(loss=per_row.sum() / n_tokens, n_tokens=n_tokens, metrics={"masked_fraction": masked})

    def flops_per_token(self, model) -> int:
        extra = 0
        if self.time_embedding is not None:  # one small MLP per sequence, spread over its tokens
            gpt = _config_holder(model)
            matmuls = sum(m.weight.numel() for m in self.time_embedding.modules() if isinstance(m, nn.Linear))
            extra = 3 * 2 * matmuls // gpt.config.block_size
        return _config_holder(model).flops_per_token() + extra


__all__ = ["MaskedDiffusion", "DiffusionCorruption", "ESTIMATORS", "DEFAULT_EPS", "mask_probability", "sigma",
           "sigma_rate", "loss_weight", "sample_times", "stratified_uniforms", "subs_log_probs", "masked_nll"]
