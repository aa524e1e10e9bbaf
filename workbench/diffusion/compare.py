"""Autoregression against masked diffusion at equal training compute, measured three ways.

Both models are the same GPT (same config, same initial weights), trained on the same data with the
same TrainConfig; the diffusion objective runs the same network on the same tokens per step, so the
training FLOPs are equal (``Objective.flops_per_token``; ``compare_ar_diffusion`` checks it).

1. **Likelihood.** On the same validation windows, the causal LM's exact NLL of tokens 1..L-1 given
   token 0, and the diffusion model's NELBO of the same tokens given token 0 (``elbo.nelbo`` with
   ``prompt_len=1``): an upper bound on its NLL. exp of each is a perplexity (the diffusion one a
   bound); their ratio is what MDLM's tables report at scale (about 1.15-1.3).
2. **Samples.** Both continue the same prompts (the first characters of validation windows); each
   continuation is scored by the stories source itself, which knows the exact probability of any text
   (``StorySource.window_log_prob``): nats per character of the continuation given the prompt (the
   source's own continuations average its entropy rate), the share the source could have written at
   all, how far into a continuation the first impossible character comes, and distinct word n-grams (a sampler that always writes the same likely sentence scores well
   on likelihood and badly here).
3. **Speed.** Wall time to write the continuations, against the number of denoising steps.
"""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..generate import generate as ar_generate
from ..objectives.base import MASK_ID
from ..objectives.masked_diffusion import MaskedDiffusion
from .elbo import _device, nelbo
from .sampling import sample as diffusion_sample


@torch.no_grad()
def causal_nll(model, windows: torch.Tensor, prompt_len: int = 1) -> torch.Tensor:
    """Each window's exact causal-LM NLL per token of tokens prompt_len..L-1 given the ones before, (N,)."""
    was = model.training
    model.eval()
    try:
        windows = windows.to(_device(model))
        logits = model(windows[:, :-1]).logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")[:, prompt_len - 1:]
    finally:
        model.train(was)
    return nll.mean(dim=1).double().cpu()


def likelihood_comparison(ar_model, diffusion_model, objective: MaskedDiffusion, windows: torch.Tensor,
                          samples: int = 16, seed: int = 0) -> dict:
    """AR perplexity against the diffusion perplexity bound on the same tokens of the same (N, L) windows."""
    ar = causal_nll(ar_model, windows)
    bound = nelbo(diffusion_model, objective, windows, samples=samples, prompt_len=1,
                  generator=torch.Generator().manual_seed(seed))
    ar_mean = float(ar.mean())
    # the ratio of perplexities is exp(difference of per-token NLLs); its s.e. from the paired per-window differences
    difference = bound.per_window - ar
    difference_se = float(difference.std() / math.sqrt(len(difference))) if len(difference) > 1 else float("nan")
    return {"ar_nll": ar_mean, "ar_ppl": math.exp(ar_mean), "ar_stderr": float(ar.std() / math.sqrt(len(ar))),
            "diffusion_nelbo": bound.per_token, "diffusion_stderr": bound.stderr,
            "diffusion_ppl_bound": bound.perplexity_bound, "ppl_ratio": math.exp(bound.per_token - ar_mean),
            "ppl_ratio_stderr": math.exp(bound.per_token - ar_mean) * difference_se,
            "windows": len(windows), "mc_samples": samples, "scored_tokens": bound.scored_tokens}


