"""Prefix LM (+ its cached generation), T5 span corruption and MEAP: identities, statistics, learning.

Learning bounds (markov_data: 32 tokens, 2 successors each, entropy rate ln 2 = 0.69 nats; its unigram
entropy, the best loss of a predictor that ignores context, is ~3.0 nats and asserted > 2.9 below):
* prefix LM: every scored target is a next token, floor ln 2; bound 1.0.
* T5 (block 16, defaults, 4 sentinels): L = 14, 2 noise tokens in 1 span; the target
  <s0> a b [EOS] has two deterministic tokens (the sentinel, and [EOS] after the only span) and two
  Markov tokens, floor (2 ln 2) / 4 = 0.35; a context-free predictor that knew the layout scores
  (2 * 3.0) / 4 = 1.5; bound 1.0.
* MEAP (2 of 16 inputs masked): a masked input leaves position t two steps from x_{t+1}, at most ln 4,
  so the floor is about (14 ln 2 + 2 ln 4) / 16 = 0.78; bound 1.3.
Each bound is far below the untrained ln(vocab) ~ 3.5 and below the context-free ~3.0 (1.5 for T5),
so passing it means the model learned the chain's successors. 300 steps reached, over 4 training seeds
(7-10) and 3 model seeds: prefix LM 0.76-0.79, T5 0.67-0.90, MEAP 1.0-1.06 (the tests use seeds 0 and 7).
"""
import math
from collections import Counter

import pytest
import torch

from helpers import markov_data, single_thread, tiny_config, tiny_model, train_config  # noqa: F401
from workbench.data.tokenizers import EOS_ID, MASK_ID, PAD_ID, CharTokenizer
from workbench.models import GPT
from workbench.objectives.base import IGNORE, objective_from_dict
from workbench.objectives.causal_lm import CausalLM
from workbench.objectives.meap import MEAP
from workbench.objectives.prefix_lm import PrefixLM, prefix_lm_generate
from workbench.objectives.span_corruption import (T5SpanCorruption, corrupt_spans, decorrupt, noise_counts,
                                                  random_spans_noise_mask, source_length)
from workbench.train.trainer import Trainer

VOCAB, BLOCK = 32, 16


def _batch(rows=4, seed=0, vocab=VOCAB, length=BLOCK + 1):
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- prefix LM
@pytest.mark.parametrize("fraction", [0.0, 1 / BLOCK])  # P = 0 and P = 1: both are exactly the causal mask
def test_prefix_lm_with_p_0_or_1_is_exactly_the_causal_lm_loss(fraction):
    model, batch = tiny_model(), _batch()
    c = PrefixLM(prefix_fraction=fraction).corrupt(batch, VOCAB)
    assert c.attention_mode == "causal"                           # P <= 1 adds no key to the causal mask
    assert torch.equal(c.inputs, batch[:, :-1]) and torch.equal(c.targets, batch[:, 1:])
    with torch.no_grad():
        prefix_out = PrefixLM(prefix_fraction=fraction).loss(model, batch)
        causal_out = CausalLM().loss(model, batch)
    assert torch.equal(prefix_out.loss, causal_out.loss) and prefix_out.n_tokens == causal_out.n_tokens


def test_prefix_mode_with_prefix_len_0_computes_the_causal_logits():
    # the model-level identity behind P = 0 (a masked kernel vs the fused causal one: float tolerance)
    model, ids = tiny_model(), _batch()[:, :-1]
    with torch.no_grad():
        prefix = model(ids, attention_mode="prefix", prefix_len=0).logits
        causal = model(ids).logits
    assert (prefix - causal).abs().max() < 1e-5


