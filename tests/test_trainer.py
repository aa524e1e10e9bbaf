"""The Trainer: learning, schedule, accumulation, determinism, exact resume, stop button, NaN, eval."""
import io
import math

import pytest
import torch

from helpers import (FixedBatches, WrappedObjective, markov_data, model_state, single_thread,  # noqa: F401
                     states_equal, tiny_model, train_config)
from workbench.objectives import CausalLM
from workbench.objectives.base import ObjectiveOutput
from workbench.train import BrokenUpdateError, Callback, NonFiniteLossError, PrintLogger, Trainer, warmup_cosine


def make_trainer(model_changes=None, objective=None, data=None, callbacks=(), out_dir=None, **train_changes):
    model = tiny_model(seed=0, **(model_changes or {}))
    return Trainer(model, objective or CausalLM(), data or markov_data(), train_config(**train_changes),
                   callbacks=list(callbacks), out_dir=out_dir)


def losses(trainer) -> list[float]:
    return [record["loss"] for record in trainer.history["train"]]


class Snapshots(Callback):
    """Keeps a copy of the weights after every step, keyed by step."""

    def __init__(self):
        self.states = {}

    def on_train_begin(self, trainer):
        self.states.setdefault(trainer.step, model_state(trainer.model))

    def on_step(self, trainer, record):
        self.states[record["step"]] = model_state(trainer.model)


# ---------------------------------------------------------------- learning
def test_tiny_model_learns_the_markov_chain():
    data = markov_data()
    trainer = make_trainer(dict(n_layer=1), steps=150, batch_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=10)
    history = trainer.fit()
    first = history["train"][0]["loss"]
    assert first == pytest.approx(math.log(32), abs=0.15)  # untrained: uniform over the vocabulary
    # The source's entropy rate (ln 2 = 0.69 nats) is the floor; ln 32 = 3.47 is where training starts.
    bound = data.entropy_rate + 0.35
    final = sum(losses(trainer)[-10:]) / 10
    assert final < bound, f"train loss {final:.3f} did not fall below {bound:.3f}"
    val = trainer.evaluate("val")
    assert data.entropy_rate - 0.1 < val < bound  # below the floor would mean the model sees its targets
    assert trainer.step == 150 and len(history["train"]) == 150
    assert history["train"][-1]["tokens"] == 150 * 16 * 16


