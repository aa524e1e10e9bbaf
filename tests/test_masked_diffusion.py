"""Masked diffusion (objectives/masked_diffusion.py, diffusion/elbo.py): the schedule, SUBS, the estimators
against the ELBO computed exactly by enumeration, the ELBO of a known distribution, and learning."""
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from helpers import markov_data, single_thread, tiny_model, train_config  # noqa: F401
from workbench.diffusion import any_order_nll, answer_log_likelihood, choose_answer, exact_nelbo, model_denoiser, nelbo
from workbench.objectives import MaskedDiffusion, make_objective
from workbench.objectives.base import MASK_ID
from workbench.objectives.masked_diffusion import (loss_weight, mask_probability, masked_nll, sample_times, sigma,
                                                   stratified_uniforms, subs_log_probs)
from workbench.train import Trainer

V = 8  # ids 0..3 special, 4..7 ordinary


# ---------------------------------------------------------------- the schedule
@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1])
def test_the_weight_is_exactly_one_over_t_for_any_eps(eps):
    t = torch.tensor([1e-3, 0.01, 0.3, 0.5, 0.9, 0.999], dtype=torch.float64)
    assert torch.allclose(loss_weight(t, eps), 1 / t, rtol=1e-12, atol=0)
    # and not 1 / P(masked | t) unless eps = 0
    if eps:
        assert not torch.allclose(loss_weight(t, eps), 1 / mask_probability(t, eps), rtol=1e-6)
    assert torch.allclose(1 - torch.exp(-sigma(t, eps)), (1 - eps) * t, rtol=1e-12)


def test_antithetic_times_cover_one_stratum_each():
    eps = 1e-3
    t = sample_times(8, eps, antithetic=True, generator=torch.Generator().manual_seed(0)).double()
    u = (t - eps) / (1 - eps)
    assert torch.equal((u * 8).floor().long(), torch.arange(8))
    grouped = sample_times(8, eps, antithetic=True, generator=torch.Generator().manual_seed(0), group=4).double()
    assert torch.equal((((grouped - eps) / (1 - eps)) * 4).floor().long(), torch.tensor([0, 1, 2, 3] * 2))
    plain = sample_times(4096, eps, antithetic=False, generator=torch.Generator().manual_seed(1))
    assert plain.min() >= eps and plain.max() <= 1 and abs(float(plain.mean()) - 0.5) < 0.02


def test_stratified_counts_are_uniform_per_row():
    """Every row's masked count is uniform on 1..L (LLaDA's stratified set), and one batch spreads evenly."""
    L, B, draws = 5, 4, 4000
    g = torch.Generator().manual_seed(0)
    counts = torch.stack([(stratified_uniforms(B, g) * L).floor().long() + 1 for _ in range(draws)])
    for row in range(B):
        frequencies = torch.bincount(counts[:, row], minlength=L + 1)[1:].double() / draws
        assert torch.all((frequencies - 1 / L).abs() < 5 * math.sqrt(0.2 * 0.8 / draws)), frequencies
    one = (stratified_uniforms(10, torch.Generator().manual_seed(3)) * 10).floor()
    assert sorted(one.tolist()) == list(range(10))


# ---------------------------------------------------------------- SUBS
def test_subs_never_predicts_mask_and_carries_unmasked_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, V, generator=g)
    logits[..., MASK_ID] = 50.0  # the network would love to say [MASK]
    x_t = torch.tensor([[MASK_ID, 5, MASK_ID, 6, 7, MASK_ID], [4, MASK_ID, MASK_ID, MASK_ID, 5, 6]])
    log_probs = subs_log_probs(logits, x_t)
    probs = log_probs.exp()
    assert torch.all(probs[..., MASK_ID] == 0)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 6))
    unmasked = x_t != MASK_ID
    assert torch.equal(probs[unmasked].argmax(-1), x_t[unmasked]) and torch.all(probs[unmasked].max(-1).values == 1)
    x0 = torch.tensor([[4, 5, 7, 6, 7, 4], [4, 6, 5, 4, 5, 6]])
    nll = masked_nll(log_probs, x0, x_t == MASK_ID)
    assert torch.all(nll[unmasked] == 0)  # exactly 0: unmasked positions cost nothing
    assert torch.all(nll[~unmasked] > 0)


def test_the_nelbo_reads_no_target_at_unmasked_positions():
    """Only masked positions are scored: whatever the clean sequence holds where x_t is unmasked, the value is the same."""
    model = tiny_model(vocab_size=V)
    objective = MaskedDiffusion()
    x0 = torch.randint(4, V, (3, 16), generator=torch.Generator().manual_seed(1))
    c = objective.mask(x0, torch.Generator().manual_seed(2))
    other = torch.where(c.inputs == MASK_ID, x0, torch.full_like(x0, 4))
    assert not torch.equal(other, x0)
    assert torch.equal(objective.sequence_nelbo(model, dataclasses.replace(c, original=other)),
                       objective.sequence_nelbo(model, c))


