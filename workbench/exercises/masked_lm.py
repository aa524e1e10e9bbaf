"""Exercises of notebook 04 (masked language models): BERT's 80/10/10 masking, ELECTRA's labels, and
classification by filling a [MASK].

Each reference is the library's own computation: ``masking.replace_chosen`` with the selection rule of
``masking.choose_tokens`` (given the same uniform draws), ``electra.replaced_token_labels`` and
``probing.classify.verbalizer_predictions``.
"""
from __future__ import annotations

import torch

from ..objectives.base import IGNORE, MASK_ID, special_mask
from ..objectives.electra import replaced_token_labels
from ..objectives.masking import replace_chosen
from ..probing.classify import verbalizer_predictions
from . import register
from .checking import Case, Exercise, Mistake


# --------------------------------------------------------------------------- 04.1 BERT's 80/10/10
def _mask_tokens_reference(ids, ratio, select_draws, action_draws, random_ids):
    chosen = (select_draws < ratio) & ~special_mask(ids)
    inputs, _ = replace_chosen(ids, chosen, action_draws, random_ids, MASK_ID)
    return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE))


def _specials_can_be_chosen(ids, ratio, select_draws, action_draws, random_ids):
    chosen = select_draws < ratio
    inputs, _ = replace_chosen(ids, chosen, action_draws, random_ids, MASK_ID)
    return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE))


def _every_chosen_token_masked(ids, ratio, select_draws, action_draws, random_ids):
    chosen = (select_draws < ratio) & ~special_mask(ids)
    return (torch.where(chosen, torch.full_like(ids, MASK_ID), ids),
            torch.where(chosen, ids, torch.full_like(ids, IGNORE)))


def _only_masked_tokens_scored(ids, ratio, select_draws, action_draws, random_ids):
    inputs, labels = _mask_tokens_reference(ids, ratio, select_draws, action_draws, random_ids)
    return inputs, torch.where(inputs == MASK_ID, labels, torch.full_like(ids, IGNORE))


def _labels_everywhere(ids, ratio, select_draws, action_draws, random_ids):
    inputs, _ = _mask_tokens_reference(ids, ratio, select_draws, action_draws, random_ids)
    return inputs, ids.clone()


def _labels_from_the_corrupted_input(ids, ratio, select_draws, action_draws, random_ids):
    inputs, labels = _mask_tokens_reference(ids, ratio, select_draws, action_draws, random_ids)
    return inputs, torch.where(labels != IGNORE, inputs, labels)


def _thresholds_swapped(ids, ratio, select_draws, action_draws, random_ids):
    """random below 0.1, [MASK] from 0.1 to 0.9: the same shares, other positions."""
    return _mask_tokens_reference(ids, ratio, select_draws, (action_draws + 0.1) % 1.0, random_ids)


def _mask_tokens_cases():
    g = torch.Generator().manual_seed(41)

    def case(label, batch, length, ratio, vocab=30, specials_at=()):
        ids = torch.randint(4, vocab, (batch, length), generator=g)
        for row, col, special in specials_at:
            ids[row, col] = special
        return Case(label, (ids, ratio, torch.rand(batch, length, generator=g), torch.rand(batch, length, generator=g),
                            torch.randint(4, vocab, (batch, length), generator=g)))

    return [
        case("one row of 12 tokens, ratio 0.5", 1, 12, 0.5),
        case("4 rows of 20 tokens, ratio 0.15", 4, 20, 0.15),
        case("[BOS] and [EOS] and [PAD] in the rows, ratio 0.6 (specials are never chosen)", 2, 16, 0.6,
             specials_at=[(0, 0, 2), (0, 15, 3), (1, 14, 0), (1, 15, 0)]),
        case("ratio 0.95: nearly everything chosen", 3, 10, 0.95),
        case("ratio 0.01: nearly nothing chosen", 2, 10, 0.01),
    ]


register(Exercise(
    id="04.1", title="BERT's 80/10/10 masking", function_name="mask_tokens", difficulty="medium", minutes=15,
    reference=_mask_tokens_reference, cases=_mask_tokens_cases,
    mistakes=[
        Mistake("special tokens were chosen: a position is a candidate only if its id is >= 4 (not [PAD], [MASK], "
                "[BOS] or [EOS])", _specials_can_be_chosen),
        Mistake("every chosen token became [MASK]: only those with action draw < 0.8 do; 0.8 <= draw < 0.9 take "
                "the random token and the rest keep their own", _every_chosen_token_masked),
        Mistake("only the [MASK] positions carry a label: every chosen position is scored, the random and the "
                "unchanged ones too (otherwise the model learns that only [MASK] needs predicting)",
                _only_masked_tokens_scored),
        Mistake("every position carries a label: unchosen positions must hold -100, which cross_entropy ignores",
                _labels_everywhere),
        Mistake("the labels are the corrupted tokens: a label is the ORIGINAL token at a chosen position",
                _labels_from_the_corrupted_input),
        Mistake("the thresholds are in another order: [MASK] for draw < 0.8, the random token for "
                "0.8 <= draw < 0.9, unchanged for draw >= 0.9", _thresholds_swapped),
    ],
))


