"""Which tokens a masked LM hides, and what it puts in their place.

A masked language model reads a corrupted copy of a sequence and predicts
the original token at the chosen positions M only:

    L(theta) = -(1 / |M|) * sum_{i in M} log p_theta(x_i | x~)

where x~ is x with the chosen positions rewritten. Two independent choices
make up the corruption, and this file holds both as pure functions of token
ids and a ``torch.Generator`` (no modules, no state):

1. *Which positions* are chosen (about ``ratio`` of the ordinary tokens):

   * ``choose_tokens``: each position independently, Bernoulli(ratio)
     (BERT, Devlin et al. 2019; Hugging Face DataCollatorForLanguageModeling).
   * ``choose_whole_words``: each *word* independently, Bernoulli(ratio), all
     of its tokens together (BERT's whole-word masking), so the model cannot
     read half a word to guess the other half.
   * ``choose_spans``: contiguous spans with Geometric lengths until the
     budget is covered (SpanBERT, Joshi et al. 2020).
   * ``choose_ngrams``: contiguous n-grams, n in 1..max_n with
     P(n) proportional to 1/n (an ERNIE-Gram-style n-gram masking, Xiao et
     al. 2021, without ERNIE-Gram's n-gram vocabulary).

2. *What replaces them* (``apply_80_10_10``): of the chosen positions 80%
   become [MASK], 10% a uniformly random ordinary token and 10% stay as
   they are (Devlin et al. 2019, section 3.1). All chosen positions are
   scored, so the model cannot learn "only [MASK] needs predicting", and
   [MASK], which never occurs at fine-tuning time, is not the only signal.

Special tokens ([PAD] [MASK] [BOS] [EOS], ids < NUM_SPECIAL) are never
chosen, and random replacements are always ordinary tokens.

All randomness is drawn on the CPU from the ``generator`` argument and then
moved to the ids' device, so a CPU run and a CUDA run draw the same masks.
"""
from __future__ import annotations

from typing import Optional

import torch

from .base import NUM_SPECIAL, random_tokens, uniform

# What happens to a chosen position (BERT's 80/10/10). Fixed here, not options: the split is part of BERT.
MASK_FRACTION = 0.8     # replaced by [MASK]
RANDOM_FRACTION = 0.1   # replaced by a uniformly random ordinary token
KEEP_FRACTION = 0.1     # left unchanged (but still scored)

# The action each position got, as stored in the int8 tensor ``apply_80_10_10`` returns.
UNTOUCHED, MASKED, RANDOM, KEPT = 0, 1, 2, 3
ACTION_NAMES = ("untouched", "mask", "random", "kept")

# SpanBERT's span lengths: Geometric(p=0.2) restricted to 1..10.
SPAN_P = 0.2
SPAN_MAX_LEN = 10
NGRAM_MAX_N = 3


# ---------------------------------------------------------------------------------------------- BERT


def choose_tokens(ids: torch.Tensor, ratio: float, generator, special: torch.Tensor) -> torch.Tensor:
    """Each non-special position chosen independently with probability ``ratio`` (BERT).

        chosen_i ~ Bernoulli(ratio) for every i with special_i False;  chosen_i = False where special_i

    This is Devlin et al. (2019)'s token masking as Hugging Face's DataCollatorForLanguageModeling
    does it: the number chosen per row varies (Binomial(n_ordinary, ratio)), it is not fixed.
    Returns a bool (B, T) tensor.
    """
    draws = uniform(ids.shape, generator, ids.device)
    return (draws < ratio) & ~special


# ---------------------------------------------------------------------------------------------- words