# ---------------------------------------------------------------- schedule
def test_warmup_cosine_values():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110)
    assert warmup_cosine(0, **kw) == pytest.approx(1e-4)          # (0 + 1) / 10 of the peak
    assert warmup_cosine(4, **kw) == pytest.approx(5e-4)
    assert warmup_cosine(9, **kw) == pytest.approx(1e-3)          # warmup ends at the peak
    assert warmup_cosine(10, **kw) == pytest.approx(1e-3)         # cosine starts at the peak
    assert warmup_cosine(60, **kw) == pytest.approx(5.5e-4)       # halfway: (lr + min_lr) / 2
    assert warmup_cosine(35, **kw) == pytest.approx(1e-4 + 9e-4 * (1 + math.cos(math.pi / 4)) / 2)
    assert warmup_cosine(110, **kw) == pytest.approx(1e-4)
    assert warmup_cosine(500, **kw) == pytest.approx(1e-4)
    values = [warmup_cosine(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert warmup_cosine(0, lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(1e-3)


def test_trainer_follows_the_schedule():
    trainer = make_trainer(steps=6, warmup_steps=2, lr=1e-2, min_lr=1e-3)
    trainer.fit()
    expected = [warmup_cosine(s, lr=1e-2, min_lr=1e-3, warmup_steps=2, total_steps=6) for s in range(6)]
    assert [r["lr"] for r in trainer.history["train"]] == pytest.approx(expected)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected[-1])


# ---------------------------------------------------------------- accumulation and determinism
# Tolerances for comparing two runs that compute the same math in a different order (4 rows x 2
# micro-batches vs 8 rows at once). Every gradient entry is a sum over the batch's 128 token positions
# (and over the hidden units of the layers behind it); reordering a float32 sum of n terms moves it by
# up to ~n * eps * sum(|terms|), eps = 2**-23 = 1.2e-7, and which order runs depends on the CPU (AVX-512,
# AVX2 or scalar kernels, thread count). Measured: <= 5e-7 of each tensor's largest entry (about 4 eps)
# with ATEN_CPU_CAPABILITY=avx512/avx2/default, 1 or 2 threads. GRAD_RTOL leaves a 200x margin and is
# still thousands of times below what broken accumulation does: forgetting to divide by grad_accum
# doubles every gradient (error 1.0 of the scale), using one micro-batch changes it by O(1) too.
GRAD_RTOL = 1e-4   # of each tensor's largest |gradient|, not of each entry: entries near 0 have no
                   # meaningful relative precision (they are differences of much larger terms)
LOSS_RTOL = 1e-5   # a mean of 128 float32 token losses vs a mean of two means of 64: ~n * eps worst case


def test_grad_accumulation_matches_one_big_batch():
    rows = markov_data().get_batch("train", 8, 17, torch.Generator().manual_seed(0))
    runs = []
    for batch_size, accum in ((4, 2), (8, 1)):
        trainer = make_trainer(data=FixedBatches(rows), steps=1, batch_size=batch_size, grad_accum=accum,
                               grad_clip=0.0)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        grads = []
        trainer.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: grads.append([p.grad.clone() for p in trainer.model.parameters()]))
        trainer.fit()
        assert len(grads) == 1, "one optimizer step per training step, after all micro-batches"
        runs.append((trainer, before, grads[0]))
    (small, _, small_grads), (big, _, big_grads) = runs
    names = [name for name, _ in big.model.named_parameters()]

    # 1. What accumulation promises: the gradient the optimizer sees is the big batch's gradient.
    for name, a, b in zip(names, small_grads, big_grads):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= GRAD_RTOL * scale, name
    small_record, big_record = small.history["train"][0], big.history["train"][0]
    assert small_record["loss"] == pytest.approx(big_record["loss"], rel=LOSS_RTOL)
    # the logged norm is the accumulated gradient's (same machine, same numbers: rounding only), and the
    # two runs' norms differ by at most the norm of their difference (triangle inequality)
    for record, grads in ((small_record, small_grads), (big_record, big_grads)):
        assert record["grad_norm"] == pytest.approx(float(torch.cat([g.flatten() for g in grads]).norm()),
                                                     rel=1e-5)
    difference = float(torch.cat([(a - b).flatten() for a, b in zip(small_grads, big_grads)]).norm())
    assert abs(small_record["grad_norm"] - big_record["grad_norm"]) <= \
        difference + 1e-5 * big_record["grad_norm"]
    assert small.tokens_seen == big.tokens_seen == 8 * 16

    # 2. Each run took one AdamW step from exactly the gradient compared above. Do NOT compare the two
    # runs' weights entry by entry: at step 1, m_hat = g and v_hat = g^2, so AdamW moves each weight by
    #     lr * g / (|g| + eps_adam)   (eps_adam = 1e-8),
    # which is lr * sign(g) for every |g| >> 1e-8. Some gradients are only rounding noise around 0 (the
    # key bias's is exactly 0 in exact arithmetic: softmax ignores a constant added to every score), and
    # noise of either sign moves the weight by a full +-lr, so two correct runs can differ by 2 * lr in
    # such entries. Instead check each run against the formula applied to its own gradient (the same
    # numbers on the same machine: only rounding of the step itself, ~eps * lr, can differ) ...
    lr = small_record["lr"]
    assert lr == big_record["lr"]
    config = small.config
    for trainer, before, grads in runs:
        assert int(trainer.optimizer.state[trainer.model.token_embedding.weight]["step"]) == 1
        for name, w0, g, w in zip(names, before, grads, trainer.model.parameters()):
            decay = config.weight_decay if w0.dim() >= 2 else 0.0
            expected = w0 * (1 - lr * decay) - lr * g / (g.abs() + 1e-8)
            torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=1e-4 * lr, msg=name)
    # ... and compare the runs directly where the step is a smooth function of the gradient. Where
    # |g_big| > 10x the gradient tolerance, g_small (within the tolerance, checked above) has the same
    # sign, and by the mean value theorem the steps differ by at most
    #     lr * |d/dg (g / (|g| + eps_adam))| * |dg| <= lr * eps_adam * |dg| / min(|g_small|, |g_big|)^2,
    # negligible unless |g| is itself tiny; add the rounding of the step (as above) and compare.
    checked = total = 0
    for name, a, b, ga, gb in zip(names, small.model.parameters(), big.model.parameters(),
                                  small_grads, big_grads):
        smooth = gb.abs() > 10 * GRAD_RTOL * float(gb.abs().max())
        smallest = torch.minimum(ga.abs(), gb.abs())[smooth]
        allowed = (lr * 1e-8 * (ga - gb).abs()[smooth] / smallest ** 2
                   + 1e-4 * lr + 1e-6 * b.detach().abs()[smooth])
        assert bool(((a.detach() - b.detach()).abs()[smooth] <= allowed).all()), name
        checked += int(smooth.sum())
        total += gb.numel()
    assert checked > 0.9 * total  # 93% of the weights here: the comparison cannot pass vacuously


