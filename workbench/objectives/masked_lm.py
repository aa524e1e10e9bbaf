"""Masked language modeling: hide some tokens, predict them from both sides.

    L(theta) = -(1 / |M|) * sum_{i in M} log p_theta(x_i | x~)

BERT (Devlin et al. 2019) chooses a set M of about 15% of the ordinary
tokens, rewrites them (80% [MASK], 10% a random token, 10% unchanged) into
x~, and lets every position attend to every other (a bidirectional encoder),
scoring only the positions in M. Which positions form M is the
``strategy`` (see masking.py):

    "token"       each token independently (BERT)
    "whole_word"  each word independently, all its tokens together (BERT WWM; needs the tokenizer)
    "span"        Geometric-length spans until the budget is covered (SpanBERT, Joshi et al. 2020)
    "ngram"       n-grams with P(n) proportional to 1/n, n <= 3 (ERNIE-Gram style, Xiao et al. 2021)

With "whole_word", "span" and "ngram" the 80/10/10 decision is made once per
word or span, so a unit is never half hidden and half visible (SpanBERT
decides per span; Google's whole-word BERT decided per token).

Masks are drawn afresh on every call (dynamic masking, RoBERTa, Liu et al.
2019): the same window gets different masks in different epochs. The model
reads the first block_size tokens of each window, without shifting.

Every row that has an ordinary token scores at least one: if a row drew no
position (likely for short rows, (1 - ratio)^n), one of its ordinary
positions is chosen uniformly (with "whole_word": its whole word), so no
batch has an empty loss. For "token" this raises the expected number chosen
per row from n*ratio to n*ratio + (1 - ratio)^n; span and n-gram masking
always cover at least one token of such a row anyway.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..validation import check_choice, check_range
from .base import IGNORE, MASK_ID, OBJECTIVES, Corruption, Objective, special_mask, uniform
from .masking import (ACTION_NAMES, KEEP_FRACTION, MASK_FRACTION, RANDOM_FRACTION, apply_80_10_10, choose_ngrams,
                      choose_spans, choose_tokens, choose_whole_words, word_boundaries, word_indices,
                      word_starts)

STRATEGIES = ("token", "whole_word", "span", "ngram")
REPLACE_FRACTIONS = (MASK_FRACTION, RANDOM_FRACTION, KEEP_FRACTION)  # BERT's 80/10/10, fixed


@dataclass
class MaskedCorruption(Corruption):
    """A Corruption that also says what happened at each position (for pictures and widgets).

    ``actions`` is int8 (B, T): 0 untouched, 1 [MASK], 2 random token, 3 kept but scored
    (``masking.ACTION_NAMES`` names them).
    """

    actions: Optional[torch.Tensor] = None


@OBJECTIVES.register("mlm")
class MaskedLM(Objective):
    name = "mlm"
    attention_mode = "bidirectional"

    def __init__(self, mask_ratio: float = 0.15, strategy: str = "token", tokenizer=None):
        check_range("MaskedLM", "mask_ratio", mask_ratio, 0.0, 1.0, low_open=True, high_open=True)
        check_choice("MaskedLM", "strategy", strategy, STRATEGIES)
        if strategy == "whole_word" and tokenizer is None:
            raise ValueError("MaskedLM.strategy='whole_word' needs the tokenizer, to tell where words begin: "
                             "pass it (MaskedLM(strategy='whole_word', tokenizer=tok) or "
                             "make_objective('mlm', tok, strategy='whole_word')), or use strategy 'token', "
                             "'span' or 'ngram', which need none")
        super().__init__(mask_ratio=mask_ratio, strategy=strategy)
        self.mask_ratio = float(mask_ratio)
        self.strategy = strategy
        self.tokenizer = tokenizer
        # plain attributes, not buffers: they are rebuilt from the tokenizer, never saved in a checkpoint
        self.starts_with_space, self.ends_with_space = (word_boundaries(tokenizer) if strategy == "whole_word"
                                                        else (None, None))

    def choose(self, ids: torch.Tensor, special: torch.Tensor, generator=None):
        """The positions to score, (B, T) bool, and their groups ((B, T) int, -1 where unchosen) or None."""
        words = None
        if self.strategy == "token":
            chosen, groups = choose_tokens(ids, self.mask_ratio, generator, special), None
        elif self.strategy == "whole_word":
            starts = word_starts(ids, self.starts_with_space, self.ends_with_space, special)
            chosen, groups = choose_whole_words(ids, self.mask_ratio, generator, starts, special)
            words = word_indices(starts)
        elif self.strategy == "span":
            chosen, groups = choose_spans(ids, self.mask_ratio, generator, special)
        else:
            chosen, groups = choose_ngrams(ids, self.mask_ratio, generator, special)
        return _at_least_one_per_row(chosen, groups, special, generator, words)

    def corrupt(self, batch: torch.Tensor, vocab_size: int, generator=None) -> MaskedCorruption:
        return self._corrupt_clean(batch[:, :-1], vocab_size, generator)

    def _corrupt_clean(self, clean: torch.Tensor, vocab_size: int, generator=None) -> MaskedCorruption:
        special = special_mask(clean, vocab_size)
        chosen, groups = self.choose(clean, special, generator)
        inputs, actions = apply_80_10_10(clean, chosen, generator, vocab_size, MASK_ID, groups)
        targets = torch.where(chosen, clean, torch.full_like(clean, IGNORE))
        return MaskedCorruption(inputs=inputs, targets=targets, attention_mode="bidirectional", original=clean,
                                actions=actions)

    def mask_for_display(self, ids_1d, tokenizer, generator=None) -> list[tuple[str, str]]:
        """One draw of this objective's corruption of one sequence, as (token text, action name) pairs.

        The text is what the model reads at that position ("[MASK]", the random token, or the
        original), in the tokenizer's visible form (a space shows as a visible mark); the action is
        one of "untouched", "mask", "random", "kept". The whole sequence is used (no shift).
        """
        ids = torch.as_tensor(ids_1d, dtype=torch.long)
        if ids.dim() != 1:
            raise ValueError(f"mask_for_display expects one sequence of ids (1-D), got shape {tuple(ids.shape)}; "
                             "pass one row, e.g. batch[0]")
        c = self._corrupt_clean(ids[None, :], tokenizer.vocab_size, generator)
        texts = tokenizer.token_strings(c.inputs[0])
        return [(text, ACTION_NAMES[int(action)]) for text, action in zip(texts, c.actions[0])]


def _at_least_one_per_row(chosen: torch.Tensor, groups: Optional[torch.Tensor], special: torch.Tensor,
                          generator, words: Optional[torch.Tensor] = None):
    """Choose one ordinary position, uniformly, in each row that chose none but has one.

    With ``words`` (each position's word index, for whole-word masking) the position's whole word is
    chosen, so the guarantee keeps words whole (a word is then picked with probability proportional
    to its length). The draw is made for every row, so the generator advances the same whatever was
    chosen: each ordinary position gets a uniform score, specials get -1, and a row's argmax is its
    fallback. (Span and n-gram masking always cover at least one token of such a row already.)
    """
    scores = uniform(chosen.shape, generator, chosen.device).masked_fill(special, -1.0)
    fallback = scores.argmax(dim=1, keepdim=True)
    needy = ~chosen.any(dim=1, keepdim=True) & (~special).any(dim=1, keepdim=True)
    if not bool(needy.any()):
        return chosen, groups
    positions = torch.arange(chosen.shape[1], device=chosen.device)[None, :]
    if words is None:
        extra = needy & (positions == fallback)
        unit = torch.zeros_like(positions)  # the row had no group yet, so this one is group 0
    else:
        extra = needy & (words == words.gather(1, fallback)) & ~special
        unit = words
    chosen = chosen | extra
    if groups is not None:
        groups = torch.where(extra, unit.expand_as(groups), groups)
    return chosen, groups


__all__ = ["MaskedLM", "MaskedCorruption", "STRATEGIES", "REPLACE_FRACTIONS"]
