"""Exercises of notebook 00 (tour): the solutions pass and further plausible mistakes fail with a line that
points at them. What every exercise shares (stub "not yet", known mistakes named, the notebook's cells agree
with the registry) is tested once for all in test_exercises_framework.py."""
import math

import numpy as np
import pytest
import torch

from workbench.exercises import get, run_check

IDS = ["00.1", "00.2", "00.3"]


# ----------------------------------------------------------------- the notebook's solutions (copied)
def cross_entropy(logits, targets):
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
    return -log_probs.gather(-1, targets[..., None]).mean()


def entropy_rate(source):
    pi = source.stationary()
    H = [-sum(p * math.log(p) for p, _, _ in source.states[s]) for s in source.names]
    L = [sum(p * len(text) for p, text, _ in source.states[s]) for s in source.names]
    return sum(w * h for w, h in zip(pi, H)) / sum(w * n for w, n in zip(pi, L))


def top_p_filter(probs, p):
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep_sorted = mass_before < p
    keep = keep_sorted.scatter(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True)


SOLUTIONS = {"00.1": cross_entropy, "00.2": entropy_rate, "00.3": top_p_filter}


# ----------------------------------------------------------------- other plausible wrong answers
def cross_entropy_in_bits(logits, targets):
    return cross_entropy(logits, targets) / math.log(2)


def entropy_rate_lengths_unweighted(source):
    pi = source.stationary()
    H = [-sum(p * math.log(p) for p, _, _ in source.states[s]) for s in source.names]
    L = [sum(p * len(text) for p, text, _ in source.states[s]) for s in source.names]
    return sum(w * h for w, h in zip(pi, H)) / np.mean(L)


def top_p_without_sorting(probs, p):
    mass_before = probs.cumsum(dim=-1) - probs   # in vocabulary order, not most likely first
    kept = torch.where(mass_before < p, probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True)


# (exercise, wrong function, the label of a case it must fail, a phrase that case's line must contain)
OTHER_MISTAKES = [
    ("00.1", cross_entropy_in_bits, "uniform logits", "ln(vocabulary)"),
    ("00.2", entropy_rate_lengths_unweighted, "two states", "weight each state by pi"),
    ("00.3", top_p_without_sorting, "unsorted input", "both 0.3s are needed"),
]


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_solution_passes_every_case(exercise_id):
    report = run_check(get(exercise_id), SOLUTIONS[exercise_id])
    assert report.passed, str(report)
    assert 3 <= len(report.results) <= 6
    assert str(report).splitlines()[-1] == f"  all {len(report.results)} cases passed"


@pytest.mark.parametrize("exercise_id, wrong, label, phrase", OTHER_MISTAKES,
                         ids=[m[1].__name__ for m in OTHER_MISTAKES])
def test_another_plausible_mistake_fails_on_the_case_that_names_it(exercise_id, wrong, label, phrase):
    report = run_check(get(exercise_id), wrong)
    assert not report.passed and not report.not_yet
    failing = [line for line in str(report).splitlines() if line.strip().startswith("✘") and label in line]
    assert failing, str(report)
    assert phrase in failing[0]


def test_a_function_that_raises_gets_one_line_per_case_not_a_traceback():
    def broken(probs, p):
        return probs[..., 99]

    report = run_check(get("00.3"), broken)
    assert not report.passed
    assert all("raised IndexError" in r.message for r in report.results)


def test_top_p_reference_is_the_samplers_filter():
    """The reference is filter_logits: check it against hand-computed answers, independent of the solution."""
    reference = get("00.3").reference
    out = reference(torch.tensor([0.5, 0.3, 0.15, 0.05]), 0.7)
    assert torch.allclose(out, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=1e-6)
    out = reference(torch.tensor([0.2, 0.3, 0.2, 0.3]), 0.55)
    assert torch.allclose(out, torch.tensor([0.0, 0.5, 0.0, 0.5]), atol=1e-6)


def test_entropy_rate_reference_on_a_fair_coin():
    case = get("00.2").cases()[0]
    assert get("00.2").reference(*case.args) == pytest.approx(math.log(2))


# ----------------------------------------------------------------- the notebook agrees with the registry
