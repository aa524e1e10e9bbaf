"""The objective interface as the Trainer uses it: micro-batches weighted by scored tokens, parameters an
objective owns trained, checkpointed and resumed with the model, the objective rebuilt from a checkpoint."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import FixedBatches, markov_data, single_thread, tiny_model, train_config  # noqa: F401
from workbench.device import seeded
from workbench.objectives import OBJECTIVES, CausalLM, Corruption, Objective, make_objective, objective_from_dict
from workbench.objectives.base import IGNORE, scored_cross_entropy
from workbench.train import Trainer
from workbench.train import checkpoint as ckpt


class EvenTargets(Objective):
    """Next-token prediction scored only where the target id is even: the scored count varies per batch."""

    name = "even_targets"

    def corrupt(self, batch, vocab_size, generator=None):
        targets = batch[:, 1:].clone()
        targets[targets % 2 == 1] = IGNORE
        return Corruption(batch[:, :-1], targets, "causal")


@OBJECTIVES.register("test_probe_head")
class ProbeHead(Objective):
    """Owns a head (a Linear over the final hidden state) and shares the model's token embedding with it."""

    name = "test_probe_head"

    def __init__(self, width: int = 8):
        super().__init__(width=width)
        self.width = width

    def setup(self, model, seed=0):
        with seeded(seed):
            self.down = nn.Linear(model.config.d_model, self.width)
            self.up = nn.Linear(self.width, model.config.d_model)
        self.embedding = model.token_embedding  # shared: trained and saved once, as the model's

    def loss(self, model, batch, generator=None):
        hidden = model(batch[:, :-1], return_hidden_states=True).hidden_states[-1]
        logits = self.up(torch.tanh(self.down(hidden))) @ self.embedding.weight.T
        return scored_cross_entropy(logits, batch[:, 1:])


def captured_gradients(trainer):
    """Run one step and return the gradients the optimizer was about to apply (clipping off)."""
    seen = {}
    clip = trainer._clip_gradients

    def spy():
        seen.update({name: p.grad.detach().clone() for name, p in trainer.model.named_parameters()
                     if p.grad is not None})
        return clip()

    trainer._clip_gradients = spy
    trainer.fit(steps=1)
    return seen


def test_accumulated_micro_batches_are_weighted_by_scored_tokens():
    rows = markov_data().get_batch("train", 8, 17, torch.Generator().manual_seed(3))
    objective = EvenTargets()
    counts = [objective.corrupt(rows[i:i + 4], 32).scored.sum().item() for i in (0, 4)]
    assert counts[0] != counts[1]  # the case the weighting is for
    split = Trainer(tiny_model(), objective, FixedBatches(rows), train_config(batch_size=4, grad_accum=2,
                                                                                grad_clip=0.0), callbacks=[])
    grads = captured_gradients(split)

    model = tiny_model()  # the same initial weights: one big batch of all 8 rows
    big = objective.loss(model, rows)
    big.loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7)
    assert split.history["train"][0]["loss"] == pytest.approx(float(big.loss.detach()), rel=1e-6)

    # the unweighted mean of the two micro-batch means (what equal weights would give) is another gradient
    naive = tiny_model()
    for i in (0, 4):
        (objective.loss(naive, rows[i:i + 4]).loss / 2).backward()
    gap = max(float((naive.get_parameter(n).grad - p.grad).abs().max()) for n, p in model.named_parameters())
    assert gap > 1e-4