# --------------------------------------------------------------------------- 04.2 ELECTRA's labels
def _labels_are_the_mask(original, sampled, masked):
    return masked.clone()


def _labels_where_sampled_differs_anywhere(original, sampled, masked):
    return sampled != original


def _labels_inverted(original, sampled, masked):
    return masked & (sampled == original)


def _electra_cases():
    g = torch.Generator().manual_seed(42)
    cases = []
    for label, batch, length, p_correct in (("one row of 10, half the guesses right", 1, 10, 0.5),
                                            ("3 rows of 16, the generator always right", 3, 16, 1.0),
                                            ("2 rows of 12, the generator never right", 2, 12, 0.0),
                                            ("4 rows of 24, a third of the guesses right", 4, 24, 0.33)):
        original = torch.randint(4, 30, (batch, length), generator=g)
        masked = torch.rand(batch, length, generator=g) < 0.3
        right = torch.rand(batch, length, generator=g) < p_correct
        other = 4 + (original - 4 + torch.randint(1, 26, (batch, length), generator=g)) % 26
        sampled = torch.where(masked & ~right, other, original)
        # outside the masked positions the discriminator reads the original tokens
        cases.append(Case(label, (original, sampled, masked)))
    # a sample that differs outside the masked positions cannot happen in ELECTRA, but a wrong rule shows here
    original = torch.randint(4, 30, (2, 8), generator=g)
    masked = torch.zeros(2, 8, dtype=torch.bool)
    masked[:, ::3] = True
    sampled = torch.where(masked, original, 4 + (original - 3) % 26)
    cases.append(Case("tokens outside the masked positions differ: still original (label 0)",
                      (original, sampled, masked)))
    return cases


register(Exercise(
    id="04.2", title="ELECTRA's replaced-token labels", function_name="replaced_labels", difficulty="easy",
    minutes=5, reference=replaced_token_labels, cases=_electra_cases,
    mistakes=[
        Mistake("every masked position is labelled 'replaced': where the generator sampled the original token the "
                "discriminator sees the original, so the label is 0 (ELECTRA counts a correct guess as real)",
                _labels_are_the_mask),
        Mistake("positions outside the mask are labelled: only a masked position can be replaced",
                _labels_where_sampled_differs_anywhere),
        Mistake("the labels are inverted: 1 where the sample DIFFERS from the original", _labels_inverted),
    ],
))


# --------------------------------------------------------------------------- 04.3 classify with the [MASK] head
def _argmax_over_the_whole_vocabulary(mask_logits, verbalizer_ids):
    return mask_logits.argmax(-1)


def _argmin(mask_logits, verbalizer_ids):
    return mask_logits[:, verbalizer_ids].argmin(-1)


def _first_class_always(mask_logits, verbalizer_ids):
    return torch.zeros(mask_logits.shape[0], dtype=torch.long)


def _verbalizer_cases():
    g = torch.Generator().manual_seed(43)
    cases = [Case("3 examples, vocabulary 10, classes [5, 7]", (torch.randn(3, 10, generator=g), [5, 7]))]
    logits = torch.randn(6, 20, generator=g)
    logits[:, 2] = 10.0  # a token that is not a class word is the most likely token everywhere
    cases.append(Case("6 examples whose likeliest token (id 2) is no class word; classes [9, 4]", (logits, [9, 4])))
    cases.append(Case("5 examples, three classes [11, 3, 8]", (torch.randn(5, 15, generator=g), [11, 3, 8])))
    cases.append(Case("8 examples, vocabulary 40, classes [30, 6]", (3 * torch.randn(8, 40, generator=g), [30, 6])))
    return cases


register(Exercise(
    id="04.3", title="classify by filling a [MASK]", function_name="classify_from_mask", difficulty="easy",
    minutes=10, reference=verbalizer_predictions, cases=_verbalizer_cases,
    mistakes=[
        Mistake("this is the argmax over the whole vocabulary (a token id): compare only the class words' logits "
                "and return the index of the class (0, 1, ...)", _argmax_over_the_whole_vocabulary),
        Mistake("this picks the least likely class word: take the argmax", _argmin),
        Mistake("this always answers class 0", _first_class_always),
    ],
))
