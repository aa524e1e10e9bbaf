"""Sampling from a masked diffusion LM: start from [MASK]s, predict, commit some tokens, repeat.

A *canvas* is a (B, L) tensor of ids with [MASK] wherever a token is still to be generated: after a
prompt (generation), or anywhere (infilling). Given tokens are never changed, and no [MASK] is left
after the last step. Three samplers:

* ``"ancestral"`` (MDLM's ``_ddpm_caching_update``, Sahoo et al. 2024 sec. 4): times
  1 = t_0 > t_1 > ... > t_S = 1e-5 equally spaced; from t to s < t each masked token stays masked
  with probability s / t, else takes a token drawn from p_theta(x_0 | x_t) (SUBS: never [MASK]).
  When no token changed in a step and the model is not time-conditioned, the next step reuses
  the last prediction instead of running the model again. After the last step one argmax pass
  fills whatever is still masked (``noise_removal``).
* ``"low_confidence"`` (LLaDA's ``generate.py``, Nie et al. 2025, Alg. 2 and 3): every step predicts
  every masked position, x0 = argmax(logits + Gumbel noise) (noise in float64; temperature 0 is
  argmax), and commits the k most confident predictions (confidence = the softmax probability of
  x0); the other predictions are discarded ("remasked"). k per step comes from
  ``transfer_schedule``: the block's masked count divided evenly over its steps, the remainder on
  the first steps. With ``block_length`` the generated region is split into blocks decoded left to
  right (semi-autoregressive): a block's tokens are committed only in its own steps.
* ``"random"``: as low_confidence, but the k positions are chosen at random (LLaDA's "random"
  remasking).

``steps`` is the quality-versus-speed knob: fewer steps commit more tokens at once, each chosen
without seeing the others chosen with it. Every sampler returns a ``DenoisingTrace``: the final
tokens, the canvas after every step (for the denoising widget), when and with what confidence each
position was committed, and how many forward passes it took.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..inspect import encode_with_masks
from ..objectives.base import MASK_ID
from ..objectives.masked_diffusion import MaskedDiffusion
from ..validation import check_choice, check_int, check_range
from .elbo import _config_holder, _device, _eval

SAMPLERS = ("low_confidence", "random", "ancestral")
FINAL_TIME = 1e-5  # MDLM's last sampling time


@dataclass
class DenoisingTrace:
    """What a sampler did, step by step."""

    tokens: torch.Tensor        # (B, L) the result: no [MASK] left
    states: list = field(default_factory=list)  # the canvas before the first step and after every step (B, L)
    committed_at: Optional[torch.Tensor] = None  # (B, L) the step (1-based) that wrote each position; 0 = given
    confidence: Optional[torch.Tensor] = None    # (B, L) the model's probability of the token it wrote; nan = given
    forward_passes: int = 0


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps: n_masked // steps each, the remainder one more on the
    first steps (LLaDA's ``get_num_transfer_tokens``). Sums to n_masked."""
    check_int("transfer_schedule", "n_masked", n_masked, minimum=0)
    check_int("transfer_schedule", "steps", steps)
    base, remainder = divmod(n_masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator=None) -> torch.Tensor:
    """argmax of exp(logits) / (-log u)^temperature in float64 (LLaDA's ``add_gumbel_noise``): a sample from
    softmax(logits / temperature); temperature 0 is plain argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device="cpu").to(logits.device)
    u = u.clamp_min(torch.finfo(torch.float64).tiny)
    scores = logits.double() - temperature * torch.log(-torch.log(u))  # log of exp(logits) / (-log u)^tau
    return scores.argmax(dim=-1)


def low_confidence_step(log_probs: torch.Tensor, canvas: torch.Tensor, k: torch.Tensor,
                        allowed: Optional[torch.Tensor] = None, remasking: str = "low_confidence",
                        temperature: float = 0.0, generator=None):
    """One LLaDA step: predict every masked position, commit the ``k`` (per row) most confident, keep the rest masked.

    ``log_probs`` (B, L, V) are the model's SUBS log-probabilities for ``canvas`` (B, L); ``allowed`` (B, L)
    limits the positions that may be committed (the current block). Returns (new canvas, committed (B, L)
    bool, the model's probability of each predicted token (B, L)).
    """
    x0 = gumbel_argmax(log_probs, temperature, generator)
    masked = canvas == MASK_ID
    probability = _probability(log_probs, x0)
    if remasking == "low_confidence":
        confidence = probability
    else:
        confidence = torch.rand(canvas.shape, generator=generator, dtype=torch.float64).to(canvas.device)
    candidates = masked if allowed is None else masked & allowed
    ranked = torch.where(candidates, confidence, torch.full_like(confidence, float("-inf")))
    order = ranked.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # 0 = the most confident
    k = torch.as_tensor(k, device=canvas.device).reshape(-1, 1)
    committed = (order < k) & candidates
    return torch.where(committed, x0, canvas), committed, probability


@torch.no_grad()
def sample(model, objective: MaskedDiffusion, canvas: torch.Tensor, steps: int, sampler: str = "low_confidence",
           block_length: Optional[int] = None, start: int = 0, temperature: Optional[float] = None,
           generator: Optional[torch.Generator] = None) -> DenoisingTrace:
    """Fill every [MASK] of ``canvas`` ((L,) or (B, L) ids) in ``steps`` steps with ``sampler``.

    ``block_length`` (low_confidence and random only) splits positions ``start..L-1`` into blocks decoded
    left to right; (L - start) must be a multiple of it, and ``steps`` of the number of blocks.
    ``temperature``: default 0 (argmax) for low_confidence and random, 1 for ancestral.
    """
    check_choice("diffusion sample", "sampler", sampler, SAMPLERS)
    check_int("diffusion sample", "steps", steps)
    canvas = torch.as_tensor(canvas, dtype=torch.long)
    squeeze = canvas.dim() == 1
    canvas = (canvas[None] if squeeze else canvas).to(_device(model))
    if canvas.dim() != 2 or canvas.shape[1] == 0:
        raise ValueError(f"diffusion sample: canvas must be (L,) or (B, L) ids, got shape {tuple(canvas.shape)}")
    block = _config_holder(model).config.block_size
    if canvas.shape[1] > block:
        raise ValueError(f"diffusion sample: a canvas of {canvas.shape[1]} tokens does not fit the model's context "
                         f"of {block}; generate fewer tokens or shorten the prompt")
    temperature = (1.0 if sampler == "ancestral" else 0.0) if temperature is None else temperature
    check_range("diffusion sample", "temperature", temperature, 0.0, float("inf"))
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if sampler == "ancestral":
        if block_length is not None:
            raise ValueError("diffusion sample: block_length (semi-autoregressive blocks) is for the 'low_confidence' "
                             "and 'random' samplers; the ancestral sampler denoises the whole canvas at once")
        trace = _eval(model, objective, lambda: _ancestral(model, objective, canvas, steps, temperature, generator))
    else:
        blocks = _blocks(canvas.shape[1], start, block_length, steps)
        if block_length is not None and bool((canvas[:, :start] == MASK_ID).any()):
            raise ValueError(f"diffusion sample: the canvas has [MASK] before start={start}, outside every block; "
                             "with block_length the masks must lie after start (or leave block_length unset)")
        trace = _eval(model, objective, lambda: _remasking(model, objective, canvas, steps, blocks, sampler,
                                                            temperature, generator))
    if squeeze:
        trace.tokens = trace.tokens[0]
        trace.states = [s[0] for s in trace.states]
        trace.committed_at, trace.confidence = trace.committed_at[0], trace.confidence[0]
    return trace


def generate(model, objective: MaskedDiffusion, prompt_ids: Sequence[int], gen_length: int, steps: int,
             **options) -> DenoisingTrace:
    """Continue ``prompt_ids`` ((P,) or (B, P)) by ``gen_length`` tokens: the canvas is the prompt then masks."""
    check_int("diffusion generate", "gen_length", gen_length)
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long)
    squeeze = prompt.dim() == 1
    prompt = prompt[None] if squeeze else prompt
    canvas = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), MASK_ID, dtype=torch.long)], dim=1)
    return sample(model, objective, canvas[0] if squeeze else canvas, steps, start=prompt.shape[1], **options)


def infill(model, objective: MaskedDiffusion, tokenizer, text: str, steps: Optional[int] = None,
           **options) -> DenoisingTrace:
    """Fill each ``[MASK]`` written in ``text`` (one token each; the rest is given and never changes)."""
    canvas = torch.tensor(encode_with_masks(tokenizer, text), dtype=torch.long)
    n_masks = int((canvas == MASK_ID).sum())
    if n_masks == 0:
        raise ValueError("infill: the text has no [MASK]; write [MASK] where a token should be filled in")
    return sample(model, objective, canvas, steps or n_masks, **options)


# --------------------------------------------------------------------------- the samplers
def _blocks(length: int, start: int, block_length: Optional[int], steps: int) -> list[tuple[int, int, int]]:
    """(first position, end position, steps) of each block; one block over the whole canvas without block_length."""
    check_int("diffusion sample", "start", start, minimum=0)
    if block_length is None:
        return [(0, length, steps)]
    check_int("diffusion sample", "block_length", block_length)
    region = length - start
    if region <= 0 or region % block_length:
        raise ValueError(f"diffusion sample: the generated region ({region} tokens after position {start}) must be "
                         f"a positive multiple of block_length={block_length}; choose a block_length that divides it")
    n_blocks = region // block_length
    if steps % n_blocks:
        raise ValueError(f"diffusion sample: steps={steps} must be a multiple of the number of blocks ({n_blocks} "
                         f"blocks of {block_length}); every block gets the same number of steps")
    return [(start + b * block_length, start + (b + 1) * block_length, steps // n_blocks) for b in range(n_blocks)]


def _probability(log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """p(token) at each position, (B, L) float64, from (B, L, V) log-probabilities."""
    return log_probs.double().exp().gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _new_trace(canvas: torch.Tensor) -> DenoisingTrace:
    return DenoisingTrace(tokens=canvas, states=[canvas.clone().cpu()],
                          committed_at=torch.zeros(canvas.shape, dtype=torch.long),
                          confidence=torch.full(canvas.shape, float("nan"), dtype=torch.float64))


def _record(trace: DenoisingTrace, canvas, committed, confidence, step: int) -> None:
    committed, confidence = committed.cpu(), confidence.cpu().double()
    trace.committed_at[committed] = step
    trace.confidence[committed] = confidence[committed]
    trace.states.append(canvas.clone().cpu())


def _remasking(model, objective, canvas, steps, blocks, sampler, temperature, generator) -> DenoisingTrace:
    trace = _new_trace(canvas)
    positions = torch.arange(canvas.shape[1], device=canvas.device)
    step = 0
    for first, end, block_steps in blocks:
        in_block = (positions >= first) & (positions < end)
        # committing is allowed up to the end of the current block (LLaDA: confidence beyond it is -inf)
        allowed = (positions < end)[None, :].expand_as(canvas)
        masked_here = ((canvas == MASK_ID) & in_block).sum(dim=1).tolist()
        schedule = torch.tensor([transfer_schedule(n, block_steps) for n in masked_here])  # (B, steps)
        for i in range(block_steps):
            t = (canvas == MASK_ID).float().mean(dim=1)
            log_probs = objective.log_probs(model, canvas, t)
            trace.forward_passes += 1
            canvas, committed, confidence = low_confidence_step(log_probs, canvas, schedule[:, i].to(canvas.device),
                                                                allowed, sampler, temperature, generator)
            step += 1
            _record(trace, canvas, committed, confidence, step)
    trace.tokens = canvas
    return trace


def _ancestral(model, objective, canvas, steps, temperature, generator) -> DenoisingTrace:
    trace = _new_trace(canvas)
    times = torch.linspace(1.0, FINAL_TIME, steps + 1, dtype=torch.float64)
    cache = {"log_probs": None, "canvas": None}

    def predict(t: float) -> torch.Tensor:
        """p(x_0 | canvas): the last prediction again when the canvas did not change and t is not an input."""
        if (cache["log_probs"] is None or objective.time_embedding is not None
                or not torch.equal(cache["canvas"], canvas)):
            cache["log_probs"] = objective.log_probs(model, canvas, torch.full((canvas.shape[0],), t,
                                                                               device=canvas.device))
            cache["canvas"] = canvas.clone()
            trace.forward_passes += 1
        return cache["log_probs"]

    for i in range(steps):
        t, s = float(times[i]), float(times[i + 1])
        log_probs = predict(t)
        x0 = gumbel_argmax(log_probs, temperature, generator)  # a draw from softmax(log p / temperature)
        unmask = torch.rand(canvas.shape, generator=generator, dtype=torch.float64).to(canvas.device) >= s / t
        committed = (canvas == MASK_ID) & unmask
        canvas = torch.where(committed, x0, canvas)
        _record(trace, canvas, committed, _probability(log_probs, x0), i + 1)
    masked = canvas == MASK_ID
    if bool(masked.any()):  # noise removal: one argmax pass at the final time, part of the last step
        log_probs = predict(FINAL_TIME)
        x0 = log_probs.argmax(dim=-1)
        canvas = torch.where(masked, x0, canvas)
        trace.states.pop()
        _record(trace, canvas, masked, _probability(log_probs, x0), steps)
    trace.tokens = canvas
    return trace


__all__ = ["SAMPLERS", "DenoisingTrace", "transfer_schedule", "gumbel_argmax", "low_confidence_step", "sample",
           "generate", "infill"]
