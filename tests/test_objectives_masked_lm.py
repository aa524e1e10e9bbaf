"""Masked LM: which positions are chosen, what replaces them, and what is scored.

Statistical checks allow 5 standard deviations of the binomial (or of the
sample mean) they test, so a correct implementation fails about once in
3.5 million runs, while a wrong rate, split or length distribution is off
by many sigma at these sample sizes. Every draw is seeded, so the tests are
deterministic anyway.
"""
import json
import math
import re

import pytest
import torch

from helpers import markov_data, single_thread, tiny_model, train_config  # noqa: F401 (autouse fixture)
from workbench.data import CharTokenizer
from workbench.objectives.base import (IGNORE, MASK_ID, NUM_SPECIAL, OBJECTIVES, make_objective,
                                       objective_from_dict, special_mask)
from workbench.objectives.masked_lm import MaskedCorruption, MaskedLM
from workbench.objectives.masking import (ACTION_NAMES, KEPT, MASKED, RANDOM, UNTOUCHED, apply_80_10_10,
                                          choose_ngrams, choose_spans, choose_tokens, choose_whole_words,
                                          word_boundaries, word_starts)
from workbench.train.trainer import Trainer

VOCAB = 40  # ids 0..3 special, so a uniform draw over [0, 40) is special 10% of the time
TEXT = "the cat sat on a mat and the dog ran to the log by the big red barn"


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ids_with_specials(rows: int, length: int, seed: int) -> torch.Tensor:
    """Token ids uniform over the whole vocabulary: about 10% of positions are special."""
    return torch.randint(0, VOCAB, (rows, length), generator=seeded(seed))


def within_five_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def char_batch(tokenizer: CharTokenizer, rows: int, length: int) -> torch.Tensor:
    """``rows`` copies of the first ``length`` tokens of TEXT."""
    ids = torch.tensor(tokenizer.encode(TEXT)[:length])
    return ids.repeat(rows, 1)


def group_sizes(groups: torch.Tensor) -> list[list[int]]:
    """Per row, the size of groups 0, 1, 2, ... (the spans in the order they were drawn)."""
    sizes = []
    for row in groups:
        count = int(row.max()) + 1
        sizes.append(torch.bincount(row[row >= 0], minlength=count).tolist())
    return sizes


def assert_groups_contiguous(groups: torch.Tensor) -> None:
    for row in groups:
        for group in range(int(row.max()) + 1):
            where = torch.nonzero(row == group).flatten()
            assert len(where) > 0 and int(where[-1] - where[0]) + 1 == len(where), "a span must be contiguous"


# ---------------------------------------------------------------------------------------------- BERT


def test_choose_tokens_selects_ratio_of_ordinary_positions_and_never_a_special():
    ids = ids_with_specials(2000, 32, seed=0)
    special = special_mask(ids)
    chosen = choose_tokens(ids, 0.15, seeded(1), special)
    assert not bool((chosen & special).any())
    n_ordinary = int((~special).sum())
    assert within_five_sigma(int(chosen.sum()), n_ordinary, 0.15)


def test_80_10_10_split_replaces_with_mask_random_ordinary_or_keeps():
    ids = ids_with_specials(2000, 32, seed=2)
    special = special_mask(ids)
    chosen = choose_tokens(ids, 0.5, seeded(3), special)
    corrupted, actions = apply_80_10_10(ids, chosen, seeded(4), VOCAB, MASK_ID)
    n = int(chosen.sum())
    assert actions.dtype == torch.int8
    assert torch.equal(actions != UNTOUCHED, chosen)
    for action, p in ((MASKED, 0.8), (RANDOM, 0.1), (KEPT, 0.1)):
        assert within_five_sigma(int((actions == action).sum()), n, p), ACTION_NAMES[action]
    assert bool((corrupted[actions == MASKED] == MASK_ID).all())
    randoms = corrupted[actions == RANDOM]
    # ~3000 draws: had they been uniform over all 40 ids, (36/40)^3000 is the chance of missing every special
    assert bool((randoms >= NUM_SPECIAL).all()) and bool((randoms < VOCAB).all())
    unchanged = (actions == UNTOUCHED) | (actions == KEPT)
    assert torch.equal(corrupted[unchanged], ids[unchanged])


