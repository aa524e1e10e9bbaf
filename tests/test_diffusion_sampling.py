"""Samplers of masked diffusion LMs (diffusion/sampling.py): what is committed when, and what never changes."""
import math

import pytest
import torch

from helpers import single_thread, tiny_model  # noqa: F401
from workbench.data import CharTokenizer
from workbench.diffusion import generate, infill, low_confidence_step, sample, transfer_schedule
from workbench.diffusion.sampling import gumbel_argmax
from workbench.objectives import MaskedDiffusion
from workbench.objectives.base import MASK_ID

V = 12


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1, vocab_size=V, block_size=16, position="rope")


@pytest.fixture(scope="module")
def objective():
    return MaskedDiffusion()


def _prompt(batch=3, length=4):
    return torch.randint(4, V, (batch, length), generator=torch.Generator().manual_seed(0))


def test_transfer_schedule_spreads_the_remainder_over_the_first_steps():
    assert transfer_schedule(10, 4) == [3, 3, 2, 2]
    assert transfer_schedule(8, 8) == [1] * 8
    assert transfer_schedule(3, 5) == [1, 1, 1, 0, 0]
    assert sum(transfer_schedule(37, 6)) == 37
    with pytest.raises(ValueError, match="steps"):
        transfer_schedule(4, 0)


def _committed_per_step(trace, steps):
    return torch.stack([(trace.committed_at == s).sum(dim=1) for s in range(1, steps + 1)], dim=1)


@pytest.mark.parametrize("sampler", ["low_confidence", "random"])
@pytest.mark.parametrize("steps", [12, 5, 3])
def test_remasking_commits_the_planned_tokens_and_never_changes_them(model, objective, sampler, steps):
    prompt = _prompt()
    trace = generate(model, objective, prompt, 12, steps, sampler=sampler)
    planned = torch.tensor(transfer_schedule(12, steps)).expand(3, -1)
    assert torch.equal(_committed_per_step(trace, steps), planned)
    assert len(trace.states) == steps + 1 and trace.forward_passes == steps
    assert not bool((trace.tokens == MASK_ID).any())
    assert torch.equal(trace.tokens[:, :4], prompt) and torch.all(trace.committed_at[:, :4] == 0)
    for before, after in zip(trace.states, trace.states[1:]):
        written = before != MASK_ID
        assert torch.equal(after[written], before[written])  # a committed or given token never changes
    assert torch.equal(trace.states[-1], trace.tokens)


def test_one_token_per_step_when_steps_equal_the_generated_length(model, objective):
    trace = generate(model, objective, _prompt(2), 8, 8)
    assert torch.equal(_committed_per_step(trace, 8), torch.ones(2, 8, dtype=torch.long))


def test_low_confidence_commits_the_most_confident_prediction(model, objective):
    canvas = torch.cat([_prompt(1)[0], torch.full((6,), MASK_ID)])
    trace = sample(model, objective, canvas, 6)
    log_probs = objective.log_probs(model.eval(), canvas[None])[0]
    first = int((trace.committed_at == 1).nonzero()[0])
    masked = (canvas == MASK_ID).nonzero().flatten()
    best = masked[log_probs[masked].max(-1).values.argmax()]
    assert first == int(best) and int(trace.tokens[first]) == int(log_probs[first].argmax())


def test_blocks_are_decoded_left_to_right(model, objective):
    trace = generate(model, objective, _prompt(2), 12, 6, block_length=4)
    at = trace.committed_at[:, 4:]
    for block in range(3):
        steps = at[:, 4 * block:4 * block + 4]
        assert torch.all((steps > 2 * block) & (steps <= 2 * block + 2)), at  # block b: only in its 2 steps


@pytest.mark.parametrize("options, message", [
    (dict(gen_length=12, steps=6, block_length=5), "multiple of block_length"),
    (dict(gen_length=12, steps=5, block_length=4), "multiple of the number of blocks"),
    (dict(gen_length=12, steps=4, block_length=4, sampler="ancestral"), "ancestral"),
    (dict(gen_length=13, steps=4), "context"),
    (dict(gen_length=4, steps=0), "steps"),
    (dict(gen_length=4, steps=4, sampler="greedy"), "sampler"),
])
def test_inconsistent_settings_get_one_clear_error(model, objective, options, message):
    options = dict(options)
    with pytest.raises(ValueError, match=message):
        generate(model, objective, _prompt(1)[0], options.pop("gen_length"), options.pop("steps"), **options)


def test_temperature_zero_is_deterministic_and_positive_temperature_samples(model, objective):
    prompt = _prompt(4)
    a = generate(model, objective, prompt, 8, 8, generator=torch.Generator().manual_seed(1)).tokens
    b = generate(model, objective, prompt, 8, 8, generator=torch.Generator().manual_seed(2)).tokens
    assert torch.equal(a, b)
    hot = [generate(model, objective, prompt, 8, 8, temperature=1.0, generator=torch.Generator().manual_seed(s)).tokens
           for s in (1, 2)]
    assert not torch.equal(hot[0], hot[1])


def test_gumbel_argmax_samples_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20_000, 3)
    draws = gumbel_argmax(logits, 1.0, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=3).double() / 20_000
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), 0)
    assert torch.all((frequencies - expected).abs() < 5 * torch.sqrt(expected * (1 - expected) / 20_000))
    assert torch.equal(gumbel_argmax(logits[:2], 0.0), torch.tensor([2, 2]))