def test_same_seed_same_losses_other_seed_other_losses():
    # all built before any is fitted: each trainer keeps its own dropout RNG
    runs = [make_trainer(dict(dropout=0.1), steps=8, seed=seed) for seed in (7, 7, 8)]
    for trainer in runs:
        trainer.fit()
    assert losses(runs[0]) == losses(runs[1])
    assert states_equal(model_state(runs[0].model), model_state(runs[1].model))
    assert losses(runs[0]) != losses(runs[2])


def test_trainers_fitted_in_turns_match_trainers_fitted_alone():
    """A notebook comparing two runs live alternates fit(steps=k) calls; neither run may notice."""
    alone = make_trainer(dict(dropout=0.1), steps=6)
    alone.fit()
    a = make_trainer(dict(dropout=0.1), steps=6)
    b = make_trainer(dict(dropout=0.3), steps=6, seed=99)
    for _ in range(3):
        a.fit(steps=2)
        b.fit(steps=2)
    assert losses(a) == losses(alone)
    assert states_equal(model_state(a.model), model_state(alone.model))


def test_fit_leaves_the_global_rng_alone():
    trainer = make_trainer(dict(dropout=0.1), steps=3)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    trainer.fit()
    assert torch.equal(torch.rand(3), expected)


def test_fit_with_steps_continues():
    trainer = make_trainer(steps=10)
    trainer.fit(steps=3)
    assert trainer.step == 3
    trainer.fit(steps=2)
    assert trainer.step == 5
    trainer.fit()
    assert trainer.step == 10 and [r["step"] for r in trainer.history["train"]] == list(range(1, 11))


# ---------------------------------------------------------------- exact resume
def test_exact_resume(tmp_path):
    settings = dict(model_changes=dict(dropout=0.2), steps=10, batch_size=4, grad_accum=2)
    straight = make_trainer(**settings)
    straight.fit()

    first_half = make_trainer(**settings, out_dir=tmp_path)
    first_half.fit(steps=5)
    first_half.save_checkpoint()
    del first_half

    resumed = Trainer.resume(tmp_path, CausalLM(), markov_data(), callbacks=[])
    assert resumed.step == 5
    resumed.fit()
    assert losses(resumed) == losses(straight)  # exact, not approximate
    assert [r["grad_norm"] for r in resumed.history["train"]] == [r["grad_norm"] for r in straight.history["train"]]
    assert states_equal(model_state(resumed.model), model_state(straight.model))
    assert resumed.tokens_seen == straight.tokens_seen

    # control: the restored RNG state matters (dropout is on), so the equality above is not vacuous
    def reseed(call, model, out):
        if call == 1:
            torch.manual_seed(12345)  # disturb the dropout stream in the middle of the first resumed step

    control = Trainer.resume(tmp_path, WrappedObjective(CausalLM(), reseed), markov_data(), callbacks=[])
    control.fit()
    assert losses(control)[:5] == losses(straight)[:5]
    assert losses(control)[5:] != losses(straight)[5:]