def test_masked_lm_scores_exactly_the_chosen_positions_with_their_original_tokens():
    batch = ids_with_specials(64, 33, seed=5)
    c = MaskedLM().corrupt(batch, VOCAB, seeded(6))
    clean = batch[:, :-1]
    assert isinstance(c, MaskedCorruption) and c.attention_mode == "bidirectional"
    assert torch.equal(c.original, clean)
    assert torch.equal(c.targets, torch.where(c.actions != UNTOUCHED, clean, torch.full_like(clean, IGNORE)))
    assert not bool((c.scored & special_mask(clean)).any())
    assert torch.equal(c.inputs[c.actions == UNTOUCHED], clean[c.actions == UNTOUCHED])


def test_masked_lm_rate_is_bernoulli_plus_the_guaranteed_token():
    """Per row E[#chosen] = n r + (1 - r)^n: Binomial(n, r), plus one when it drew none.

    Rows of 8 positions make the guarantee large ((0.85)^7 = 0.32 per row), so the test sees it.
    """
    ratio = 0.15
    batch = ids_with_specials(3000, 9, seed=7)
    c = MaskedLM(mask_ratio=ratio).corrupt(batch, VOCAB, seeded(8))
    n = (~special_mask(batch[:, :-1])).sum(dim=1).double()
    none_drawn = (1 - ratio) ** n
    expected = float((n * ratio + none_drawn).sum())
    # Var(B + 1{B=0}) <= Var(B) + Var(1{B=0}) since their covariance is -E[B] P(B=0) <= 0
    sigma = math.sqrt(float((n * ratio * (1 - ratio) + none_drawn * (1 - none_drawn)).sum()))
    assert abs(int(c.scored.sum()) - expected) <= 5 * sigma
    has_ordinary = n > 0
    assert bool((c.scored.sum(dim=1)[has_ordinary] >= 1).all())


def test_a_lone_ordinary_token_is_always_scored_and_a_row_of_specials_never():
    batch = torch.tensor([[2, 0, 0, 17, 0, 3, 0, 0, 0],
                          [2, 0, 0, 0, 0, 3, 0, 0, 0]])
    objective = MaskedLM(mask_ratio=0.01)
    for seed in range(20):
        c = objective.corrupt(batch, VOCAB, seeded(seed))
        assert c.scored[0].tolist() == [False, False, False, True] + [False] * 4
        assert not bool(c.scored[1].any())
    model = tiny_model(vocab_size=VOCAB)
    assert objective.loss(model, batch[1:], seeded(0)).n_tokens == 0


# ---------------------------------------------------------------------------------------------- whole words


class PieceTokenizer:
    """A stand-in for a BPE tokenizer: ordinary id 4 + i decodes to PIECES[i]."""

    PIECES = ["the", " cat", "s", " ", "dog", "\n"]
    vocab_size = NUM_SPECIAL + len(PIECES)

    def decode(self, ids):
        return "".join(self.PIECES[i - NUM_SPECIAL] for i in ids)


def test_words_start_at_whitespace_and_around_specials():
    starts_with_space, ends_with_space = word_boundaries(PieceTokenizer())
    assert torch.nonzero(starts_with_space).flatten().tolist() == [5, 7, 9]  # " cat", " ", "\n"
    assert torch.nonzero(ends_with_space).flatten().tolist() == [7, 9]       # " ", "\n"
    #                  the " cat" s  " "  dog [BOS] dog  s  "\n" the
    ids = torch.tensor([[4, 5, 6, 7, 8, 2, 8, 6, 9, 4]])
    starts = word_starts(ids, starts_with_space, ends_with_space, special_mask(ids))
    assert starts[0].tolist() == [True, True, False, True, True, True, True, False, True, True]


