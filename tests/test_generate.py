"""Sampling: cached == uncached, seeds, filters, stop tokens, argument checks."""

import pytest
import torch

from helpers import single_thread, tiny_model  # noqa: F401 (autouse fixture)
from workbench.generate import filter_logits, generate


@pytest.fixture(scope="module")
def model():
    # larger init spreads the logits, so greedy choices are far from ties
    return tiny_model(seed=3, init_std=0.3)


@pytest.fixture(scope="module")
def rope_model():
    return tiny_model(seed=4, init_std=0.3, position="rope", n_kv_head=2)


def _prompt(batch, length, seed=0):
    return torch.randint(0, 32, (batch, length), generator=torch.Generator().manual_seed(seed))


def _uncached_greedy_reference(model, prompt, n):
    """The obvious loop: run the last block_size tokens, take the argmax."""
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            logits = model(ids[:, -model.config.block_size:]).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("which", ["model", "rope_model"])
@pytest.mark.parametrize("batch, prompt_len, new", [(1, 5, 8), (3, 4, 30), (2, 20, 6)])
def test_cached_equals_uncached_greedy(request, which, batch, prompt_len, new):
    """Including past block_size (16): prompt + new > 16, and a prompt longer than the block."""
    model = request.getfixturevalue(which)
    prompt = _prompt(batch, prompt_len)
    cached = generate(model, prompt, new, temperature=0, use_cache=True)
    uncached = generate(model, prompt, new, temperature=0, use_cache=False)
    assert cached.shape == (batch, prompt_len + new)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, _uncached_greedy_reference(model, prompt, new))
    assert torch.equal(cached[:, :prompt_len], prompt)


def test_cached_equals_uncached_sampling_with_a_seed(model):
    prompt = _prompt(2, 3)
    a = generate(model, prompt, 25, temperature=0.8, top_k=10, seed=5, use_cache=True)
    b = generate(model, prompt, 25, temperature=0.8, top_k=10, seed=5, use_cache=False)
    assert torch.equal(a, b)


def test_seeds(model):
    prompt = _prompt(2, 3)
    a = generate(model, prompt, 20, seed=1)
    assert torch.equal(a, generate(model, prompt, 20, seed=1))
    assert not torch.equal(a, generate(model, prompt, 20, seed=2))


def test_top_k_one_is_greedy(model):
    prompt = _prompt(2, 3)
    greedy = generate(model, prompt, 20, temperature=0)
    assert torch.equal(generate(model, prompt, 20, temperature=1.5, top_k=1, seed=9), greedy)
    assert not torch.equal(generate(model, prompt, 20, temperature=1.5, seed=9), greedy)


def test_one_dimensional_in_one_dimensional_out(model):
    out = generate(model, [1, 2, 3], 4, temperature=0)
    assert out.shape == (7,) and out.dtype == torch.long
    assert out[:3].tolist() == [1, 2, 3]
    assert torch.equal(out, generate(model, torch.tensor([[1, 2, 3]]), 4, temperature=0)[0])
    assert generate(model, [1, 2, 3], 0).tolist() == [1, 2, 3]


def test_generate_restores_training_mode(model):
    model.train()
    try:
        generate(model, [1], 2)
        assert model.training
    finally:
        model.eval()


# ---------------------------------------------------------------- filters
def test_filter_logits_top_k_keeps_exactly_k():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    for k in (1, 5, 49, 50, 80):
        kept = torch.isfinite(filter_logits(logits, top_k=k))
        assert (kept.sum(-1) == min(k, 50)).all()
        best = logits.topk(min(k, 50), dim=-1).indices
        assert kept.gather(-1, best).all()
    same = filter_logits(logits, top_k=5)
    assert torch.equal(same[torch.isfinite(same)], logits[torch.isfinite(same)])


def test_filter_logits_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.1, 0.5, 0.15, 0.25])  # sorted: 0.5, 0.25, 0.15, 0.1
    logits = probs.log()[None].repeat(2, 1)
    logits[1] = logits[1].flip(-1)  # a second row in another order
    for p, expected in [(0.3, {0.5}), (0.6, {0.5, 0.25}), (0.8, {0.5, 0.25, 0.15}), (0.95, {0.5, 0.25, 0.15, 0.1}),
                        (1e-6, {0.5})]:
        out = filter_logits(logits, top_p=p)
        for row in range(2):
            kept = torch.isfinite(out[row])
            order = probs if row == 0 else probs.flip(-1)
            assert {round(float(x), 2) for x in order[kept]} == expected, (p, row)
            assert torch.equal(out[row][kept], logits[row][kept])
    # a peaked distribution still keeps at least one token
    peaked = torch.tensor([[0.0, 30.0, 0.0]])
    assert torch.isfinite(filter_logits(peaked, top_p=0.01)).sum() == 1


def test_filter_logits_passes_through_without_limits():
    logits = torch.randn(3, 10)
    assert torch.equal(filter_logits(logits), logits)
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)


def test_sampling_respects_top_k(model):
    """With top_k = 2 every sampled token is one of the two most likely at its step."""
    prompt = _prompt(1, 3)
    out = generate(model, prompt, 12, top_k=2, seed=0)
    with torch.no_grad():
        logits = model(out[:, :-1]).logits[0]
    for t in range(3, 15):
        assert int(out[0, t]) in logits[t - 1].topk(2).indices.tolist()


# ---------------------------------------------------------------- stop tokens
def test_stop_tokens_end_rows_and_pad_them(model):
    prompt = _prompt(2, 3, seed=1)
    free = generate(model, prompt, 15, temperature=0)
    stop = int(free[0, 3])  # row 0's first new token
    pad = 31 if stop != 31 else 30
    out = generate(model, prompt, 15, temperature=0, stop_tokens=[stop], pad_id=pad)
    assert out.shape[1] > 4, "row 1 should keep going after row 0 stopped"
    assert out[0, 3] == stop
    assert (out[0, 4:] == pad).all()
    # row 1 follows its free path until it emits the stop token itself
    row1 = free[1, 3:].tolist()
    end = row1.index(stop) + 1 if stop in row1 else len(row1)
    assert out.shape[1] == 3 + max(1, end)
    assert out[1, 3:3 + end].tolist() == row1[:end]


def test_generation_ends_when_every_row_stopped(model):
    prompt = _prompt(2, 3, seed=1)
    free = generate(model, prompt, 5, temperature=0)
    stops = {int(free[0, 3]), int(free[1, 3])}
    out = generate(model, prompt, 50, temperature=0, stop_tokens=stops)
    assert out.shape == (2, 4)
    assert torch.equal(out, free[:, :4])


# ---------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_invalid_arguments_raise(model, kwargs, field):
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=field):
        generate(model, [1, 2], **kwargs)


def test_empty_prompt_raises(model):
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 3)
    with pytest.raises(ValueError, match="empty"):
        generate(model, torch.zeros(2, 0, dtype=torch.long), 3)