# ---------------------------------------------------------------- stop button
def test_keyboard_interrupt_mid_step_rolls_back_and_fit_continues(capsys):
    settings = dict(model_changes=dict(dropout=0.2), steps=8, batch_size=4, grad_accum=2)
    reference = make_trainer(**settings)
    reference.fit()

    def interrupt(call, model, out):
        if call == 8:  # second micro-batch of step 4: step 3 done, step 4 half-way, grads accumulated
            raise KeyboardInterrupt

    snapshots = Snapshots()
    trainer = make_trainer(**settings, objective=WrappedObjective(CausalLM(), interrupt), callbacks=[snapshots])
    history = trainer.fit()
    assert "Interrupted after step 3" in capsys.readouterr().out
    assert trainer.step == 3 and trainer.interrupted
    assert losses(trainer) == losses(reference)[:3] and history is trainer.history
    assert all(p.grad is None for p in trainer.model.parameters())
    assert states_equal(model_state(trainer.model), snapshots.states[3])
    assert int(trainer.optimizer.state[trainer.model.token_embedding.weight]["step"]) == 3

    trainer.fit()
    assert trainer.step == 8 and not trainer.interrupted
    assert losses(trainer) == losses(reference)
    assert states_equal(model_state(trainer.model), model_state(reference.model))


# ---------------------------------------------------------------- non-finite losses
def test_nan_loss_stops_with_the_last_good_weights():
    def poison(call, model, out):
        if call == 5:
            return ObjectiveOutput(loss=out.loss * float("nan"), n_tokens=out.n_tokens)

    snapshots = Snapshots()
    trainer = make_trainer(objective=WrappedObjective(CausalLM(), poison), callbacks=[snapshots], steps=10)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    # steps count from 1 everywhere: step 5 failed, the state after step 4 is kept
    assert "loss became nan at step 5" in message and "state after step 4" in message and "Lower lr" in message
    assert trainer.step == 4 and len(trainer.history["train"]) == 4
    assert states_equal(model_state(trainer.model), snapshots.states[4])
    assert not states_equal(snapshots.states[4], snapshots.states[3])
    assert all(p.grad is None for p in trainer.model.parameters())


def test_non_finite_gradient_stops_before_the_update():
    def poison_gradient(call, model, out):
        if call == 3:
            weight = model.token_embedding.weight
            # value 0, gradient 0 * inf = nan: the loss itself stays finite
            return ObjectiveOutput(loss=out.loss + 0 * torch.sqrt(weight - weight.detach()).sum(),
                                   n_tokens=out.n_tokens)

    snapshots = Snapshots()
    trainer = make_trainer(objective=WrappedObjective(CausalLM(), poison_gradient), callbacks=[snapshots],
                           steps=10, grad_clip=0.0)
    with pytest.raises(NonFiniteLossError, match="gradient norm became nan at step 3.*state after step 2"):
        trainer.fit()
    assert trainer.step == 2
    assert states_equal(model_state(trainer.model), snapshots.states[2])


@pytest.mark.parametrize("lr, weight_decay", [(1e39, 0.0), (1e38, 0.0), (1e38, 100.0)])
def test_an_update_that_overflows_float32_stops_before_it_starts(lr, weight_decay):
    """lr = 1e39 used to raise inside AdamW after the moments had moved (weights half updated, step still 0)."""
    trainer = make_trainer(steps=3, lr=lr, min_lr=0.0, warmup_steps=0, weight_decay=weight_decay)
    before = model_state(trainer.model)
    with pytest.raises(NonFiniteLossError, match=r"update of step 1 would overflow.*state after step 0\. Lower lr"):
        trainer.fit()
    assert trainer.step == 0 and trainer.history["train"] == [] and not trainer.optimizer.state
    assert states_equal(model_state(trainer.model), before)
    assert all(p.grad is None for p in trainer.model.parameters())


