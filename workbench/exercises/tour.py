"""Exercises of notebook 00 (tour): the loss a language model minimizes, the floor under it, and sampling.

* 00.1 cross-entropy from logits: the training loss (checked against ``torch.nn.functional.cross_entropy``,
  which the library's ``CausalLM`` objective calls).
* 00.2 the entropy rate of a story source, ``h = sum_s pi(s) H(s) / sum_s pi(s) L(s)`` nats per character
  (checked against ``StorySource.entropy_rate_per_char``, the floor drawn under the loss curve).
* 00.3 top-p (nucleus) filtering of a probability vector (Holtzman et al. 2020, "The Curious Case of
  Neural Text Degeneration", Sec. 3.1: the smallest set of tokens whose probability reaches p), checked
  against ``workbench.generate.filter_logits``, the filter the sampler uses.

Each exercise compares the learner's function with the library's own computation.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.stories import StorySource, default_story_source
from ..generate import filter_logits
from .checking import Case, Exercise, Mistake
from . import register


# --------------------------------------------------------------------------- 00.1 cross-entropy
def _cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _cross_entropy_cases():
    g = torch.Generator().manual_seed(0)
    return [
        Case("3 positions, vocabulary 5", (torch.randn(3, 5, generator=g), torch.tensor([0, 4, 2]))),
        Case("a batch of 2 x 4 positions, vocabulary 7",
             (torch.randn(2, 4, 7, generator=g) * 3, torch.randint(0, 7, (2, 4), generator=g))),
        Case("large logits (exp(100) overflows float32: use log-sum-exp)",
             (torch.tensor([[100.0, -100.0, 0.0], [0.0, 100.0, 99.0]]), torch.tensor([0, 2]))),
        Case("uniform logits: the loss is ln(vocabulary)", (torch.zeros(4, 10), torch.tensor([1, 2, 3, 9]))),
    ]


register(Exercise(
    id="00.1", title="cross-entropy from logits", function_name="cross_entropy", difficulty="easy", minutes=10,
    reference=_cross_entropy_reference, cases=_cross_entropy_cases,
    mistakes=[
        Mistake("this is the loss without the log-sum-exp term: subtract logsumexp(logits) before taking the "
                "target's entry",
                lambda z, y: -z.reshape(-1, z.shape[-1]).gather(-1, y.reshape(-1, 1)).mean()),
        Mistake("this is the sum over positions, not the mean",
                lambda z, y: F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), reduction="sum")),
        Mistake("this is +log p: the loss is the NEGATIVE log-probability of the target",
                lambda z, y: -F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1))),
    ],
))


# --------------------------------------------------------------------------- 00.2 entropy rate
def _entropy_rate_reference(source: StorySource) -> float:
    return source.entropy_rate_per_char()


def _per_state(source: StorySource):
    """(pi, H, L) in the order of source.names: stationary probability, choice entropy, mean characters."""
    pi = source.stationary()
    H = np.array([-sum(p * math.log(p) for p, _, _ in source.states[s]) for s in source.names])
    L = np.array([sum(p * len(t) for p, t, _ in source.states[s]) for s in source.names])
    return pi, H, L


def _random_source(seed: int) -> StorySource:
    """Three states with random probabilities and texts of random lengths (prefix-free: distinct letters)."""
    g = torch.Generator().manual_seed(seed)
    names = ["a", "b", "c"]
    states = {}
    for i, name in enumerate(names):
        n_moves = 3
        probs = torch.softmax(torch.randn(n_moves, generator=g, dtype=torch.float64) * 1.5, 0).tolist()
        lengths = torch.randint(1, 6, (n_moves,), generator=g).tolist()
        targets = torch.randint(0, len(names), (n_moves,), generator=g).tolist()
        targets[0] = (i + 1) % len(names)  # a cycle a -> b -> c -> a keeps the chain irreducible
        letters = "xyz"
        states[name] = [(probs[k] / sum(probs), letters[k] * lengths[k], names[targets[k]])
                        for k in range(n_moves)]
    return StorySource(states, start="a")


def _entropy_rate_cases():
    return [
        Case("one state, a fair coin between 'a' and 'b': ln 2 nats per character",
             (StorySource({"s": [(0.5, "a", "s"), (0.5, "b", "s")]}, start="s"),)),
        Case("one state, texts of 1 and 2 characters: divide by the MEAN LENGTH written per step",
             (StorySource({"s": [(0.5, "a", "s"), (0.5, "bb", "s")]}, start="s"),)),
        Case("two states visited unequally often (pi is not uniform: weight each state by pi)",
             (StorySource({"x": [(0.9, "a", "x"), (0.1, "b", "y")], "y": [(1.0, "ccc", "x")]}, start="x"),)),
        Case("three random states (seed 0)", (_random_source(0),)),
        Case("the notebook's story source (16 states)", (default_story_source(),)),
    ]


def _rate_bits(source):
    pi, H, L = _per_state(source)
    return float(pi @ H / (pi @ L)) / math.log(2)


def _rate_per_step(source):
    pi, H, _ = _per_state(source)
    return float(pi @ H)


def _rate_unweighted(source):
    _, H, L = _per_state(source)
    return float(H.mean() / L.mean())


def _rate_mean_of_ratios(source):
    pi, H, L = _per_state(source)
    return float(pi @ (H / L))


register(Exercise(
    id="00.2", title="the entropy rate of a story source", function_name="entropy_rate", difficulty="medium",
    minutes=15, reference=_entropy_rate_reference, cases=_entropy_rate_cases,
    mistakes=[
        Mistake("this is the rate in bits: the loss is in nats (natural log), so do not divide by ln 2",
                _rate_bits),
        Mistake("this is the entropy per STEP of the chain: divide by the characters written per step, "
                "sum_s pi(s) L(s)", _rate_per_step),
        Mistake("this averages the states equally: weight each state by how often the chain is in it, pi(s)",
                _rate_unweighted),
        Mistake("this is sum_s pi(s) H(s)/L(s), an average of per-state ratios: the rate is a ratio of two "
                "averages, sum_s pi(s) H(s) / sum_s pi(s) L(s)", _rate_mean_of_ratios),
    ],
))


# --------------------------------------------------------------------------- 00.3 top-p
def _top_p_reference(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The library's sampler: filter_logits on log-probabilities, then softmax renormalizes the kept tokens."""
    return filter_logits(probs.log(), top_p=p).softmax(dim=-1)


