"""Masked diffusion against autoregression: the perplexity ratio at equal training compute, and sampling speed.

``workbench bench --which diffusion`` trains, on the built-in stories (no data file needed) at the ``cpu``
preset's size (4 layers, width 128, context 64, 600 steps of 32 windows), for each seed a GPT (causal LM)
and the same network as a masked diffusion LM (LLaDA's exact-count estimator, as notebook 06), with the
same recipe, so the same training FLOPs. It prints:

* per seed, the AR perplexity and the diffusion perplexity bound on the same 63 characters of 64 validation
  windows (``diffusion.compare.likelihood_comparison``), their ratio, and the ratio's mean and spread over
  seeds; for seed 0 also the MDLM 1/t estimator's run;
* samples per second (64 prompts of 16 characters continued by 48) against the number of denoising steps for
  each sampler, next to the GPT's cached decoding of the same continuations, measured in alternating rounds
  (ABBA) and summarized by medians, with the share of characters the source could have written.

Runs go through the training cache (``train/cache.py``): a second bench, or notebook 06 under the ``cpu``
preset, reuses them.
"""
from __future__ import annotations

import statistics
import sys
from typing import Optional, Sequence

import torch

from .data import CharTokenizer, TokenData, default_story_source
from .diffusion.compare import continue_prompts, likelihood_comparison, sample_quality
from .models import GPT
from .objectives import CausalLM, MaskedDiffusion
from .presets import preset
from .train import Trainer, cached_fit

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_STEPS = (4, 12, 48)
SAMPLER_LABELS = {"ancestral": "ancestral", "low_confidence": "low confidence", "random": "random order"}


def _setup(steps: Optional[int]):
    P = preset("cpu")
    source = default_story_source()
    text = source.sample(P.corpus_chars, seed=0)
    tokenizer = CharTokenizer.train(text)
    data = TokenData.from_text(text, tokenizer)
    config = P.model_config(tokenizer.vocab_size, position="rope", norm="rmsnorm", mlp="swiglu")
    train_config = P.train_config(**({"steps": steps} if steps else {}))
    return source, data, config, train_config


def _train(config, train_config, data, objective, seed: int):
    model = GPT(config, seed=seed)
    trainer = Trainer(model, objective, data, train_config.replace(seed=train_config.seed + seed), callbacks=[])
    cached_fit(trainer, quiet=True)
    return model, trainer


def run_diffusion_bench(seeds: Sequence[int] = DEFAULT_SEEDS, sampler_steps: Sequence[int] = DEFAULT_STEPS,
                        train_steps: Optional[int] = None, rounds: int = 3, log=sys.stdout) -> dict:
    source, data, config, train_config = _setup(train_steps)
    windows = data.get_batch("val", 64, config.block_size, torch.Generator().manual_seed(7))
    per_seed, models = [], {}
    for seed in seeds:
        ar, _ = _train(config, train_config, data, CausalLM(), seed)
        objective = MaskedDiffusion(estimator="exact_count")
        diffusion, trainer = _train(config, train_config, data, objective, seed)
        row = {"seed": seed, "estimator": "exact_count", "train_s": trainer.elapsed,
               **likelihood_comparison(ar, diffusion, objective, windows, samples=16, seed=seed)}
        per_seed.append(row)
        models.setdefault("first", (ar, diffusion, objective))
        print(f"  seed {seed}: AR ppl {row['ar_ppl']:.3f}, diffusion bound {row['diffusion_ppl_bound']:.3f}, "
              f"ratio {row['ppl_ratio']:.2f} ± {row['ppl_ratio_stderr']:.2f}", file=log, flush=True)
    ar, _, _ = models["first"]
    mdlm = MaskedDiffusion(estimator="mdlm")
    mdlm_model, mdlm_trainer = _train(config, train_config, data, mdlm, seeds[0])
    mdlm_row = {"seed": seeds[0], "estimator": "mdlm", "train_s": mdlm_trainer.elapsed,
                **likelihood_comparison(ar, mdlm_model, mdlm, windows, samples=16, seed=seeds[0])}
    print(f"  seed {seeds[0]}, MDLM 1/t estimator: ratio {mdlm_row['ppl_ratio']:.2f} ± "
          f"{mdlm_row['ppl_ratio_stderr']:.2f}", file=log, flush=True)
    ratios = [r["ppl_ratio"] for r in per_seed]
    summary = {"mean": statistics.mean(ratios), "min": min(ratios), "max": max(ratios),
               "stdev": statistics.stdev(ratios) if len(ratios) > 1 else float("nan")}
    ar, diffusion, objective = models["first"]
    prompts = windows[:, :16]
    gen = config.block_size - 16
    setups = {"AR (cached)": {"model": "ar", "temperature": 1.0}}
    for steps in sampler_steps:
        for sampler, label in SAMPLER_LABELS.items():
            setups[f"{label}, {steps} steps"] = {"model": "diffusion", "sampler": sampler, "steps": steps}
    timings = {label: [] for label in setups}
    quality = {}
    for r in range(rounds):  # alternate the order every round (ABBA)
        order = list(setups) if r % 2 == 0 else list(reversed(setups))
        results = continue_prompts(ar, diffusion, objective, prompts, gen, {k: setups[k] for k in order}, seed=r)
        for label, (outputs, seconds, passes) in results.items():
            timings[label].append(seconds)
            if r == 0:
                quality[label] = {**{k: v for k, v in sample_quality(source, data.tokenizer, prompts, outputs).items()
                                     if k != "texts"}, "forward_passes": passes}
    speed = {label: {"median_s": statistics.median(t), "samples_per_s": len(prompts) / statistics.median(t),
                     **quality[label]} for label, t in timings.items()}
    return {"config": {"model": config.to_dict(), "steps": train_config.steps, "batch": train_config.batch_size},
            "per_seed": per_seed, "mdlm": mdlm_row, "ratio": summary, "sampling": speed, "prompts": len(prompts),
            "gen_length": gen}


def format_diffusion_report(results: dict) -> str:
    lines = [f"masked diffusion vs AR at equal training compute ({results['config']['steps']} steps of "
             f"{results['config']['batch']} x {results['config']['model']['block_size']} characters each)",
             f"{'seed':>5} {'estimator':>12} {'AR ppl':>8} {'diffusion bound':>16} {'ratio':>12}"]
    for row in [*results["per_seed"], results["mdlm"]]:
        lines.append(f"{row['seed']:>5} {row['estimator']:>12} {row['ar_ppl']:8.3f} {row['diffusion_ppl_bound']:16.3f} "
                     f"{row['ppl_ratio']:7.2f} ± {row['ppl_ratio_stderr']:.2f}")
    r = results["ratio"]
    lines.append(f"ratio over seeds (exact_count): mean {r['mean']:.2f}, min {r['min']:.2f}, max {r['max']:.2f}, "
                 f"stdev {r['stdev']:.2f} (published at scale: about 1.14-1.31, quoted)")
    lines.append(f"\nsampling: {results['prompts']} prompts continued by {results['gen_length']} characters, median of "
                 "alternating rounds")
    lines.append(f"{'setup':>28} {'samples/s':>10} {'passes':>7} {'valid prefix':>13} {'distinct-2':>10}")
    for label, row in results["sampling"].items():
        lines.append(f"{label:>28} {row['samples_per_s']:10.1f} {row['forward_passes']:7d} {row['valid_prefix']:13.1%} "
                     f"{row['distinct_2']:10.2f}")
    return "\n".join(lines)


__all__ = ["run_diffusion_bench", "format_diffusion_report", "DEFAULT_SEEDS", "DEFAULT_STEPS"]