def distinct_ngrams(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams of ``texts`` (Li et al. 2016's distinct-n), 0 when there are none."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def sample_quality(source, tokenizer, prompts: torch.Tensor, outputs: torch.Tensor) -> dict:
    """Score continuations by the source's exact probability: (N, P) prompts, (N, P + G) outputs.

    ``valid_fraction``: continuations the source could have written whole; ``valid_prefix``: the mean share
    of a continuation's characters before the first one the source could not have written there;
    ``source_nats_per_char``: -log p_source(continuation | prompt) per character, over the valid ones.
    """
    prompt_len = prompts.shape[1]
    nats, valid, prefix, texts = [], 0, [], []
    for prompt, output in zip(prompts.tolist(), outputs.tolist()):
        before = tokenizer.decode(prompt)
        continuation = tokenizer.decode(output[prompt_len:])
        texts.append(continuation)
        if not continuation:
            prefix.append(0.0)
            continue
        joint = source.window_log_prob(before + continuation)
        prefix.append(max(0, source.writable_prefix(before + continuation) - len(before)) / len(continuation))
        if math.isfinite(joint):
            valid += 1
            nats.append(-(joint - source.window_log_prob(before)) / len(continuation))
    return {"source_nats_per_char": sum(nats) / len(nats) if nats else float("nan"),
            "valid_fraction": valid / len(texts), "valid_prefix": sum(prefix) / len(prefix),
            "distinct_2": distinct_ngrams(texts, 2), "distinct_3": distinct_ngrams(texts, 3), "texts": texts}


def timed(fn):
    """(fn(), wall seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def continue_prompts(ar_model, diffusion_model, objective: MaskedDiffusion, prompts: torch.Tensor, gen_length: int,
                     setups: dict, seed: int = 0) -> dict:
    """Continuations of (N, P) ``prompts`` by each setup: label -> (outputs (N, P + G), seconds, forward passes).

    A setup is ``{"model": "ar", "temperature": 1.0}`` or ``{"model": "diffusion", "sampler": ..., "steps": ...,
    "temperature": ...}`` (and ``block_length``).
    """
    results = {}
    for label, setup in setups.items():
        options = {k: v for k, v in setup.items() if k != "model"}
        if setup["model"] == "ar":
            outputs, seconds = timed(lambda: ar_generate(ar_model, prompts, gen_length, seed=seed, **options))
            results[label] = (outputs.cpu(), seconds, gen_length)
        else:
            canvas = torch.cat([prompts, torch.full((len(prompts), gen_length), MASK_ID, dtype=torch.long)], dim=1)
            trace, seconds = timed(lambda: diffusion_sample(diffusion_model, objective, canvas, start=prompts.shape[1],
                                                            generator=torch.Generator().manual_seed(seed), **options))
            results[label] = (trace.tokens.cpu(), seconds, trace.forward_passes)
    return results


def compare_ar_diffusion(ar_model, diffusion_model, objective: MaskedDiffusion, data, source, *,
                         windows: int = 64, mc_samples: int = 16, prompt_len: int = 16, gen_length: Optional[int] = None,
                         setups: Optional[dict] = None, seed: int = 0) -> dict:
    """Every figure of this module for two trained models: likelihoods, sample quality and time per setup.

    ``gen_length`` defaults to the rest of the context after the prompt; ``setups`` to AR at temperature 1
    and each diffusion sampler with one token per step.
    """
    block = ar_model.config.block_size
    gen_length = gen_length or block - prompt_len
    batch = data.get_batch("val", windows, block, torch.Generator().manual_seed(seed + 7))
    report = {"likelihood": likelihood_comparison(ar_model, diffusion_model, objective, batch, mc_samples, seed)}
    setups = setups or default_setups(gen_length)
    prompts = batch[:, :prompt_len]
    results = continue_prompts(ar_model, diffusion_model, objective, prompts, gen_length, setups, seed)
    tokenizer = data.tokenizer
    report["samples"] = {}
    for label, (outputs, seconds, passes) in results.items():
        quality = sample_quality(source, tokenizer, prompts, outputs)
        report["samples"][label] = {**{k: v for k, v in quality.items() if k != "texts"}, "seconds": seconds,
                                    "samples_per_s": len(prompts) / seconds, "forward_passes": passes,
                                    "example": quality["texts"][0]}
    reference = batch[:, :prompt_len + gen_length]
    quality = sample_quality(source, tokenizer, prompts, reference)
    report["samples"]["the source itself"] = {k: v for k, v in quality.items() if k != "texts"}
    report["entropy_rate"] = source.entropy_rate_per_char()
    return report


def default_setups(gen_length: int, steps: Optional[Sequence[int]] = None) -> dict:
    """AR at temperature 1, and each diffusion sampler at each number of steps (default: one token per step)."""
    setups = {"AR, temperature 1": {"model": "ar", "temperature": 1.0}}
    for n in steps or (gen_length,):
        setups[f"ancestral, {n} steps"] = {"model": "diffusion", "sampler": "ancestral", "steps": n}
        setups[f"low confidence, {n} steps"] = {"model": "diffusion", "sampler": "low_confidence", "steps": n}
        setups[f"random order, {n} steps"] = {"model": "diffusion", "sampler": "random", "steps": n}
    return setups


__all__ = ["causal_nll", "likelihood_comparison", "distinct_ngrams", "sample_quality", "continue_prompts",
           "compare_ar_diffusion", "default_setups", "timed"]
