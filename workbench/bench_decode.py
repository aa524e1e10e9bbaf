"""Decoding throughput and generation-cache memory per attention variant, at several context lengths.

``workbench bench --which decode`` builds every setup of ``workbench.variants``
at the baby-GPT size (4 layers, 4 heads, width 128), fills its cache with a
prompt of ``context`` random tokens, then times greedy decoding one token at
a time with the cache. What it prints per setup and context:

* decode tokens/s (median over single-token steps, batch ``--batch``);
* cache bytes read off the actual cache tensors (``cache.nbytes()``), next to
  the variant's formula (``model.cache_bytes``): they must agree;
* the ratio of each to MHA at the same context.

Weights are random: speed and memory do not depend on them. Setups are
measured in alternating order (ABBA) over several rounds and summarized by
medians, because one competing process can slow a 2-core CPU step 10-40x.
The prompt goes in chunks of ``PREFILL_CHUNK`` tokens so that no variant
materializes a (context x context) score matrix.
"""
from __future__ import annotations

import statistics
import time
from typing import Optional, Sequence

import torch

from .config import ModelConfig
from .models import GPT
from .variants import setup_config, setup_names

DEFAULT_CONTEXTS = (256, 1024, 4096)
DEFAULT_NEW_TOKENS = 32
PREFILL_CHUNK = 256
BASE = dict(vocab_size=256, n_layer=4, n_head=4, d_model=128, dropout=0.0, bias=False, norm="rmsnorm",
            mlp="swiglu")


def build_models(contexts: Sequence[int], new_tokens: int, names: Optional[Sequence[str]] = None,
                 seed: int = 0) -> dict[str, GPT]:
    """One eval-mode model per setup, with a context long enough for the longest run."""
    base = ModelConfig(block_size=max(contexts) + new_tokens, **BASE)
    models = {}
    for name in names or setup_names():
        torch.manual_seed(seed)
        models[name] = GPT(setup_config(name, base)).eval()
    return models


@torch.no_grad()
def fill_cache(model: GPT, prompt: torch.Tensor, max_len: int):
    """The model's cache after reading ``prompt`` in chunks; returns (cache, last logits)."""
    cache = model.new_cache(prompt.shape[0], max_len)
    for start in range(0, prompt.shape[1], PREFILL_CHUNK):
        logits = model(prompt[:, start:start + PREFILL_CHUNK], cache=cache).logits[:, -1]
    return cache, logits


@torch.no_grad()
def decode_steps(model: GPT, cache, logits: torch.Tensor, steps: int) -> list[float]:
    """Greedy decoding with the cache; the wall seconds of each single-token step."""
    times = []
    token = logits.argmax(-1, keepdim=True)
    for _ in range(steps):
        start = time.perf_counter()
        token = model(token, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - start)
    return times


def run_decode_bench(contexts: Sequence[int] = DEFAULT_CONTEXTS, new_tokens: int = DEFAULT_NEW_TOKENS,
                     batch: int = 1, rounds: int = 3, names: Optional[Sequence[str]] = None, log=None) -> dict:
    """Measure every setup at every context; returns JSON-ready figures (see the module docstring)."""
    models = build_models(contexts, new_tokens, names)
    generator = torch.Generator().manual_seed(0)
    results = {name: {"attention": m.config.attention, "parameters": m.num_parameters(), "contexts": {}}
               for name, m in models.items()}
    for context in contexts:
        prompt = torch.randint(4, BASE["vocab_size"], (batch, context), generator=generator)
        step_times = {name: [] for name in models}
        for r in range(rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for name in order:
                cache, logits = fill_cache(models[name], prompt, context + new_tokens)
                step_times[name] += decode_steps(models[name], cache, logits, new_tokens)
                if r == 0:  # the cache now holds context + new_tokens tokens
                    results[name]["contexts"][context] = {
                        "cache_bytes_measured": cache.nbytes(),
                        "cache_bytes_formula": batch * models[name].cache_bytes(context + new_tokens)}
        for name, times in step_times.items():
            figures = results[name]["contexts"][context]
            figures["decode_tokens_per_s"] = batch / statistics.median(times)
            figures["step_ms_median"] = 1000 * statistics.median(times)
        if log is not None:
            print(f"    context {context}: " + ", ".join(
                f"{name} {results[name]['contexts'][context]['decode_tokens_per_s']:,.0f} tok/s"
                for name in models), file=log, flush=True)
    return {"contexts": list(contexts), "new_tokens": new_tokens, "batch": batch, "rounds": rounds,
            "base_config": {**BASE, "block_size": max(contexts) + new_tokens}, "setups": results,
            "ratios_at_longest_context": ratios_to_mha(results, max(contexts))}


def ratios_to_mha(results: dict, context: int) -> dict:
    """Cache bytes and decode tokens/s of each setup divided by MHA's at ``context``."""
    if "MHA" not in results:
        return {}
    mha = results["MHA"]["contexts"][context]
    return {name: {"cache": r["contexts"][context]["cache_bytes_measured"] / mha["cache_bytes_measured"],
                   "decode_speed": r["contexts"][context]["decode_tokens_per_s"] / mha["decode_tokens_per_s"]}
            for name, r in results.items()}


def format_decode_report(figures: dict) -> str:
    """One row per setup: decode tok/s and cache size at each context, then the ratios to MHA."""
    contexts, setups = figures["contexts"], figures["setups"]
    head = ["setup", "params"] + [f"T={c}: tok/s | cache" for c in contexts]
    rows = []
    for name, r in setups.items():
        cells = []
        for c in contexts:
            f = r["contexts"][c]
            agree = "" if f["cache_bytes_measured"] == f["cache_bytes_formula"] else " (formula differs!)"
            cells.append(f"{f['decode_tokens_per_s']:,.0f} | {_size(f['cache_bytes_measured'])}{agree}")
        rows.append([name, f"{r['parameters']:,}"] + cells)
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]

    def line(row):
        return "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()

    longest = max(contexts)
    out = [f"Decoding, batch {figures['batch']}, {figures['new_tokens']} new tokens after a prompt of T tokens "
           f"(median step over {figures['rounds']} alternating rounds); cache = bytes of the actual cache tensors, "
           "equal to each variant's formula unless marked",
           "", line(head), line(["-" * w for w in widths]), *map(line, rows), "",
           f"ratios to MHA at T={longest}:"]
    for name, ratio in figures["ratios_at_longest_context"].items():
        out.append(f"  {name:<15} cache {ratio['cache']:.3f}x   decode speed {ratio['decode_speed']:.2f}x")
    return "\n".join(out)


def _size(n: int) -> str:
    return f"{n / 2 ** 20:.2f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB"