def word_boundaries(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Two bool tensors over the vocabulary: does token v's text start / end with whitespace?

    The text of ordinary id v is ``tokenizer.decode([v])``. Special ids get False in both (they
    break words anyway, see ``word_starts``). A byte-level BPE token such as " cat" starts with a
    space; a char tokenizer's " " both starts and ends with one.
    """
    size = tokenizer.vocab_size
    starts_with_space = torch.zeros(size, dtype=torch.bool)
    ends_with_space = torch.zeros(size, dtype=torch.bool)
    for token_id in range(NUM_SPECIAL, size):
        text = tokenizer.decode([token_id])
        starts_with_space[token_id] = text[:1].isspace()
        ends_with_space[token_id] = text[-1:].isspace()
    return starts_with_space, ends_with_space


def word_starts(ids: torch.Tensor, starts_with_space: torch.Tensor, ends_with_space: torch.Tensor,
                special: torch.Tensor) -> torch.Tensor:
    """True where a new word begins: the (B, T) input of ``choose_whole_words``.

    A word starts at position 0, at a token whose text starts with whitespace, right after a token
    whose text ends with whitespace, and at and right after every special token (so a special token
    is a word of its own, which is never chosen). ``starts_with_space`` and ``ends_with_space`` are the
    tables of ``word_boundaries``.
    """
    if ids.numel() and int(ids.max()) >= len(starts_with_space):
        raise ValueError(f"token id {int(ids.max())} is outside the word-boundary table of "
                         f"{len(starts_with_space)} ids; build the table from the tokenizer that made these ids")
    table_start, table_end = starts_with_space.to(ids.device), ends_with_space.to(ids.device)
    start = table_start[ids] | special
    previous_breaks = table_end[ids] | special  # a word also starts right after these positions
    start[:, 1:] |= previous_breaks[:, :-1]
    start[:, 0] = True
    return start


def word_indices(word_start: torch.Tensor) -> torch.Tensor:
    """The index of each position's word within its row: 0, 0, 1, 1, 1, 2, ... (int64, (B, T))."""
    return torch.cumsum(word_start.long(), dim=1) - 1


def choose_whole_words(ids: torch.Tensor, ratio: float, generator, word_start: torch.Tensor,
                       special: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking: each word chosen with probability ``ratio``, all of its tokens together.

        chosen_i = Bernoulli_w(ratio) for w = the word of position i, False at special positions

    Words are the runs that ``word_start`` (see ``word_starts``) opens. This is BERT's whole-word
    masking (google-research/bert, 2019 update; Hugging Face DataCollatorForWholeWordMask), drawn
    per word like ``choose_tokens`` draws per token. Returns (chosen, groups): bool (B, T), and the
    int64 (B, T) index of each chosen position's word within its row (-1 where not chosen), which
    ``apply_80_10_10`` uses to treat a word as one unit.
    """
    if special is None:
        special = ids < NUM_SPECIAL
    word_index = word_indices(word_start)
    word_draws = uniform(ids.shape, generator, ids.device)    # one draw per possible word (at most T per row)
    chosen = (word_draws.gather(1, word_index) < ratio) & ~special
    groups = torch.where(chosen, word_index, torch.full_like(word_index, -1))
    return chosen, groups


# ---------------------------------------------------------------------------------------------- spans


def span_length_pmf(p: float = SPAN_P, max_len: int = SPAN_MAX_LEN) -> torch.Tensor:
    """P(length = k) for k = 1..max_len: Geometric(p) restricted to 1..max_len and renormalized.

        P(k) = p (1 - p)^(k - 1) / (1 - (1 - p)^max_len)

    This is SpanBERT's "clipped" geometric (its code renormalizes the truncated pmf); for p = 0.2 and
    max_len = 10 its mean is 3.8, the paper's figure. (Piling the tail mass onto max_len instead
    would give a mean of 4.46.) Entry k - 1 holds P(k).
    """
    lengths = torch.arange(1, max_len + 1, dtype=torch.float64)
    weights = p * (1 - p) ** (lengths - 1)
    return weights / weights.sum()


def ngram_length_pmf(max_n: int = NGRAM_MAX_N) -> torch.Tensor:
    """P(n) proportional to 1/n for n = 1..max_n (entry n - 1 holds P(n)): short n-grams are likelier."""
    weights = 1.0 / torch.arange(1, max_n + 1, dtype=torch.float64)
    return weights / weights.sum()


def choose_spans(ids: torch.Tensor, ratio: float, generator, special: torch.Tensor, p: float = SPAN_P,
                 max_len: int = SPAN_MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """SpanBERT span masking (Joshi et al. 2020): contiguous spans until ``ratio`` of the row is covered.

    Per row, with n = its number of non-special tokens, repeat until covered >= ratio * n:

        length ~ Geometric(p) restricted to 1..max_len  (``span_length_pmf``; mean 3.8 for 0.2, 10)
        start  ~ uniform over the places where the whole span fits on not-yet-chosen ordinary tokens

    so spans never overlap, never cover a special token and never run past the row's end, and the
    coverage exceeds the budget by less than the last span. If no place fits the drawn length (a
    nearly full row), the span shrinks to the longest free run. SpanBERT measures lengths in whole
    words; here they are in tokens. Returns (chosen, groups): bool (B, T), and the int64 (B, T)
    index of each chosen position's span (0, 1, 2, ... in the order drawn; -1 where not chosen),
    which ``apply_80_10_10`` uses to decide 80/10/10 once per span, as SpanBERT does.
    """
    return _cover_with_runs(ids, ratio, generator, special, span_length_pmf(p, max_len))


def choose_ngrams(ids: torch.Tensor, ratio: float, generator, special: torch.Tensor,
                  max_n: int = NGRAM_MAX_N) -> tuple[torch.Tensor, torch.Tensor]:
    """N-gram masking in the style of ERNIE-Gram (Xiao et al. 2021): contiguous n-grams until the budget.

        n ~ P(n) = (1/n) / sum_{k=1}^{max_n} 1/k   for n in 1..max_n  (``ngram_length_pmf``)

    The 1/n weighting is our choice, which favours short n-grams; ERNIE-Gram also predicts whole
    n-grams from an n-gram vocabulary, which is not reproduced: each token of an n-gram is predicted
    on its own. Placement and the budget work as in ``choose_spans`` (non-overlapping, uniform start,
    stop once >= ratio of the ordinary tokens are covered). Returns (chosen, groups) like it.
    """
    return _cover_with_runs(ids, ratio, generator, special, ngram_length_pmf(max_n))


def _cover_with_runs(ids: torch.Tensor, ratio: float, generator, special: torch.Tensor,
                     length_pmf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Place non-overlapping runs with lengths drawn from ``length_pmf`` until ratio of each row is covered."""
    rows, length = ids.shape
    chosen = torch.zeros(rows, length, dtype=torch.bool)
    groups = torch.full((rows, length), -1, dtype=torch.long)
    positions = torch.arange(length)
    ordinary = ~special.cpu()
    for row in range(rows):
        budget = ratio * int(ordinary[row].sum())
        covered, group = 0, 0
        while covered < budget:  # budget < n_ordinary, so a free ordinary position always remains
            free = ordinary[row] & ~chosen[row]
            run = _free_run_lengths(free, positions)
            drawn = int(torch.multinomial(length_pmf, 1, generator=generator)) + 1
            span = min(drawn, int(run.max()))
            starts = torch.nonzero(run >= span).flatten()
            start = int(starts[torch.randint(len(starts), (1,), generator=generator)])
            chosen[row, start:start + span] = True
            groups[row, start:start + span] = group
            covered += span
            group += 1
    return chosen.to(ids.device), groups.to(ids.device)


def _free_run_lengths(free: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """run[s] = how many consecutive free positions start at s (0 where s is not free)."""
    blocked_at = torch.where(free, torch.full_like(positions, len(positions)), positions)
    next_blocked = torch.flip(torch.cummin(torch.flip(blocked_at, [0]), dim=0).values, [0])
    return next_blocked - positions


# ---------------------------------------------------------------------------------------------- 80/10/10


def apply_80_10_10(ids: torch.Tensor, chosen: torch.Tensor, generator, vocab_size: int, mask_id: int,
                   groups: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's replacement rule: of the chosen positions 80% -> [MASK], 10% -> random, 10% unchanged.

        u ~ Uniform(0, 1);  u < 0.8: [MASK];  0.8 <= u < 0.9: a uniform ordinary token;  else: keep

    The random token is drawn from the ordinary ids [NUM_SPECIAL, vocab_size) (Hugging Face's
    collator draws from the whole vocabulary, specials included; we do not). It may equal the
    original token, as in BERT. With ``groups`` (int (B, T), a span's or word's index within its row,
    -1 where not chosen) one u is drawn per group, so every position of a span shares its fate
    (SpanBERT); each position still gets its own random token. Returns (corrupted ids, actions):
    actions is int8 (B, T) with UNTOUCHED (0), MASKED (1), RANDOM (2) or KEPT (3) per position.
    """
    draws = uniform(ids.shape, generator, ids.device)
    if groups is not None and groups.numel() and int(groups.max()) >= ids.shape[1]:
        raise ValueError(f"groups holds index {int(groups.max())}, but a row of {ids.shape[1]} positions has at "
                         f"most {ids.shape[1]} groups; number the groups of each row 0, 1, 2, ...")
    if groups is not None:  # position i reads the draw of its group (at most T groups per row)
        draws = draws.gather(1, groups.clamp(min=0).to(ids.device))
    replacements = random_tokens(ids.shape, vocab_size, generator, ids.device)
    return replace_chosen(ids, chosen, draws, replacements, mask_id)


def replace_chosen(ids: torch.Tensor, chosen: torch.Tensor, draws: torch.Tensor, replacements: torch.Tensor,
                   mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 80/10/10 rule given its random numbers: ``draws`` uniform in [0, 1) and ``replacements`` (ordinary
    ids), both (B, T). Chosen positions with draw < 0.8 read [MASK], 0.8 <= draw < 0.9 their replacement,
    and the rest keep their token. Returns (corrupted ids, actions) as ``apply_80_10_10``."""
    actions = torch.full(ids.shape, UNTOUCHED, dtype=torch.int8, device=ids.device)
    actions[chosen & (draws < MASK_FRACTION)] = MASKED
    actions[chosen & (draws >= MASK_FRACTION) & (draws < MASK_FRACTION + RANDOM_FRACTION)] = RANDOM
    actions[chosen & (draws >= MASK_FRACTION + RANDOM_FRACTION)] = KEPT
    corrupted = torch.where(actions == MASKED, torch.full_like(ids, mask_id), ids)
    corrupted = torch.where(actions == RANDOM, replacements, corrupted)
    return corrupted, actions


__all__ = ["MASK_FRACTION", "RANDOM_FRACTION", "KEEP_FRACTION", "UNTOUCHED", "MASKED", "RANDOM", "KEPT",
           "ACTION_NAMES", "SPAN_P", "SPAN_MAX_LEN", "NGRAM_MAX_N", "choose_tokens", "word_boundaries",
           "word_starts", "word_indices", "choose_whole_words", "span_length_pmf", "ngram_length_pmf", "choose_spans",
           "choose_ngrams", "apply_80_10_10", "replace_chosen"]