def test_prefix_lm_scores_only_targets_outside_the_prefix():
    batch = _batch(rows=3)
    c = PrefixLM(prefix_fraction=0.5).corrupt(batch, VOCAB)   # P = floor(0.5 * 16) = 8
    assert c.attention_mode == "prefix" and c.prefix_len.tolist() == [8, 8, 8]
    assert (c.targets[:, :7] == IGNORE).all()                 # x_1..x_7 lie in the prefix
    assert torch.equal(c.targets[:, 7:], batch[:, 8:])        # position 7 predicts x_8, the first suffix token
    assert torch.equal(c.inputs, batch[:, :-1])
    # random P: each row ignores exactly max(P - 1, 0) leading targets and scores the rest
    c = PrefixLM().corrupt(_batch(rows=64), VOCAB, _gen(3))
    for row, p in enumerate(c.prefix_len.tolist()):
        ignored = (c.targets[row] == IGNORE).nonzero().flatten().tolist()
        assert ignored == list(range(max(p - 1, 0)))


def test_prefix_lm_loss_equals_cross_entropy_after_the_prefix():
    model, batch = tiny_model(), _batch()
    with torch.no_grad():
        out = PrefixLM(prefix_fraction=0.25).loss(model, batch)   # P = 4
        logits = model(batch[:, :-1], attention_mode="prefix", prefix_len=4).logits
    manual = torch.nn.functional.cross_entropy(logits[:, 3:].reshape(-1, VOCAB), batch[:, 4:].reshape(-1))
    assert out.n_tokens == 4 * 13
    assert float(out.loss) == pytest.approx(float(manual), abs=1e-6)


def test_random_prefix_length_is_uniform_over_0_to_T_minus_1():
    draws = PrefixLM().prefix_lengths(16_000, BLOCK, _gen(1))
    counts = torch.bincount(draws, minlength=BLOCK + 1)
    assert counts[BLOCK] == 0 and int(draws.min()) == 0
    expected = 16_000 / BLOCK
    sigma = math.sqrt(16_000 * (1 / BLOCK) * (1 - 1 / BLOCK))   # binomial count per value
    assert (counts[:BLOCK].float() - expected).abs().max() < 5 * sigma


def test_prefix_logits_ignore_the_suffix_and_see_the_whole_prefix():
    model, ids = tiny_model(), _batch(rows=2)[:, :-1]
    P = 6
    changed_suffix = ids.clone()
    changed_suffix[:, P:] = (ids[:, P:] + 7) % VOCAB
    changed_prefix = ids.clone()
    changed_prefix[:, P - 1] = (ids[:, P - 1] + 7) % VOCAB    # the last prefix token
    with torch.no_grad():
        base = model(ids, attention_mode="prefix", prefix_len=P).logits
        suffix = model(changed_suffix, attention_mode="prefix", prefix_len=P).logits
        prefix = model(changed_prefix, attention_mode="prefix", prefix_len=P).logits
        causal, causal_changed = model(ids).logits, model(changed_prefix).logits
    assert (base[:, :P] - suffix[:, :P]).abs().max() < 1e-6        # positions < P never read the suffix
    assert (base[:, P:] - suffix[:, P:]).abs().max() > 1e-3        # (the suffix itself did change)
    assert (base[:, 0] - prefix[:, 0]).abs().max() > 1e-3          # position 0 reads prefix token P - 1
    assert (causal[:, 0] - causal_changed[:, 0]).abs().max() == 0  # which a causal model cannot


# ---------------------------------------------------------------------------------------------- generation
def _slow_greedy(model, prompt, steps):
    """Rerun the whole sequence without a cache, prefix mode with prefix_len = prompt length, take the argmax."""
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids, attention_mode="prefix", prefix_len=prompt.shape[1]).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_cached_prefix_generation_equals_the_slow_reference(position):
    model = tiny_model(seed=1, position=position, init_std=0.2)  # larger weights: clear argmax margins
    prompt = _batch(rows=3, seed=5, length=5)
    fast = prefix_lm_generate(model, prompt, 12, temperature=0)   # 5 + 12 - 1 = 16 = block_size
    assert torch.equal(fast, _slow_greedy(model, prompt, 12))
    assert torch.equal(prefix_lm_generate(model, prompt[0], 4, temperature=0), fast[0, :9])  # 1-D in, 1-D out
    # it is not causal generation: the bidirectional prompt changes the continuation
    causal = torch.cat([prompt, torch.zeros(3, 12, dtype=torch.long)], dim=1)
    with torch.no_grad():
        for t in range(5, 17):
            causal[:, t] = model(causal[:, :t]).logits[:, -1].argmax(-1)
    assert not torch.equal(causal, fast)


