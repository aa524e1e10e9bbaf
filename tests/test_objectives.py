"""Objectives: the causal LM loss is plain shifted cross entropy; the registry names what exists."""
import math

import pytest
import torch

from helpers import single_thread, tiny_model  # noqa: F401 (autouse fixture)
from workbench.objectives import OBJECTIVES, CausalLM, make_objective


def test_causal_lm_loss_equals_manual_shifted_cross_entropy():
    model = tiny_model()
    batch = torch.randint(0, 32, (3, 17), generator=torch.Generator().manual_seed(0))
    out = CausalLM().loss(model, batch)
    logits = model(batch[:, :-1]).logits.detach()
    log_probs = logits.log_softmax(-1)
    manual = -sum(float(log_probs[b, t, batch[b, t + 1]]) for b in range(3) for t in range(16)) / (3 * 16)
    assert float(out.loss.detach()) == pytest.approx(manual, abs=1e-5)
    assert out.n_tokens == 3 * 16
    # the unshifted (wrong) loss is clearly different
    unshifted = -float(log_probs.gather(-1, batch[:, :-1, None]).mean())
    assert abs(unshifted - manual) > 1e-3


def test_causal_lm_loss_is_about_ln_vocab_at_init():
    model = tiny_model()
    batch = torch.randint(0, 32, (4, 17), generator=torch.Generator().manual_seed(1))
    assert float(CausalLM().loss(model, batch).loss.detach()) == pytest.approx(math.log(32), abs=0.1)


def test_causal_lm_loss_has_gradients():
    model = tiny_model()
    batch = torch.randint(0, 32, (2, 17), generator=torch.Generator().manual_seed(2))
    CausalLM().loss(model, batch).loss.backward()
    assert model.token_embedding.weight.grad is not None
    assert model.token_embedding.weight.grad.abs().sum() > 0


def test_make_objective_by_name():
    assert isinstance(make_objective("clm"), CausalLM)
    assert "clm" in OBJECTIVES.names()


def test_unknown_objective_lists_registered_names():
    with pytest.raises(ValueError) as info:
        make_objective("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in OBJECTIVES.names():
        assert name in message