def test_char_tokenizer_word_table_marks_only_the_space():
    tokenizer = CharTokenizer.train(TEXT)
    starts_with_space, ends_with_space = word_boundaries(tokenizer)
    space = tokenizer.encode(" ")
    assert torch.nonzero(starts_with_space).flatten().tolist() == space
    assert torch.nonzero(ends_with_space).flatten().tolist() == space


@pytest.mark.parametrize("ratio", [0.3, 0.01])  # at 0.01 most rows draw no word and get the guaranteed one
def test_whole_word_masking_gives_all_tokens_of_a_word_one_fate(ratio):
    tokenizer = CharTokenizer.train(TEXT)
    length = 32
    batch = char_batch(tokenizer, 400, length + 1)
    c = MaskedLM(mask_ratio=ratio, strategy="whole_word", tokenizer=tokenizer).corrupt(
        batch, tokenizer.vocab_size, seeded(9))
    words = [range(m.start(), m.end()) for m in re.finditer(r"\S+|\s", TEXT[:length])]  # char i = token i
    assert any(len(word) > 1 for word in words)
    for word in words:
        fates = c.actions[:, list(word)]
        assert bool((fates == fates[:, :1]).all()), f"the tokens of {TEXT[word.start:word.stop]!r} differ"
    assert bool((c.scored.sum(dim=1) >= 1).all())


def test_whole_words_are_chosen_with_probability_ratio():
    tokenizer = CharTokenizer.train(TEXT)
    length = 32
    batch = char_batch(tokenizer, 400, length + 1)
    words = [range(m.start(), m.end()) for m in re.finditer(r"\S+|\s", TEXT[:length])]
    ids = batch[:, :-1]
    special = special_mask(ids)
    starts = word_starts(ids, *word_boundaries(tokenizer), special)
    chosen, groups = choose_whole_words(ids, 0.3, seeded(10), starts, special)
    chosen_words = sum(int(chosen[:, word.start].sum()) for word in words)
    assert within_five_sigma(chosen_words, len(words) * len(ids), 0.3)
    assert torch.equal(groups >= 0, chosen)


# ---------------------------------------------------------------------------------------------- spans, n-grams


def truncated_geometric_mean(p: float, max_len: int) -> tuple[float, float]:
    """Mean and variance of P(k) = p (1-p)^(k-1) / Z on k = 1..max_len."""
    pmf = [p * (1 - p) ** (k - 1) for k in range(1, max_len + 1)]
    total = sum(pmf)
    mean = sum(k * w for k, w in zip(range(1, max_len + 1), pmf)) / total
    second = sum(k * k * w for k, w in zip(range(1, max_len + 1), pmf)) / total
    return mean, second - mean ** 2


def test_span_lengths_follow_spanberts_geometric_and_cover_the_budget():
    ratio, rows, length = 0.15, 300, 64
    ids = torch.randint(NUM_SPECIAL, VOCAB, (rows, length), generator=seeded(11))
    ids[:, 0], ids[:, -1] = 2, 3  # [BOS] ... [EOS]
    special = special_mask(ids)
    chosen, groups = choose_spans(ids, ratio, seeded(12), special)
    assert not bool((chosen & special).any())
    assert torch.equal(groups >= 0, chosen)
    assert_groups_contiguous(groups)
    sizes = group_sizes(groups)
    budget = ratio * (length - 2)
    for row_sizes in sizes:
        covered = sum(row_sizes)
        assert covered >= budget and covered - row_sizes[-1] < budget  # stops right after the budget is met
    spans = [s for row_sizes in sizes for s in row_sizes]
    assert max(spans) <= 10
    mean, variance = truncated_geometric_mean(0.2, 10)
    assert mean == pytest.approx(3.8, abs=0.01)  # the paper's figure
    # pooled mean over a stopping rule: Wald's identity keeps it unbiased
    assert abs(sum(spans) / len(spans) - mean) <= 5 * math.sqrt(variance / len(spans))