def test_a_micro_batch_without_scored_tokens_adds_nothing():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    out = scored_cross_entropy(logits, torch.full((2, 5), IGNORE))
    assert out.n_tokens == 0 and float(out.loss.detach()) == 0.0
    out.loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_parameters_the_objective_owns_are_trained_saved_and_resumed_exactly(tmp_path):
    settings = dict(steps=6, batch_size=4)

    def make(out_dir=None):
        return Trainer(tiny_model(dropout=0.1), ProbeHead(), markov_data(), train_config(**settings),
                       callbacks=[], out_dir=out_dir)

    straight = make()
    owned = [straight.objective.down.weight, straight.objective.up.weight]
    assert all(any(p is q for q in straight.trained_parameters()) for p in owned)
    # the shared embedding is optimized once
    assert sum(p is straight.model.token_embedding.weight for p in straight.trained_parameters()) == 1
    before = straight.objective.down.weight.detach().clone()
    straight.fit()
    assert not torch.equal(before, straight.objective.down.weight)  # the head was trained

    half = make(tmp_path)
    half.fit(steps=3)
    directory = half.save_checkpoint()
    saved = ckpt.read_tensors(directory, "objective.safetensors")
    assert set(saved) == {"down.weight", "down.bias", "up.weight", "up.bias"}  # the shared embedding is not here

    resumed = Trainer.resume(tmp_path, data=markov_data(), callbacks=[])  # objective rebuilt from the checkpoint
    assert isinstance(resumed.objective, ProbeHead)
    assert torch.equal(resumed.objective.down.weight, half.objective.down.weight)
    assert resumed.objective.embedding.weight is resumed.model.token_embedding.weight
    resumed.fit()
    assert [r["loss"] for r in resumed.history["train"]] == [r["loss"] for r in straight.history["train"]]
    assert torch.equal(resumed.objective.up.weight, straight.objective.up.weight)


def test_resuming_with_another_objective_or_options_is_refused(tmp_path):
    trainer = Trainer(tiny_model(), ProbeHead(width=8), markov_data(), train_config(steps=2, batch_size=2),
                      callbacks=[], out_dir=tmp_path)
    trainer.fit()
    trainer.save_checkpoint()
    other = Trainer(tiny_model(), ProbeHead(width=4), markov_data(), train_config(steps=2, batch_size=2), callbacks=[])
    state = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError, match="trained with the objective 'test_probe_head' \\(width=8\\)"):
        other.load_checkpoint(tmp_path)
    assert all(torch.equal(state[k], v) for k, v in other.model.state_dict().items())  # nothing changed
    with pytest.raises(ckpt.CheckpointError, match="not 'clm'"):
        Trainer.resume(tmp_path, CausalLM(), markov_data(), callbacks=[])


def test_objectives_round_trip_through_their_description():
    objective = make_objective("test_probe_head", width=5)
    again = objective_from_dict(objective.to_dict())
    assert again.to_dict() == {"name": "test_probe_head", "options": {"width": 5}}
    assert isinstance(objective_from_dict("clm"), CausalLM)  # checkpoints from before options existed
    with pytest.raises(ValueError, match="objective 'test_probe_head' has no option 'depth'; its options are: width"):
        make_objective("test_probe_head", depth=2)


def test_flops_are_counted_per_step_with_the_objective():
    trainer = Trainer(tiny_model(), CausalLM(), markov_data(), train_config(steps=2, batch_size=2), callbacks=[])
    trainer.fit()
    record = trainer.history["train"][-1]
    assert record["flops"] == record["tokens"] * trainer.model.flops_per_token()


def test_the_default_loss_runs_the_model_in_the_objectives_attention_mode():
    class Bidirectional(Objective):
        name = "bidirectional_copy"
        attention_mode = "bidirectional"

        def corrupt(self, batch, vocab_size, generator=None):
            return Corruption(batch[:, :-1], batch[:, :-1], self.attention_mode)

    model = tiny_model().requires_grad_(False)
    batch = markov_data().get_batch("train", 2, 17, torch.Generator().manual_seed(0))
    out = Bidirectional().loss(model, batch)
    logits = model(batch[:, :-1], attention_mode="bidirectional").logits
    expected = F.cross_entropy(logits.reshape(-1, 32), batch[:, :-1].reshape(-1))
    assert float(out.loss) == pytest.approx(float(expected), abs=1e-6)
    causal = F.cross_entropy(model(batch[:, :-1]).logits.reshape(-1, 32), batch[:, :-1].reshape(-1))
    assert abs(float(causal) - float(expected)) > 1e-4