def test_loss_is_the_weighted_masked_nll_over_all_tokens():
    """loss = sum_b w_b sum_{i masked} -log p / (B L), with w = 1/t, recomputed by hand."""
    model = tiny_model(vocab_size=V)
    objective = MaskedDiffusion()
    batch = torch.randint(4, V, (4, 17), generator=torch.Generator().manual_seed(0))
    out = objective.loss(model, batch, torch.Generator().manual_seed(5))
    c = objective.corrupt(batch, V, torch.Generator().manual_seed(5))
    logits = model(c.inputs, attention_mode="bidirectional").logits
    logits[..., MASK_ID] = float("-inf")
    nll = -torch.log_softmax(logits, -1).gather(-1, batch[:, :-1, None]).squeeze(-1)
    expected = ((nll * (c.inputs == MASK_ID)).sum(1) / c.t).sum() / (4 * 16)
    assert out.n_tokens == 4 * 16
    assert torch.allclose(out.loss, expected, rtol=1e-5)


# ---------------------------------------------------------------- the ELBO, exactly
def _mask_table(denoiser, x):
    """For every non-empty mask M of x: (|M|, sum_{i in M} -log p(x_i | x_{M^c}))."""
    L = len(x)
    rows = []
    for m in range(1, 2 ** L):
        chosen = torch.tensor([(m >> i) & 1 for i in range(L)], dtype=torch.bool)
        x_t = torch.where(chosen, torch.full_like(x, MASK_ID), x)[None]
        rows.append((int(chosen.sum()), float(masked_nll(denoiser(x_t).double(), x[None], chosen[None]).sum())))
    return rows


def _mdlm_expectation(table, L, eps):
    """E of the MDLM estimator with eps: (1/(1-eps)) int_eps^1 (1/t) sum_M m^|M| (1-m)^(L-|M|) nll_M dt, m = (1-eps)t."""
    t, w = np.polynomial.legendre.leggauss(200)
    t = eps + (1 - eps) * (t + 1) / 2
    w = w * (1 - eps) / 2
    m = (1 - eps) * t
    f = sum(nll * m ** k * (1 - m) ** (L - k) for k, nll in table)
    return float(np.sum(w * f / t) / (1 - eps))


@pytest.fixture(scope="module")
def tiny_denoiser():
    model = tiny_model(seed=3, vocab_size=V, block_size=8)
    objective = MaskedDiffusion()
    return model, objective, model_denoiser(model, objective)


def test_closed_form_equals_the_average_over_all_orders(tiny_denoiser):
    """Any conditionals (here: an untrained network's, which are inconsistent): eq. (1) = any-order AR average."""
    _, _, denoiser = tiny_denoiser
    for x in ([4, 7, 5], [6, 6, 4, 5], [5, 4, 7, 7, 6]):
        x = torch.tensor(x)
        assert math.isclose(exact_nelbo(denoiser, x), any_order_nll(denoiser, x), rel_tol=1e-9)


@pytest.mark.parametrize("estimator", ["mdlm", "exact_count"])
def test_monte_carlo_estimators_converge_to_the_closed_form(tiny_denoiser, estimator):
    model, objective, denoiser = tiny_denoiser
    x = torch.tensor([4, 7, 5, 6])
    exact = exact_nelbo(denoiser, x)
    table = _mask_table(denoiser, x)
    expectation = exact if estimator == "exact_count" else _mdlm_expectation(table, 4, objective.eps)
    assert abs(_mdlm_expectation(table, 4, 1e-7) - exact) < 1e-5 * exact  # eps -> 0: the closed form
    estimate = nelbo(model, objective, x[None], samples=20_000, estimator=estimator,
                     generator=torch.Generator().manual_seed(0))
    total, stderr = estimate.per_token * 4, estimate.stderr * 4
    assert abs(total - expectation) < 3 * stderr, (total, expectation, stderr)
    assert abs(total - exact) < 3 * stderr + abs(expectation - exact)
    assert stderr < 0.02 * exact  # enough draws that the test can tell a wrong weight


def test_exact_count_has_lower_variance_than_one_over_t(tiny_denoiser):
    model, objective, _ = tiny_denoiser
    x = torch.tensor([4, 7, 5, 6, 4, 6])[None]
    spread = {e: nelbo(model, objective, x, samples=4000, estimator=e).stderr for e in ("mdlm", "exact_count")}
    assert spread["exact_count"] < spread["mdlm"], spread