def test_span_masking_decides_80_10_10_once_per_span():
    ids = torch.randint(NUM_SPECIAL, VOCAB, (1500, 32), generator=seeded(13))
    special = special_mask(ids)
    chosen, groups = choose_spans(ids, 0.15, seeded(14), special)
    corrupted, actions = apply_80_10_10(ids, chosen, seeded(15), VOCAB, MASK_ID, groups)
    key = (torch.arange(len(ids))[:, None] * ids.shape[1] + groups)[chosen]  # one key per (row, span)
    span_actions = actions[chosen].long()
    low = torch.full((int(key.max()) + 1,), 99).scatter_reduce(0, key, span_actions, "amin")
    high = torch.full((int(key.max()) + 1,), -1).scatter_reduce(0, key, span_actions, "amax")
    used = torch.unique(key)
    assert torch.equal(low[used], high[used]), "all positions of a span share one action"
    n_spans = len(used)
    for action, p in ((MASKED, 0.8), (RANDOM, 0.1), (KEPT, 0.1)):
        assert within_five_sigma(int((low[used] == action).sum()), n_spans, p), ACTION_NAMES[action]
    assert bool((corrupted[actions == MASKED] == MASK_ID).all())


def test_ngram_lengths_are_1_to_max_n_with_probability_proportional_to_1_over_n():
    ratio, max_n = 0.15, 3
    ids = torch.randint(NUM_SPECIAL, VOCAB, (800, 32), generator=seeded(16))
    special = special_mask(ids)
    chosen, groups = choose_ngrams(ids, ratio, seeded(17), special, max_n=max_n)
    assert_groups_contiguous(groups)
    sizes = group_sizes(groups)
    assert all(sum(row_sizes) >= ratio * 32 for row_sizes in sizes)
    grams = torch.tensor([s for row_sizes in sizes for s in row_sizes])
    assert int(grams.min()) >= 1 and int(grams.max()) <= max_n
    harmonic = sum(1 / n for n in range(1, max_n + 1))
    for n in range(1, max_n + 1):
        assert within_five_sigma(int((grams == n).sum()), len(grams), (1 / n) / harmonic), f"{n}-grams"


# ---------------------------------------------------------------------------------------------- the objective


@pytest.mark.parametrize("strategy", ["token", "whole_word", "span", "ngram"])
def test_masks_are_redrawn_on_every_call_and_repeat_with_the_seed(strategy):
    tokenizer = CharTokenizer.train(TEXT)
    batch = char_batch(tokenizer, 8, 33)
    objective = MaskedLM(mask_ratio=0.2, strategy=strategy, tokenizer=tokenizer)
    generator = seeded(18)
    first = objective.corrupt(batch, tokenizer.vocab_size, generator)
    second = objective.corrupt(batch, tokenizer.vocab_size, generator)
    assert not torch.equal(first.targets, second.targets)
    again = objective.corrupt(batch, tokenizer.vocab_size, seeded(18))
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.actions, again.actions)


def test_loss_is_cross_entropy_over_chosen_positions_of_a_bidirectional_forward():
    model = tiny_model()
    batch = torch.randint(NUM_SPECIAL, 32, (3, 17), generator=seeded(19))
    objective = MaskedLM(mask_ratio=0.3)
    out = objective.loss(model, batch, seeded(20))
    c = objective.corrupt(batch, 32, seeded(20))
    chosen = torch.nonzero(c.scored).tolist()
    assert out.n_tokens == len(chosen) > 0

    def manual(mode: str) -> float:
        log_probs = model(c.inputs, attention_mode=mode).logits.detach().log_softmax(-1)
        return -sum(float(log_probs[b, t, c.original[b, t]]) for b, t in chosen) / len(chosen)

    assert float(out.loss.detach()) == pytest.approx(manual("bidirectional"), abs=1e-5)
    assert abs(manual("causal") - manual("bidirectional")) > 1e-3  # the attention mode matters