def test_ancestral_keeps_a_token_masked_with_probability_s_over_t(model, objective):
    """From t = 1 to s = 0.5 (2 steps end at 1e-5, so the first step goes to (1 + 1e-5) / 2)."""
    canvas = torch.full((256, 16), MASK_ID)
    trace = sample(model, objective, canvas, 2, sampler="ancestral", generator=torch.Generator().manual_seed(0))
    still = float((trace.states[1] == MASK_ID).double().mean())
    s_over_t = (1 + 1e-5) / 2
    assert abs(still - s_over_t) < 5 * math.sqrt(s_over_t * (1 - s_over_t) / canvas.numel())
    assert not bool((trace.tokens == MASK_ID).any())


def test_ancestral_reuses_the_prediction_when_nothing_changed(model, objective):
    prompt = _prompt(1)
    trace = generate(model, objective, prompt, 6, 200, sampler="ancestral")
    changes = sum(not torch.equal(a, b) for a, b in zip(trace.states[:-2], trace.states[1:-1]))
    assert trace.forward_passes == 1 + changes < 20  # 200 steps, one forward pass per distinct canvas
    assert torch.equal(trace.tokens[:, :4], prompt) and not bool((trace.tokens == MASK_ID).any())
    timed = MaskedDiffusion(time_conditioning=True)
    timed.setup(model)
    assert generate(model, timed, prompt, 6, 50, sampler="ancestral").forward_passes == 50  # t changes every step


def test_the_final_denoising_pass_fills_what_is_left(model, objective):
    trace = sample(model, objective, torch.full((4, 16), MASK_ID), 1, sampler="ancestral")
    assert not bool((trace.tokens == MASK_ID).any()) and torch.all(trace.committed_at == 1)


@pytest.mark.parametrize("sampler", ["low_confidence", "random", "ancestral"])
def test_infilling_never_changes_the_given_tokens(model, objective, sampler):
    tokenizer = CharTokenizer(list("abcdefgh"))
    text = "ab[MASK]cd[MASK][MASK]ef[MASK]"
    tiny = tiny_model(seed=2, vocab_size=tokenizer.vocab_size, block_size=16, position="rope")
    trace = infill(tiny, objective, tokenizer, text, sampler=sampler)
    ids = trace.tokens.tolist()
    given = [(0, "a"), (1, "b"), (3, "c"), (4, "d"), (7, "e"), (8, "f")]
    assert all(tokenizer.decode([ids[i]]) == ch for i, ch in given)
    assert MASK_ID not in ids and len(ids) == 10
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        infill(tiny, objective, tokenizer, "abc")


def test_a_time_conditioned_model_samples_with_every_sampler(model):
    timed = MaskedDiffusion(time_conditioning=True)
    timed.setup(model)
    for sampler in ("low_confidence", "random", "ancestral"):
        trace = generate(model, timed, _prompt(2), 6, 3, sampler=sampler)
        assert not bool((trace.tokens == MASK_ID).any())


def test_one_step_by_hand():
    """low_confidence_step on made-up log-probabilities: the k surest masked positions, argmax tokens."""
    log_probs = torch.log_softmax(torch.tensor([[[0.0, 0, 0, 0, 5, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 3, 0],
                                                 [0, 0, 0, 0, 9, 0]]]), -1)
    canvas = torch.tensor([[MASK_ID, MASK_ID, MASK_ID, 5]])
    new, committed, _ = low_confidence_step(log_probs, canvas, torch.tensor([2]))
    assert new.tolist() == [[4, MASK_ID, 4, 5]] and committed.tolist() == [[True, False, True, False]]


def test_denoising_html_shows_masks_given_tokens_and_the_step():
    from workbench.viz.denoising import MASK_BOX, denoising_html

    tokenizer = CharTokenizer(list("abcdefgh"))
    tiny = tiny_model(seed=2, vocab_size=tokenizer.vocab_size, block_size=16, position="rope")
    trace = infill(tiny, MaskedDiffusion(), tokenizer, "ab[MASK][MASK]cd")
    start, end = denoising_html(trace, 0, tokenizer), denoising_html(trace, 2, tokenizer)
    assert start.split("<br>")[1].count(MASK_BOX) == 2 and "2 masks left" in start and "step 0 of 2" in start
    assert MASK_BOX not in end.split("<br>")[1] and "0 masks left" in end and "written at step 2" in end


def test_denoising_explorer_resamples_and_moves_through_the_steps():
    from workbench.viz.widgets import denoising_explorer

    tokenizer = CharTokenizer(list("abcdefgh "))
    tiny = tiny_model(seed=2, vocab_size=tokenizer.vocab_size, block_size=16, position="rope")
    box = denoising_explorer(tiny, MaskedDiffusion(), tokenizer, "abc", gen_length=8)
    prompt, (sampler, steps, seed), position, view = box.children[0], box.children[1].children, *box.children[2:]
    assert position.max == 8 and "step 8 of 8" in view.value
    steps.value = 4
    assert position.max == 4 and "step 4 of 4" in view.value
    position.value = 1
    assert "step 1 of 4" in view.value
    sampler.value = "ancestral"
    assert "ancestral, 4 steps" in view.value
    prompt.value = "abc" * 6  # 18 + 8 tokens: cropped to the context, still valid
    assert "masks left" in view.value
    prompt.value = "xyz"
    assert "not in this CharTokenizer" in view.value