def _toy_joint():
    """A random joint distribution over 3 tokens from {4, 5, 6} and its exact conditionals."""
    g = torch.Generator().manual_seed(11)
    values = [4, 5, 6]
    sequences = list(itertools.product(values, repeat=3))
    p = torch.rand(len(sequences), generator=g, dtype=torch.float64) ** 3
    p /= p.sum()
    return sequences, p


def _true_denoiser(sequences, p):
    def denoise(x_t):
        out = torch.full((*x_t.shape, V), float("-inf"), dtype=torch.float64)
        for row in range(x_t.shape[0]):
            visible = [(i, int(v)) for i, v in enumerate(x_t[row]) if v != MASK_ID]
            consistent = [(s, float(q)) for s, q in zip(sequences, p) if all(s[i] == v for i, v in visible)]
            total = sum(q for _, q in consistent)
            for i in range(x_t.shape[1]):
                if x_t[row, i] != MASK_ID:
                    out[row, i, int(x_t[row, i])] = 0.0
                    continue
                for v in (4, 5, 6):
                    mass = sum(q for s, q in consistent if s[i] == v)
                    out[row, i, v] = math.log(mass / total) if mass > 0 else float("-inf")
        return out
    return denoise


def test_with_the_true_conditionals_the_nelbo_is_minus_log_p_and_its_mean_the_entropy():
    sequences, p = _toy_joint()
    denoiser = _true_denoiser(sequences, p)
    nelbos = []
    for s, q in zip(sequences, p):
        value = exact_nelbo(denoiser, torch.tensor(s))
        assert math.isclose(value, -math.log(float(q)), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(any_order_nll(denoiser, torch.tensor(s)), value, rel_tol=1e-9)
        nelbos.append(value)
    entropy = float(-(p * p.log()).sum())
    assert math.isclose(float((p * torch.tensor(nelbos, dtype=torch.float64)).sum()), entropy, rel_tol=1e-9)


def test_length_one_gives_the_plain_nll_of_that_token(tiny_denoiser):
    model, objective, denoiser = tiny_denoiser
    x = torch.tensor([6])
    direct = -float(denoiser(torch.tensor([[MASK_ID]]))[0, 0, 6])
    assert math.isclose(exact_nelbo(denoiser, x), direct, rel_tol=1e-9)
    assert math.isclose(any_order_nll(denoiser, x), direct, rel_tol=1e-9)
    # every estimator masks the single token with weight 1 (exact_count) or 1/t with P(mask) = t: same mean
    estimate = nelbo(model, objective, x[None], samples=64, estimator="exact_count")
    assert math.isclose(estimate.per_token, direct, rel_tol=1e-5) and estimate.stderr < 1e-6


def test_a_prompt_is_never_masked_and_the_bound_covers_the_rest(tiny_denoiser):
    model, objective, _ = tiny_denoiser
    x0 = torch.randint(4, V, (64, 8), generator=torch.Generator().manual_seed(0))
    maskable = (torch.arange(8) >= 3).expand_as(x0)
    for estimator in ("mdlm", "exact_count"):
        c = objective.mask(x0, torch.Generator().manual_seed(1), maskable, estimator=estimator)
        assert torch.all(c.inputs[:, :3] == x0[:, :3]) and bool((c.inputs[:, 3:] == MASK_ID).any())
    assert nelbo(model, objective, x0[:4], samples=8, prompt_len=3).scored_tokens == 5
    with pytest.raises(ValueError, match="prompt_len"):
        nelbo(model, objective, x0[:4], samples=8, prompt_len=8)


# ---------------------------------------------------------------- answers
def test_a_one_token_answer_is_scored_exactly(tiny_denoiser):
    model, objective, denoiser = tiny_denoiser
    before, after = [4, 5], [6]
    for answer in (4, 7):
        direct = float(denoiser(torch.tensor([[4, 5, MASK_ID, 6]]))[0, 2, answer])
        assert math.isclose(answer_log_likelihood(model, objective, before, [answer], after), direct, rel_tol=1e-6)
    best, scores = choose_answer(model, objective, before, [[4], [5], [6], [7]], after)
    assert best == int(np.argmax(scores)) and len(scores) == 4


def test_a_longer_answer_is_a_lower_bound_converging_to_the_exact_elbo(tiny_denoiser):
    """The answer's ELBO given its context: the exact value is eq. (1) restricted to masks inside the answer."""
    model, objective, denoiser = tiny_denoiser
    before, answer = [4, 5, 6], [7, 4, 6]
    sequence = torch.tensor(before + answer)
    exact = 0.0
    for m in range(1, 8):
        chosen = torch.tensor([False] * 3 + [(m >> i) & 1 == 1 for i in range(3)])
        k = int(chosen.sum())
        x_t = torch.where(chosen, torch.full_like(sequence, MASK_ID), sequence)[None]
        nll = float(masked_nll(denoiser(x_t).double(), sequence[None], chosen[None]).sum())
        exact += math.factorial(k - 1) * math.factorial(3 - k) / math.factorial(3) * nll
    estimate = answer_log_likelihood(model, objective, before, answer, samples=3000)
    assert abs(estimate + exact) < 0.02 * exact, (estimate, -exact)
    with pytest.raises(ValueError, match="empty"):
        answer_log_likelihood(model, objective, before, [])


# ---------------------------------------------------------------- training
class ShiftedMarkov:
    """The order-1 Markov chain of helpers.py with ids moved past the 4 special ones (no [MASK] in clean text)."""

    def __init__(self, vocab_size=28):
        self.inner = markov_data(vocab_size=vocab_size, branching=2)
        self.tokenizer = None

    def check_block(self, length):
        self.inner.check_block(length)

    def get_batch(self, split, batch_size, length, generator=None):
        return self.inner.get_batch(split, batch_size, length, generator) + 4


def test_clean_data_holding_the_mask_id_is_refused():
    with pytest.raises(ValueError, match="contain the \\[MASK\\] id"):
        MaskedDiffusion().mask(torch.tensor([[4, 5, MASK_ID, 6]]))


def test_a_trained_tiny_model_has_a_finite_bound_that_falls():
    """A 2-layer encoder on an order-1 Markov chain (28 tokens, 2 successors: entropy rate ln 2 per token)."""
    data = ShiftedMarkov()
    trainer = Trainer(tiny_model(position="rope"), MaskedDiffusion(), data,
                      train_config(steps=300, batch_size=32, lr=1e-2, min_lr=1e-3, warmup_steps=20, eval_every=100,
                                   eval_batches=8), callbacks=[])
    before = trainer.evaluate(batches=8)
    trainer.fit()
    bounds = [r["val_loss"] for r in trainer.history["eval"]]
    assert all(math.isfinite(b) for b in bounds)
    assert before > math.log(28) - 0.3 and bounds[-1] < bounds[0] < before, (before, bounds)
    assert bounds[-1] < 2.4, bounds  # well below ln 28 = 3.33 (about the unigram entropy): it uses the context
    windows = data.get_batch("val", 16, 16, torch.Generator().manual_seed(0))
    estimate = nelbo(trainer.model, trainer.objective, windows, samples=8)
    assert math.isfinite(estimate.per_token) and estimate.per_token > math.log(2) - 3 * estimate.stderr


def test_time_conditioning_is_owned_trained_and_required_at_sampling():
    data = ShiftedMarkov()
    objective = make_objective("mdlm", time_conditioning=True)
    trainer = Trainer(tiny_model(), objective, data, train_config(steps=3), callbacks=[])
    before = [p.detach().clone() for p in objective.time_embedding.parameters()]
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, objective.time_embedding.parameters()))
    with pytest.raises(ValueError, match="time-conditioned"):
        objective.log_probs(trainer.model, torch.full((1, 4), MASK_ID))


