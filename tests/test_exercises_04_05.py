"""Exercises of notebooks 04 (masked LMs) and 05 (objectives compared): the notebooks' solutions pass, further
plausible wrong answers fail with a line that points at the difference, and the references are the library's own
code. What every exercise shares is tested once for all in test_exercises_framework.py."""
import math

import pytest
import torch

from helpers import assert_solution_passes, assert_wrong_answer_points_at_itself
from workbench.exercises import get
from workbench.objectives import Electra, MaskedLM
from workbench.objectives.base import IGNORE
from workbench.objectives.masking import ACTION_NAMES

IDS = ("04.1", "04.2", "04.3", "05.1", "05.2", "05.3")


# ---------------------------------------------------------------- the notebooks' solutions, copied
def mask_tokens(ids, ratio, select_draws, action_draws, random_ids):
    chosen = (select_draws < ratio) & (ids >= 4)
    inputs = torch.where(chosen & (action_draws < 0.8), torch.full_like(ids, 1), ids)
    inputs = torch.where(chosen & (action_draws >= 0.8) & (action_draws < 0.9), random_ids, inputs)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return inputs, labels


def replaced_labels(original, sampled, masked):
    return masked & (sampled != original)


def classify_from_mask(mask_logits, verbalizer_ids):
    return mask_logits[:, verbalizer_ids].argmax(-1)


def prefix_lm_mask(length, prefix_len):
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return (j <= i) | (j < prefix_len)


def decorrupt_spans(inputs, targets, sentinel_ids):
    sentinels, spans, current = set(sentinel_ids), {}, None
    for token in targets[:-1]:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    original = []
    for token in inputs:
        original.extend(spans[token] if token in sentinels else [token])
    return original


def steps_for_budget(flops_budget, flops_per_token, tokens_per_step):
    return max(1, math.floor(flops_budget / (flops_per_token * tokens_per_step)))


SOLUTIONS = {"04.1": mask_tokens, "04.2": replaced_labels, "04.3": classify_from_mask, "05.1": prefix_lm_mask,
             "05.2": decorrupt_spans, "05.3": steps_for_budget}


# ---------------------------------------------------------------- further plausible wrong answers (not registered)
def mask_tokens_keep_and_random_swapped(ids, ratio, select_draws, action_draws, random_ids):
    """0.8 <= draw < 0.9 keeps the token and draw >= 0.9 takes the random one: same shares, other positions."""
    chosen = (select_draws < ratio) & (ids >= 4)
    inputs = torch.where(chosen & (action_draws < 0.8), torch.full_like(ids, 1), ids)
    inputs = torch.where(chosen & (action_draws >= 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, ids, torch.full_like(ids, -100))


def replaced_labels_or_instead_of_and(original, sampled, masked):
    return masked | (sampled != original)


def classify_softmax_over_classes_then_argmin(mask_logits, verbalizer_ids):
    return (-mask_logits[:, verbalizer_ids]).softmax(-1).argmax(-1)


def prefix_lm_mask_transposed(length, prefix_len):
    return prefix_lm_mask(length, prefix_len).T


def decorrupt_spans_dropping_the_last_span(inputs, targets, sentinel_ids):
    return decorrupt_spans(inputs, targets[:-1], sentinel_ids)


def steps_with_int_truncation_of_a_rounded_product(flops_budget, flops_per_token, tokens_per_step):
    return round(flops_budget / (flops_per_token * tokens_per_step))


WRONG = {
    "04.1": (mask_tokens_keep_and_random_swapped, "case 2, 4 rows of 20 tokens, ratio 0.15: first difference at "
                                                  "index (0, 19) of item 0: expected 13, got 9"),
    "04.2": (replaced_labels_or_instead_of_and, "case 2, 3 rows of 16, the generator always right: first "
                                                "difference at index (0, 0)"),
    "04.3": (classify_softmax_over_classes_then_argmin, "case 1"),
    "05.1": (prefix_lm_mask_transposed, "case 1, 6 tokens, prefix 3: first difference at index (0, 3)"),
    "05.2": (decorrupt_spans_dropping_the_last_span, "case 1, the worked example: 2 spans"),
    "05.3": (steps_with_int_truncation_of_a_rounded_product, "case 1, 1e12 FLOPs, 1.2e6 FLOPs/token, 2048 "
                                                             "tokens/step: expected 406, got 407"),
}


@pytest.mark.parametrize("exercise_id", IDS)
def test_solution_passes_every_case(exercise_id):
    assert_solution_passes(exercise_id, SOLUTIONS[exercise_id])


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_further_wrong_answer_fails_with_the_difference(exercise_id):
    assert_wrong_answer_points_at_itself(exercise_id, *WRONG[exercise_id])


def test_the_masking_exercise_is_the_objectives_rule():
    """MaskedLM draws its masks with the rule of 04.1: its selection share and action shares match it."""
    ids = torch.randint(4, 40, (64, 64), generator=torch.Generator().manual_seed(0))
    corruption = MaskedLM(mask_ratio=0.15).corrupt(torch.cat([ids, ids[:, :1]], 1), 40,
                                                    torch.Generator().manual_seed(1))
    chosen = corruption.targets != IGNORE
    n = int(chosen.sum())
    assert abs(n / ids.numel() - 0.15) < 5 * math.sqrt(0.15 * 0.85 / ids.numel())
    actions = [ACTION_NAMES[int(a)] for a in corruption.actions[chosen]]
    assert abs(actions.count("mask") / n - 0.8) < 5 * math.sqrt(0.16 / n)


def test_the_label_exercise_is_electras_rule():
    from workbench.objectives.electra import replaced_token_labels
    assert get("04.2").reference is replaced_token_labels
    assert Electra().name == "electra"