def test_cached_prefill_logits_equal_uncached_prefix_logits():
    model, ids = tiny_model(seed=2), _batch(rows=2, seed=6, length=10)
    with torch.no_grad():
        full = model(ids, attention_mode="prefix", prefix_len=6).logits
        cache = model.new_cache(2, 10)
        prefill = model(ids[:, :6], attention_mode="prefix", prefix_len=6, cache=cache).logits
        steps = [model(ids[:, t:t + 1], cache=cache).logits for t in range(6, 10)]
    assert (prefill - full[:, :6]).abs().max() < 1e-5
    assert (torch.cat(steps, dim=1) - full[:, 6:]).abs().max() < 1e-5


def test_top_k_1_sampling_is_greedy_and_a_generator_makes_draws_repeatable():
    model, prompt = tiny_model(seed=1, init_std=0.2), _batch(rows=2, seed=7, length=4)
    greedy = prefix_lm_generate(model, prompt, 6, temperature=0)
    assert torch.equal(prefix_lm_generate(model, prompt, 6, temperature=1.0, top_k=1, generator=_gen(0)), greedy)
    a = prefix_lm_generate(model, prompt, 6, temperature=2.0, generator=_gen(9))
    b = prefix_lm_generate(model, prompt, 6, temperature=2.0, generator=_gen(9))
    assert torch.equal(a, b) and torch.equal(a[:, :4], prompt)