@pytest.mark.parametrize("options, named", [
    ({"eps": 1.0}, "eps"), ({"eps": -0.1}, "eps"), ({"estimator": "elbo"}, "estimator"),
    ({"antithetic": "yes"}, "antithetic"), ({"time_conditioning": 1}, "time_conditioning")])
def test_bad_options_get_one_clear_error(options, named):
    with pytest.raises(ValueError, match=named):
        MaskedDiffusion(**options)


def test_a_time_conditioned_run_resumes_bitwise(tmp_path):
    """The time embedding the objective owns is checkpointed and resumed: 3 + 2 steps equal 5 steps."""
    data = ShiftedMarkov()
    config = train_config(steps=5)

    def fresh():
        return Trainer(tiny_model(position="rope"), MaskedDiffusion(time_conditioning=True), data, config,
                       callbacks=[], out_dir=tmp_path / "run")

    straight = fresh()
    straight.fit()
    first = fresh()
    first.fit(steps=3)
    first.save_checkpoint()
    resumed = Trainer.resume(tmp_path / "run", data=data, callbacks=[])
    assert resumed.objective.time_conditioning and resumed.step == 3
    resumed.fit()
    for a, b in zip([*straight.model.parameters(), *straight.objective.parameters()],
                    [*resumed.model.parameters(), *resumed.objective.parameters()]):
        assert torch.equal(a, b)