def test_an_optimizer_failing_mid_update_blocks_saving_and_training(tmp_path):
    trainer = make_trainer(steps=4, out_dir=tmp_path / "run")
    trainer.fit(steps=1)
    trainer.save_checkpoint()
    good = model_state(trainer.model)
    real_step = trainer.optimizer.step

    def half_step(*args, **kwargs):
        real_step(*args, **kwargs)  # the update happened, then something failed
        raise RuntimeError("device lost")

    trainer.optimizer.step = half_step
    with pytest.raises(BrokenUpdateError, match="half-way through the update of step 2.*device lost"):
        trainer.fit()
    trainer.optimizer.step = real_step
    for action in (trainer.fit, trainer.save_checkpoint):
        with pytest.raises(BrokenUpdateError, match="reload the last checkpoint"):
            action()
    assert [p.name for p in sorted((tmp_path / "run").glob("step-*"))] == ["step-000001"]
    trainer.load_checkpoint(tmp_path / "run")  # reloading makes it usable again
    assert states_equal(model_state(trainer.model), good)
    trainer.fit()
    assert trainer.step == 4


@pytest.mark.parametrize("steps", [-5, "3", 2.0, True, None])
def test_fit_rejects_a_step_count_that_is_not_a_whole_number(steps):
    trainer = make_trainer(steps=3)
    if steps is None:
        trainer.fit(steps=0)  # zero more steps is allowed and does nothing
        assert trainer.step == 0
        return
    with pytest.raises(ValueError, match=rf"Trainer\.fit\.steps={steps!r} is invalid"):
        trainer.fit(steps=steps)
    assert trainer.step == 0


# ---------------------------------------------------------------- evaluation and callbacks
def test_evaluate_is_repeatable_and_leaves_training_rng_alone():
    trainer = make_trainer(dict(dropout=0.1), steps=3)
    trainer.fit()
    data_state, torch_state = trainer.generator.get_state(), torch.get_rng_state()
    first = trainer.evaluate()
    assert trainer.evaluate() == first
    assert torch.equal(trainer.generator.get_state(), data_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert trainer.model.training  # fit() leaves train mode; evaluate() restored it
    trainer.model.eval()
    trainer.evaluate()
    assert not trainer.model.training
    assert trainer.evaluate(batches=1) != first  # a different number of batches is a different estimate


def test_periodic_eval_does_not_change_training():
    with_eval = make_trainer(dict(dropout=0.1), steps=10, eval_every=3)
    without = make_trainer(dict(dropout=0.1), steps=10, eval_every=0)
    with_eval.fit()
    without.fit()
    assert losses(with_eval) == losses(without)
    assert [r["step"] for r in with_eval.history["eval"]] == [3, 6, 9, 10]
    assert without.history["eval"] == []
    record = with_eval.history["eval"][0]
    assert record["train_loss"] == pytest.approx(sum(losses(with_eval)[:3]) / 3)


def test_callbacks_receive_steps_and_evals():
    class Recorder(Callback):
        def __init__(self):
            self.events = []

        def on_train_begin(self, trainer):
            self.events.append(("begin", trainer.step))

        def on_step(self, trainer, record):
            self.events.append(("step", record["step"]))

        def on_eval(self, trainer, record):
            self.events.append(("eval", record["step"], round(record["val_loss"], 6)))

        def on_train_end(self, trainer):
            self.events.append(("end", trainer.step))

    recorder = Recorder()
    trainer = make_trainer(steps=4, eval_every=2, callbacks=[recorder])
    trainer.fit()
    kinds = [e[:2] for e in recorder.events]
    assert kinds == [("begin", 0), ("step", 1), ("step", 2), ("eval", 2), ("step", 3), ("step", 4), ("eval", 4),
                     ("end", 4)]
    assert recorder.events[3][2] == round(trainer.history["eval"][0]["val_loss"], 6)


def test_print_logger_reports_val_loss():
    stream = io.StringIO()
    trainer = make_trainer(steps=4, eval_every=2, callbacks=[PrintLogger(every=1, stream=stream)])
    trainer.fit()
    text = stream.getvalue()
    assert text.count("val") == 2
    assert "train" in text and "loss" in text and "lr" in text
    assert len(text.strip().splitlines()) == 4 + 2


def test_data_too_short_for_the_block_raises():
    class Short:
        def check_block(self, length):
            raise ValueError(f"windows of {length} tokens do not fit")

    with pytest.raises(ValueError, match="17"):
        make_trainer(data=Short())


def test_save_checkpoint_without_a_place_raises():
    trainer = make_trainer(steps=1)
    with pytest.raises(ValueError, match="out_dir"):
        trainer.save_checkpoint()
