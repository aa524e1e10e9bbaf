"""Scoring text by the stories source's exact probability, and the AR-versus-diffusion comparison routine."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import single_thread, tiny_model  # noqa: F401
from workbench.data import CharTokenizer, TokenData, default_story_source
from workbench.data.stories import StorySource
from workbench.diffusion.compare import (causal_nll, compare_ar_diffusion, default_setups, distinct_ngrams,
                                         likelihood_comparison, sample_quality)
from workbench.objectives import MaskedDiffusion


def _tiny_source():
    return StorySource({"a": [(0.3, "xy", "b"), (0.7, "z", "a")], "b": [(0.5, "y", "a"), (0.5, "zx", "b")]}, start="a")


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_window_probabilities_of_every_text_sum_to_one(n):
    source = _tiny_source()
    total = sum(math.exp(source.window_log_prob("".join(w))) for w in itertools.product("xyz", repeat=n))
    assert math.isclose(total, 1.0, rel_tol=1e-12)


def test_window_probability_matches_the_frequency_in_a_long_stream():
    source = _tiny_source()
    stream = source.sample(200_000, seed=1)
    for text in ("zx", "yz", "xyy", "zzz"):
        count = sum(stream.startswith(text, i) for i in range(len(stream) - len(text) + 1))
        frequency = count / (len(stream) - len(text) + 1)
        p = math.exp(source.window_log_prob(text))
        assert abs(frequency - p) < 5 * math.sqrt(p * (1 - p) / 20_000), (text, frequency, p)  # 10x correlation slack


def test_window_log_prob_tends_to_the_entropy_rate_and_refuses_impossible_text():
    source = default_story_source()
    text = source.sample(6000, seed=2)[500:]
    assert abs(-source.window_log_prob(text) / len(text) - source.entropy_rate_per_char()) < 0.03
    assert source.window_log_prob(text[:40] + "#" + text[41:60]) == float("-inf")
    assert source.writable_prefix(text[:40] + "#" + text[41:60]) == 40 and source.writable_prefix(text[:60]) == 60
    # marginalizing the next character gives back the shorter window
    short = text[:12]
    extended = sum(math.exp(source.window_log_prob(short + c)) for c in set(text))
    assert math.isclose(extended, math.exp(source.window_log_prob(short)), rel_tol=1e-9)


def test_distinct_ngrams():
    assert distinct_ngrams(["a b a b", "a b"], 2) == 2 / 4
    assert distinct_ngrams(["one two three"], 3) == 1.0 and distinct_ngrams(["one"], 2) == 0.0


def test_sample_quality_scores_the_sources_own_text_at_its_entropy_rate():
    source = default_story_source()
    text = source.sample(40_000, seed=3)
    tokenizer = CharTokenizer.train(text)
    ids = torch.tensor(tokenizer.encode(text)[:64 * 200]).reshape(200, 64)
    quality = sample_quality(source, tokenizer, ids[:, :16], ids)
    assert quality["valid_fraction"] == 1.0 and quality["valid_prefix"] == 1.0
    assert abs(quality["source_nats_per_char"] - source.entropy_rate_per_char()) < 0.05
    broken = ids.clone()
    broken[:, 40:42] = tokenizer.encode(".")[0]  # ".." never occurs in the stories
    bad = sample_quality(source, tokenizer, ids[:, :16], broken)
    assert bad["valid_fraction"] < 0.05 and abs(bad["valid_prefix"] - 24 / 48) < 0.05


def test_causal_nll_is_the_cross_entropy_of_the_scored_tokens():
    model = tiny_model(vocab_size=20, block_size=16)
    windows = torch.randint(4, 20, (3, 12), generator=torch.Generator().manual_seed(0))
    logits = model(windows[:, :-1]).logits
    expected = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").mean(1)
    assert torch.allclose(causal_nll(model, windows).float(), expected, rtol=1e-5)


def test_the_comparison_reports_every_figure_for_two_models():
    source = default_story_source()
    text = source.sample(20_000, seed=0)
    tokenizer = CharTokenizer.train(text)
    data = TokenData.from_text(text, tokenizer)
    ar = tiny_model(seed=0, vocab_size=tokenizer.vocab_size, block_size=16, position="rope")
    diffusion = tiny_model(seed=0, vocab_size=tokenizer.vocab_size, block_size=16, position="rope")
    objective = MaskedDiffusion()
    report = compare_ar_diffusion(ar, diffusion, objective, data, source, windows=8, mc_samples=4, prompt_len=4,
                                  setups=default_setups(12, steps=(3, 12)))
    likelihood = report["likelihood"]
    assert likelihood["scored_tokens"] == 15 and math.isfinite(likelihood["ppl_ratio"])
    assert math.isclose(likelihood["ppl_ratio"], likelihood["diffusion_ppl_bound"] / likelihood["ar_ppl"], rel_tol=1e-9)
    assert set(report["samples"]) == {"AR, temperature 1", "ancestral, 3 steps", "low confidence, 3 steps",
                                      "random order, 3 steps", "ancestral, 12 steps", "low confidence, 12 steps",
                                      "random order, 12 steps", "the source itself"}
    assert report["samples"]["low confidence, 3 steps"]["forward_passes"] == 3
    assert report["samples"]["the source itself"]["valid_fraction"] == 1.0
    assert math.isclose(report["entropy_rate"], source.entropy_rate_per_char())
    # untrained models write text the source cannot
    assert report["samples"]["AR, temperature 1"]["valid_fraction"] < 0.5
    same = likelihood_comparison(ar, ar, objective, data.get_batch("val", 4, 16), samples=2)
    assert same["windows"] == 4
