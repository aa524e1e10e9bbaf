"""Exercises of notebook 05 (objectives compared): the prefix LM's attention mask, T5's de-corruption and
the number of steps that spends a compute budget.

Each reference is the library's own computation: ``attention.attention_mask("prefix", ...)``,
``span_corruption.decorrupt`` and ``equal_compute.steps_for_flops``.
"""
from __future__ import annotations

import math

import torch

from ..equal_compute import steps_for_flops
from ..models.attention import attention_mask
from ..objectives.span_corruption import corrupt_spans, decorrupt, random_spans_noise_mask
from . import register
from .checking import Case, Exercise, Mistake


# --------------------------------------------------------------------------- 05.1 the prefix LM's mask
def _prefix_mask_reference(length, prefix_len):
    return attention_mask("prefix", torch.arange(length), length, torch.tensor([prefix_len]))[0, 0]


def _causal_only(length, prefix_len):
    return torch.ones(length, length, dtype=torch.bool).tril()


def _prefix_block_only(length, prefix_len):
    """the prefix block is bidirectional, but suffix queries cannot read the prefix at all"""
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return ((i < prefix_len) & (j < prefix_len)) | ((i >= prefix_len) & (j >= prefix_len) & (j <= i))


def _prefix_one_too_long(length, prefix_len):
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return (j <= i) | (j <= prefix_len)


def _everything(length, prefix_len):
    return torch.ones(length, length, dtype=torch.bool)


register(Exercise(
    id="05.1", title="the prefix LM's attention mask", function_name="prefix_lm_mask", difficulty="easy",
    minutes=5, reference=_prefix_mask_reference,
    cases=lambda: [Case("6 tokens, prefix 3", (6, 3)), Case("8 tokens, prefix 0 (a causal LM)", (8, 0)),
                   Case("5 tokens, prefix 5 (all prefix: bidirectional)", (5, 5)),
                   Case("10 tokens, prefix 1", (10, 1)), Case("12 tokens, prefix 7", (12, 7))],
    mistakes=[
        Mistake("this is the causal mask: inside the prefix a query may also read LATER prefix keys (j < P)",
                _causal_only),
        Mistake("the suffix cannot read the prefix here: a suffix query reads every key j <= i, the prefix included",
                _prefix_block_only),
        Mistake("the prefix is one token too long: keys j < P are the prefix (positions 0..P-1), not j <= P",
                _prefix_one_too_long),
        Mistake("this is the bidirectional mask: after the prefix, tokens must not read the future", _everything),
    ],
))


# --------------------------------------------------------------------------- 05.2 T5's de-corruption
def _decorrupt_reference(inputs, targets, sentinel_ids):
    return decorrupt(inputs, targets, sentinel_ids).tolist()


def _spans_in_order_of_appearance_backwards(inputs, targets, sentinel_ids):
    """the spans are put back in reverse order"""
    body = targets[:-1]
    spans, current = [], None
    for token in body:
        if token in sentinel_ids:
            current = []
            spans.append(current)
        else:
            current.append(token)
    spans = spans[::-1]
    out, k = [], 0
    for token in inputs:
        if token in sentinel_ids:
            out.extend(spans[k])
            k += 1
        else:
            out.append(token)
    return out


def _keeps_sentinels(inputs, targets, sentinel_ids):
    """the sentinel is kept in front of its span"""
    body = targets[:-1]
    spans, current = {}, None
    for token in body:
        if token in sentinel_ids:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    out = []
    for token in inputs:
        out.extend([token] + spans[token] if token in sentinel_ids else [token])
    return out


def _keeps_eos(inputs, targets, sentinel_ids):
    return _decorrupt_reference(inputs, targets, sentinel_ids) + [targets[-1]]


def _decorrupt_cases():
    g = torch.Generator().manual_seed(51)
    sentinels = list(range(59, 43, -1))  # 16 sentinels counting down from vocab 60 - 1, as T5 numbers them
    cases = [Case("the worked example: 2 spans", ([7, 8, 59, 11, 58, 14], [59, 9, 10, 58, 12, 13, 3], sentinels))]
    for label, length, density, mean in (("20 tokens, density 0.15, mean span 3", 20, 0.15, 3.0),
                                         ("40 tokens, density 0.3, mean span 2", 40, 0.3, 2.0),
                                         ("64 tokens, density 0.5, mean span 5", 64, 0.5, 5.0),
                                         ("12 tokens, density 0.25, mean span 1", 12, 0.25, 1.0)):
        ids = torch.randint(4, 44, (length,), generator=g)
        noise = random_spans_noise_mask(length, density, mean, g)
        inputs, targets = corrupt_spans(ids, noise, sentinels)
        cases.append(Case(label, (inputs.tolist(), targets.tolist(), sentinels)))
    return cases


register(Exercise(
    id="05.2", title="T5's de-corruption", function_name="decorrupt_spans", difficulty="medium", minutes=15,
    reference=_decorrupt_reference, cases=_decorrupt_cases,
    mistakes=[
        Mistake("the spans go back in the wrong order: the span after sentinel s in the target replaces sentinel s "
                "in the input", _spans_in_order_of_appearance_backwards),
        Mistake("the sentinels are still there: each sentinel is replaced by its span, not followed by it",
                _keeps_sentinels),
        Mistake("the target's final [EOS] (id 3) ended up in the text: it only closes the target", _keeps_eos),
    ],
))


# --------------------------------------------------------------------------- 05.3 steps for a compute budget
def _rounded_up(flops_budget, flops_per_token, tokens_per_step):
    return math.ceil(flops_budget / (flops_per_token * tokens_per_step))


def _per_token_not_per_step(flops_budget, flops_per_token, tokens_per_step):
    return max(1, math.floor(flops_budget / flops_per_token))


def _forward_only(flops_budget, flops_per_token, tokens_per_step):
    return max(1, math.floor(3 * flops_budget / (flops_per_token * tokens_per_step)))


register(Exercise(
    id="05.3", title="steps for a compute budget", function_name="steps_for_budget", difficulty="easy", minutes=5,
    reference=steps_for_flops,
    cases=lambda: [Case("1e12 FLOPs, 1.2e6 FLOPs/token, 2048 tokens/step", (1e12, 1_200_000, 2048)),
                   Case("a budget of exactly 10 steps", (10 * 3_000 * 512, 3_000, 512)),
                   Case("a budget of 10.9 steps: round down (never overspend)", (10.9 * 3_000 * 512, 3_000, 512)),
                   Case("a budget smaller than one step: still one step", (1e3, 5_000, 64)),
                   Case("ELECTRA-like: 1.3x the FLOPs per token of CLM", (5e11, 1_560_000, 1024))],
    mistakes=[
        Mistake("this rounds up: a last partial step would spend more than the budget; round down (but train at "
                "least one step)", _rounded_up),
        Mistake("this is a number of tokens, not steps: divide by the tokens each step processes too",
                _per_token_not_per_step),
        Mistake("flops_per_token already counts forward and backward (6N per token): do not multiply by 3",
                _forward_only),
    ],
))