def _top_p_cases():
    g = torch.Generator().manual_seed(0)
    return [
        Case("the token that carries the sum past p is kept: [0.5, 0.3, 0.15, 0.05], p = 0.7",
             (torch.tensor([0.5, 0.3, 0.15, 0.05]), 0.7)),
        Case("unsorted input with ties: [0.2, 0.3, 0.2, 0.3], p = 0.55 (both 0.3s are needed)",
             (torch.tensor([0.2, 0.3, 0.2, 0.3]), 0.55)),
        Case("a single dominant token: [0.01, 0.96, 0.02, 0.01], p = 0.9",
             (torch.tensor([0.01, 0.96, 0.02, 0.01]), 0.9)),
        Case("p = 1 keeps every token", (torch.softmax(torch.randn(6, generator=g), -1), 1.0)),
        Case("a batch of 3 rows over 8 tokens, p = 0.8 (filter each row on its own)",
             (torch.softmax(torch.randn(3, 8, generator=g) * 2, -1), 0.8)),
    ]


def _sorted(probs):
    return torch.sort(probs, descending=True, dim=-1)


def _top_p_drops_crossing(probs, p):
    values, order = _sorted(probs)
    keep_sorted = values.cumsum(-1) <= p
    keep_sorted[..., 0] = True
    kept = torch.where(keep_sorted.scatter(-1, order, keep_sorted), probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


def _top_p_no_renormalize(probs, p):
    values, order = _sorted(probs)
    keep_sorted = (values.cumsum(-1) - values) < p
    return torch.where(keep_sorted.scatter(-1, order, keep_sorted), probs, torch.zeros_like(probs))


def _top_p_ascending(probs, p):
    values, order = torch.sort(probs, dim=-1)
    keep_sorted = (values.cumsum(-1) - values) < p
    kept = torch.where(keep_sorted.scatter(-1, order, keep_sorted), probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


def _top_p_sorted_order(probs, p):
    values, _ = _sorted(probs)
    kept = torch.where((values.cumsum(-1) - values) < p, values, torch.zeros_like(values))
    return kept / kept.sum(-1, keepdim=True)


register(Exercise(
    id="00.3", title="top-p (nucleus) filtering", function_name="top_p_filter", difficulty="medium", minutes=15,
    reference=_top_p_reference, cases=_top_p_cases,
    mistakes=[
        Mistake("this drops the token whose probability carries the sum past p: keep a token while the mass "
                "of the tokens BEFORE it is still below p", _top_p_drops_crossing),
        Mistake("the kept probabilities do not sum to 1: divide them by their sum (renormalize)",
                _top_p_no_renormalize),
        Mistake("this keeps the LEAST likely tokens: sort in descending order", _top_p_ascending),
        Mistake("these are the probabilities in sorted order: put each back at its token's position "
                "(scatter with the sort's indices)", _top_p_sorted_order),
    ],
))
