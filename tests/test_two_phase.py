"""CLM then MLM on the same weights: phase boundaries, delegation, exact resume across the switch, errors."""
import copy
import json

import pytest
import torch
from torch import nn

from helpers import markov_data, model_state, single_thread, states_equal, tiny_model, train_config  # noqa: F401
import workbench.objectives.masked_lm  # noqa: F401 (registers "mlm")
from workbench.objectives import CausalLM, make_objective, objective_from_dict
from workbench.objectives.base import OBJECTIVES, Objective, scored_cross_entropy
from workbench.objectives.masked_lm import MaskedLM
from workbench.objectives.two_phase import TwoPhase, switch_step
from workbench.train import Trainer


@OBJECTIVES.register("test_two_phase_logit_bias")
class LogitBias(Objective):
    """CLM plus a learned bias on every logit, a parameter the objective owns (built in setup)."""

    name = "test_two_phase_logit_bias"
    attention_mode = "causal"

    def __init__(self, flops_factor: int = 1):
        super().__init__(flops_factor=flops_factor)
        self.flops_factor = flops_factor
        self.setup_seeds = []

    def setup(self, model, seed=0):
        self.setup_seeds.append(seed)
        self.bias = nn.Parameter(torch.zeros(model.config.vocab_size))

    def loss(self, model, batch, generator=None):
        logits = model(batch[:, :-1]).logits + self.bias
        return scored_cross_entropy(logits, batch[:, 1:])

    def flops_per_token(self, model):
        return self.flops_factor * model.flops_per_token()


def phases(objective, total):
    out = []
    for step in range(total):
        objective.set_progress(step, total)
        out.append(objective.phase)
    return out


# ---------------------------------------------------------------- which phase
@pytest.mark.parametrize("total, switch_at, boundary", [
    (8, 0.5, 4), (10, 0.25, 3), (5, 0.5, 3), (100, 0.3, 30), (7, 0.75, 5), (3, 0.1, 0), (1, 0.5, 1), (4, 0.9, 4),
])
def test_phase_is_first_before_round_half_up_of_fraction_times_total(total, switch_at, boundary):
    # boundary = floor(switch_at * total + 1/2), worked out by hand: 2.5 -> 3 (Python's round gives 2)
    objective = TwoPhase(switch_at=switch_at)
    assert switch_step(switch_at, total) == boundary
    assert phases(objective, total) == [1] * boundary + [2] * (total - boundary)
    objective.set_progress(total + 3, total)  # training past the planned end stays in the second phase
    assert objective.phase == 2


@torch.no_grad()
def test_attention_mode_corruption_and_loss_follow_the_phase():
    objective = TwoPhase()
    model = tiny_model()
    batch = torch.randint(4, 32, (3, 17), generator=torch.Generator().manual_seed(0))
    assert objective.phase == 1 and objective.attention_mode == "causal"  # before any set_progress

    objective.set_progress(3, 8)
    assert objective.attention_mode == "causal"
    assert objective.corrupt(batch, 32).attention_mode == "causal"
    out = objective.loss(model, batch, torch.Generator().manual_seed(1))
    assert float(out.loss) == float(CausalLM().loss(model, batch).loss)
    assert out.metrics["phase"] == 1

    objective.set_progress(4, 8)
    assert objective.attention_mode == "bidirectional"
    assert objective.corrupt(batch, 32, torch.Generator().manual_seed(1)).attention_mode == "bidirectional"
    out = objective.loss(model, batch, torch.Generator().manual_seed(1))
    mlm = MaskedLM(mask_ratio=0.3).loss(model, batch, torch.Generator().manual_seed(1))
    assert float(out.loss) == float(mlm.loss) and out.n_tokens == mlm.n_tokens
    assert out.metrics == {**mlm.metrics, "phase": 2}

    objective.set_progress(2, 8)  # back to the first phase: the phase is a function of the step alone
    assert objective.attention_mode == "causal"


def test_options_round_trip_through_json_and_defaults():
    objective = make_objective("clm_then_mlm")
    assert objective.to_dict() == {"name": "clm_then_mlm", "options": {
        "first": "clm", "second": "mlm", "switch_at": 0.5, "first_options": {}, "second_options": {"mask_ratio": 0.3}}}
    assert objective.second_phase.mask_ratio == 0.3
    custom = make_objective("clm_then_mlm", switch_at=0.25, second_options={"mask_ratio": 0.4, "strategy": "span"})
    rebuilt = objective_from_dict(json.loads(json.dumps(custom.to_dict())))
    assert rebuilt.to_dict() == custom.to_dict()
    assert (rebuilt.switch_at, rebuilt.second_phase.mask_ratio, rebuilt.second_phase.strategy) == (0.25, 0.4, "span")
    # a second objective other than mlm gets no mask_ratio by default
    assert TwoPhase(second="clm").options["second_options"] == {}