def test_masked_lm_learns_a_markov_chain():
    """600 steps of a 2-layer, d=32 encoder on an order-1 Markov chain (32 tokens, 2 successors each).

    A predictor that ignores context can do no better than the unigram entropy of the stream (about
    3.0 nats here; ln 32 = 3.47 is the untrained model's loss). With both neighbours visible the
    masked token is nearly determined (H(x_t | x_t-1, x_t+1) = 0.06 nats for this chain), so the
    floor is far lower. Requiring a third of the unigram entropy (~1.0 nats) demands that the model
    use the context; it reaches about 0.6 in these 600 steps.
    """
    data = markov_data(vocab_size=32, branching=2)
    stream = data.streams["train"]
    unigram = torch.bincount(stream, minlength=32).double() / len(stream)
    unigram_entropy = float(-(unigram[unigram > 0] * unigram[unigram > 0].log()).sum())
    trainer = Trainer(tiny_model(), MaskedLM(), data,
                      train_config(steps=600, batch_size=32, lr=1e-2, min_lr=1e-3, warmup_steps=20), callbacks=[])
    before = trainer.evaluate(batches=8)
    trainer.fit()
    after = trainer.evaluate(batches=8)
    assert before > unigram_entropy
    assert after < unigram_entropy / 3, (before, after, unigram_entropy)


@pytest.mark.parametrize("options, named", [
    ({"mask_ratio": 0}, "mask_ratio=0"),
    ({"mask_ratio": 1.5}, "mask_ratio=1.5"),
    ({"mask_ratio": 1.0}, "mask_ratio=1.0"),
    ({"strategy": "bogus"}, "strategy='bogus'"),
    ({"strategy": "whole_word"}, "tokenizer"),
])
def test_bad_options_raise_one_clear_error(options, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        MaskedLM(**options)
    with pytest.raises(ValueError, match=re.escape(named)):
        make_objective("mlm", **options)


def test_options_round_trip_through_to_dict():
    objective = make_objective("mlm", mask_ratio=0.3)
    assert "mlm" in OBJECTIVES.names()
    described = objective.to_dict()
    assert described == {"name": "mlm", "options": {"mask_ratio": 0.3, "strategy": "token"}}
    rebuilt = objective_from_dict(json.loads(json.dumps(described)))
    assert isinstance(rebuilt, MaskedLM) and rebuilt.mask_ratio == 0.3 and rebuilt.to_dict() == described
    tokenizer = CharTokenizer.train(TEXT)
    words = make_objective("mlm", tokenizer, strategy="whole_word")
    assert objective_from_dict(words.to_dict(), tokenizer).strategy == "whole_word"
    assert words.state_dict() == {}  # the word tables come from the tokenizer, not from a checkpoint


def test_mask_for_display_names_what_happened_to_each_token():
    tokenizer = CharTokenizer.train(TEXT)
    ids = tokenizer.encode(TEXT)[:24]
    shown = MaskedLM(mask_ratio=0.4).mask_for_display(ids, tokenizer, seeded(21))
    assert len(shown) == len(ids)
    assert {action for _, action in shown} <= set(ACTION_NAMES) and any(a != "untouched" for _, a in shown)
    originals = tokenizer.token_strings(ids)
    for (text, action), original in zip(shown, originals):
        if action == "mask":
            assert text == "[MASK]"
        elif action in ("untouched", "kept"):
            assert text == original
    with pytest.raises(ValueError, match="1-D"):
        MaskedLM().mask_for_display(torch.tensor([ids]), tokenizer)