def test_generation_and_cache_errors_are_clear():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        prefix_lm_generate(model, torch.zeros(10, dtype=torch.long), 8)      # 10 + 8 - 1 > 16
    with pytest.raises(ValueError, match="non-empty"):
        prefix_lm_generate(model, torch.zeros(0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        prefix_lm_generate(model, [4, 5], -1)
    assert prefix_lm_generate(model, [4, 5], 0).tolist() == [4, 5]
    ids = _batch(rows=1)[:, :4]
    with pytest.raises(ValueError, match="causal"):
        model(ids, attention_mode="bidirectional", cache=model.new_cache(1))
    with pytest.raises(ValueError, match="first call into an empty cache"):
        model(ids, attention_mode="prefix", prefix_len=6, cache=model.new_cache(1))  # prefix beyond this call
    cache = model.new_cache(1)
    model(ids, attention_mode="prefix", prefix_len=4, cache=cache)            # allowed: the prompt prefill
    with pytest.raises(ValueError, match="causal"):
        model(ids, attention_mode="prefix", prefix_len=4, cache=cache)        # not on a non-empty cache


# ---------------------------------------------------------------------------------------------- T5 spans
def test_noise_mask_has_the_exact_noise_and_span_counts():
    g = _gen(0)
    for length in range(2, 120):
        expected_noise = min(max(round(length * 0.15), 1), length - 1)
        expected_spans = min(max(1, round(expected_noise / 3.0)), length - expected_noise)
        assert noise_counts(length, 0.15, 3.0) == (expected_noise, expected_spans)
        mask = random_spans_noise_mask(length, 0.15, 3.0, g)
        starts = mask & ~torch.cat([torch.tensor([False]), mask[:-1]])
        assert mask.shape == (length,) and int(mask.sum()) == expected_noise
        assert int(starts.sum()) == expected_spans
        assert not mask[0] and mask[-1]                      # non-noise first, so noise last
    assert noise_counts(1000, 0.15, 3.0, max_spans=16) == (150, 16)   # 50 spans capped by the sentinels


def test_noise_masks_are_uniform_over_the_allowed_masks():
    # L = 8, density 0.375, mean 1.5: 3 noise tokens in 2 spans (2 splits) and 5 kept in 2 parts (4 splits)
    assert noise_counts(8, 0.375, 1.5) == (3, 2)
    draws = 4000
    g = _gen(4)
    counts = Counter(tuple(random_spans_noise_mask(8, 0.375, 1.5, g).tolist()) for _ in range(draws))
    assert len(counts) == 8
    sigma = math.sqrt(draws * (1 / 8) * (7 / 8))
    assert all(abs(n - draws / 8) < 5 * sigma for n in counts.values())


def test_corrupt_spans_layout_and_sentinels_count_down():
    objective = T5SpanCorruption(n_sentinels=4)
    sentinels = objective.sentinel_ids(VOCAB)
    assert sentinels == [35, 34, 33, 32]                     # vocab + n - 1 - k
    ids = torch.tensor([4, 5, 6, 7, 8, 9, 10, 11])
    mask = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    inputs, targets = corrupt_spans(ids, mask, sentinels)
    assert inputs.tolist() == [4, 5, 35, 8, 9, 34]
    assert targets.tolist() == [35, 6, 7, 34, 10, 11, EOS_ID]
    assert torch.equal(decorrupt(inputs, targets, sentinels), ids)
    inputs, targets = corrupt_spans(ids, torch.zeros(8, dtype=torch.bool), sentinels)  # no noise at all
    assert torch.equal(inputs, ids) and targets.tolist() == [EOS_ID]


def test_decorrupt_reconstructs_the_source_on_200_random_draws():
    g = _gen(11)
    sentinels = [99 - k for k in range(40)]
    for _ in range(200):
        length = int(torch.randint(2, 64, (1,), generator=g))
        density = float(torch.empty(1).uniform_(0.05, 0.95, generator=g))
        mean = float(torch.empty(1).uniform_(1.0, 6.0, generator=g))
        ids = torch.randint(0, 40, (length,), generator=g)   # specials ([PAD], [EOS]) included
        mask = random_spans_noise_mask(length, density, mean, g, max_spans=len(sentinels))
        inputs, targets = corrupt_spans(ids, mask, sentinels)
        assert targets[-1] == EOS_ID and targets[0] == sentinels[0]
        assert len(inputs) + len(targets) == length + 2 * int(inputs.ge(60).sum()) + 1
        assert torch.equal(decorrupt(inputs, targets, sentinels), ids)


def test_t5_objective_sequence_layout():
    objective = T5SpanCorruption(n_sentinels=4)
    batch = _batch(rows=5, seed=2)
    c = objective.corrupt(batch, VOCAB, _gen(0))
    length = source_length(BLOCK, 0.15, 3.0, 4)
    noise, spans = noise_counts(length, 0.15, 3.0, 4)
    assert (length, noise, spans) == (14, 2, 1) and length + 2 * spans + 1 == BLOCK + 1  # an exact fit
    prefix = length - noise + spans
    assert c.attention_mode == "prefix" and c.prefix_len.tolist() == [prefix] * 5
    for row in range(5):
        scored = c.targets[row][c.targets[row] != IGNORE]
        assert len(scored) == spans + noise + 1 and scored[-1] == EOS_ID
        assert (c.targets[row, :prefix - 1] == IGNORE).all()
        assert torch.equal(decorrupt(c.inputs[row, :prefix], scored, objective.sentinel_ids(VOCAB)),
                           batch[row, :length])


def test_t5_pads_when_no_source_length_fits_exactly():
    # density 0.25, mean 1 (one span per noise token), block 16: L = 10 has 2 noise tokens in 2 spans,
    # 10 + 2 * 2 + 1 = 15 tokens; L = 11 has 3 in 3 spans, 18 > 17. So L = 10 and 2 [PAD] fill the window.
    objective = T5SpanCorruption(noise_density=0.25, mean_span_length=1.0, n_sentinels=8)
    assert source_length(BLOCK, 0.25, 1.0, 8) == 10
    assert noise_counts(10, 0.25, 1.0, 8) == (2, 2) and noise_counts(11, 0.25, 1.0, 8) == (3, 3)
    c = objective.corrupt(_batch(rows=3), VOCAB, _gen(1))
    assert c.prefix_len.tolist() == [10] * 3                    # 8 kept + 2 sentinels
    assert (c.inputs[:, 15:] == PAD_ID).all()                    # sequence positions 15, 16 are [PAD]
    assert (c.targets[:, 14:] == IGNORE).all()                   # predicting them is never scored
    assert (c.targets[:, 9:14] != IGNORE).all()                  # <s0> a <s1> b [EOS] are
    assert (c.targets[:, 13] == EOS_ID).all()


def test_t5_objective_refuses_a_model_without_room_for_the_sentinels():
    objective = T5SpanCorruption(n_sentinels=4)
    model = tiny_model()                                         # vocab 32 = the data's vocabulary: no room
    with pytest.raises(ValueError, match=r"vocab_size = tokenizer.vocab_size \+ n_sentinels"):
        objective.loss(model, _batch())
    tokenizer = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz01")   # 4 + 28 = 32 ids
    with pytest.raises(ValueError, match="extra_vocab = 4"):
        T5SpanCorruption(n_sentinels=4, tokenizer=tokenizer).setup(model)
    T5SpanCorruption(n_sentinels=4, tokenizer=tokenizer).setup(tiny_model(vocab_size=36))  # room: fine


def test_t5_objective_trains_through_the_trainer_with_the_extra_vocab():
    data = markov_data()
    objective = T5SpanCorruption(n_sentinels=4)
    assert objective.extra_vocab == 4 and T5SpanCorruption.extra_vocab == 0
    model = GPT(tiny_config(vocab_size=data.vocab_size + objective.extra_vocab), seed=0)
    trainer = Trainer(model, objective, data, train_config(steps=300), callbacks=[])
    trainer.fit()
    assert trainer.history["train"][0]["loss"] > 3.0             # ~ln 36 at the start
    assert trainer.evaluate(batches=4) < 1.0                     # module docstring: floor 0.35, context-free 1.5


# ---------------------------------------------------------------------------------------------- MEAP
def test_meap_masks_only_inputs_at_shared_positions():
    batch = _batch(rows=6, seed=3)
    batch[batch == MASK_ID] = 4                                  # so a [MASK] in the inputs is one MEAP wrote
    for ratio, expected in [(0.15, 2), (0.05, 1), (0.5, 8), (0.99, 15)]:   # max(1, int(16 * ratio))
        c = MEAP(mask_ratio=ratio).corrupt(batch, VOCAB, _gen(2))
        assert torch.equal(c.targets, batch[:, 1:])              # the CLM targets, untouched
        assert c.attention_mode == "causal" and c.prefix_len is None
        changed = c.inputs != batch[:, :-1]
        assert (c.inputs[changed] == MASK_ID).all()
        assert (changed == changed[0]).all()                     # the same positions in every row
        assert int(changed[0].sum()) == expected and not changed[:, -1].any()   # drawn from range(T - 1)


def test_meap_positions_are_uniform_over_all_but_the_last_input():
    objective, draws = MEAP(mask_ratio=0.15), 3000               # 2 of 15 positions per draw
    g, hits = _gen(5), torch.zeros(BLOCK)
    batch = torch.full((1, BLOCK + 1), 4)
    for _ in range(draws):
        hits += (objective.corrupt(batch, VOCAB, g).inputs[0] == MASK_ID).float()
    p = 2 / 15
    sigma = math.sqrt(draws * p * (1 - p))
    assert hits[-1] == 0 and (hits[:-1] - draws * p).abs().max() < 5 * sigma


def test_meap_ratio_0_is_exactly_the_causal_lm_loss():
    model, batch = tiny_model(), _batch()
    c = MEAP(mask_ratio=0.0).corrupt(batch, VOCAB, _gen(0))
    assert torch.equal(c.inputs, batch[:, :-1])
    with torch.no_grad():
        assert torch.equal(MEAP(mask_ratio=0.0).loss(model, batch).loss, CausalLM().loss(model, batch).loss)
        assert not torch.equal(MEAP(mask_ratio=0.15).loss(model, batch, _gen(0)).loss,
                               CausalLM().loss(model, batch).loss)


# ---------------------------------------------------------------------------------------------- all three
@pytest.mark.parametrize("objective, model_vocab, bound", [
    (PrefixLM(), VOCAB, 1.0),
    (MEAP(), VOCAB, 1.3),
], ids=["prefix_lm", "meap"])
def test_objective_learns_the_markov_chain(objective, model_vocab, bound):
    data = markov_data()
    stream = data.streams["train"]
    unigram = torch.bincount(stream, minlength=VOCAB).float() / len(stream)
    assert float(-(unigram * unigram.clamp_min(1e-12).log()).sum()) > 2.9   # the context-free loss (docstring)
    trainer = Trainer(GPT(tiny_config(vocab_size=model_vocab), seed=0), objective, data, train_config(steps=300),
                      callbacks=[])
    trainer.fit()
    assert trainer.evaluate(batches=4) < bound


@pytest.mark.parametrize("build, option, bad", [
    (PrefixLM, "prefix_fraction", 1.0), (PrefixLM, "prefix_fraction", -0.1), (PrefixLM, "prefix_fraction", "half"),
    (T5SpanCorruption, "noise_density", 0.0), (T5SpanCorruption, "noise_density", 1.0),
    (T5SpanCorruption, "mean_span_length", 0.5), (T5SpanCorruption, "n_sentinels", 0),
    (T5SpanCorruption, "n_sentinels", 2.5),
    (MEAP, "mask_ratio", 1.0), (MEAP, "mask_ratio", -0.01), (MEAP, "mask_ratio", True),
])
def test_bad_options_raise_one_clear_error(build, option, bad):
    with pytest.raises(ValueError) as info:
        build(**{option: bad})
    message = str(info.value)
    assert option in message and repr(bad) in message and ("lie in" in message or "integer" in message)


def test_t5_needs_a_block_of_at_least_4():
    with pytest.raises(ValueError, match="block_size"):
        T5SpanCorruption(n_sentinels=2).corrupt(_batch(length=4), VOCAB)   # block 3


@pytest.mark.parametrize("objective", [
    PrefixLM(), PrefixLM(prefix_fraction=0.3), T5SpanCorruption(noise_density=0.3, mean_span_length=2.0,
                                                                n_sentinels=4), MEAP(mask_ratio=0.1),
], ids=["prefix", "prefix_fixed", "t5", "meap"])
def test_to_dict_round_trip_rebuilds_the_same_objective(objective):
    rebuilt = objective_from_dict(objective.to_dict())
    assert type(rebuilt) is type(objective) and rebuilt.to_dict() == objective.to_dict()
    assert rebuilt.extra_vocab == objective.extra_vocab
    batch = _batch(rows=3)
    a, b = objective.corrupt(batch, VOCAB, _gen(8)), rebuilt.corrupt(batch, VOCAB, _gen(8))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_batched_corrupt_spans_equals_row_by_row():
    g, sentinels = _gen(12), [99 - k for k in range(16)]
    ids = torch.randint(0, 40, (7, 30), generator=g)
    masks = random_spans_noise_mask(30, 0.3, 2.0, g, rows=7)
    assert masks.shape == (7, 30) and (masks.sum(1) == 9).all()
    inputs, targets = corrupt_spans(ids, masks, sentinels)
    for row in range(7):
        one_inputs, one_targets = corrupt_spans(ids[row], masks[row], sentinels)
        assert torch.equal(inputs[row], one_inputs) and torch.equal(targets[row], one_targets)
    uneven = masks.clone()
    uneven[0] = random_spans_noise_mask(30, 0.5, 2.0, g)
    with pytest.raises(ValueError, match="same number of noise tokens"):
        corrupt_spans(ids, uneven, sentinels)