def test_phases_are_submodules_set_up_trained_and_saved(tmp_path):
    objective = TwoPhase(first="test_two_phase_logit_bias", first_options={"flops_factor": 3})
    assert dict(objective.named_children()).keys() == {"first_phase", "second_phase"}
    trainer = Trainer(tiny_model(), objective, markov_data(), train_config(steps=4), callbacks=[], out_dir=tmp_path)
    assert objective.first_phase.setup_seeds == [trainer.config.seed]
    bias = objective.first_phase.bias
    assert any(p is bias for p in trainer.trained_parameters())
    assert trainer.flops_per_token == 3 * trainer.model.flops_per_token()  # the max of the two phases
    trainer.fit(steps=2)  # phase 1: the owned bias is trained
    assert float(bias.detach().abs().sum()) > 0
    trained = bias.detach().clone()
    directory = trainer.save_checkpoint()
    resumed = Trainer.resume(tmp_path, data=markov_data(), callbacks=[])
    assert isinstance(resumed.objective, TwoPhase) and (directory / "objective.safetensors").is_file()
    assert torch.equal(resumed.objective.first_phase.bias.detach(), trained)


# ---------------------------------------------------------------- with the Trainer
def make_trainer(out_dir=None):
    return Trainer(tiny_model(dropout=0.1), make_objective("clm_then_mlm"), markov_data(),
                   train_config(steps=8), callbacks=[], out_dir=out_dir)


def history(trainer, key):
    return [record[key] for record in trainer.history["train"]]


@pytest.mark.parametrize("saved_at", [3, 5])  # before and after the switch at step 4
def test_resume_before_or_after_the_switch_repeats_the_run_exactly(tmp_path, saved_at):
    straight = make_trainer()
    straight.fit()

    first = make_trainer(out_dir=tmp_path)
    first.fit(steps=saved_at)
    first.save_checkpoint()
    del first
    resumed = Trainer.resume(tmp_path, data=markov_data(), callbacks=[])  # objective rebuilt from the checkpoint
    assert isinstance(resumed.objective, TwoPhase) and resumed.step == saved_at
    resumed.fit()
    assert history(resumed, "loss") == history(straight, "loss")  # exact, not approximate
    assert history(resumed, "phase") == history(straight, "phase") == [1] * 4 + [2] * 4
    assert states_equal(model_state(resumed.model), model_state(straight.model))


def test_phase_two_is_the_masked_loss_of_the_weights_phase_one_left():
    trainer = Trainer(tiny_model(), make_objective("clm_then_mlm"), markov_data(), train_config(steps=8),
                      callbacks=[])
    trainer.fit(steps=4)
    # replay step 5's draws: the batch, then the masks, from a copy of the trainer's generator
    generator = torch.Generator()
    generator.set_state(trainer.generator.get_state())
    batch = markov_data().get_batch("train", 8, 17, generator)
    after_phase_one = copy.deepcopy(trainer.model).train()
    with torch.no_grad():
        expected = float(MaskedLM(mask_ratio=0.3).loss(after_phase_one, batch, generator).loss)
        as_clm = float(CausalLM().loss(after_phase_one, batch).loss)
    trainer.fit()
    losses = history(trainer, "loss")
    assert history(trainer, "phase") == [1, 1, 1, 1, 2, 2, 2, 2]
    assert losses[4] == expected
    assert abs(losses[4] - as_clm) > 0.05
    # CLM's loss falls during phase 1; the switch to a new task makes it jump up although training goes on
    assert all(later < earlier for earlier, later in zip(losses[:3], losses[1:4]))
    assert losses[4] > losses[3] + 0.05


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("switch_at", [0, 0.0, 1, 1.2, -0.5, float("nan"), True, "0.5", None])
def test_switch_at_outside_the_open_unit_interval_is_refused(switch_at):
    with pytest.raises(ValueError) as info:
        make_objective("clm_then_mlm", switch_at=switch_at)
    assert "switch_at" in str(info.value) and repr(switch_at) in str(info.value)
    assert "between 0 and 1" in str(info.value)


@pytest.mark.parametrize("options, field, bad", [
    (dict(first="nope"), "first", "'nope'"),
    (dict(second="masked"), "second", "'masked'"),
    (dict(first=3), "first", "3"),
    (dict(second_options={"ratio": 0.3}), "second_options", "'ratio'"),
    (dict(second_options={"mask_ratio": 1.5}), "second_options", "1.5"),
    (dict(first_options="mask_ratio=0.3"), "first_options", "'mask_ratio=0.3'"),
])
def test_bad_sub_objectives_and_options_are_refused_by_name(options, field, bad):
    with pytest.raises(ValueError) as info:
        make_objective("clm_then_mlm", **options)
    message = str(info.value)
    assert f"clm_then_mlm.{field}=" in message and bad in message
    if field in ("first", "second"):
        assert "'clm'" in message and "'mlm'" in message  # lists what is registered
