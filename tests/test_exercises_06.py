"""Exercises of notebook 06 (masked diffusion): the notebook's solutions pass, further plausible wrong answers fail with
a line that points at the difference, and the references are the library's own code. What every exercise shares is
tested once for all in test_exercises_framework.py."""
import pytest
import torch

from helpers import assert_solution_passes, assert_wrong_answer_points_at_itself
from workbench.diffusion.sampling import transfer_schedule
from workbench.exercises import get
from workbench.objectives import MaskedDiffusion

IDS = ("06.1", "06.2", "06.3")


# ---------------------------------------------------------------- the notebook's solutions, copied
def diffusion_loss(logits, x0, masked, t):
    logits = logits.float().clone()
    logits[..., 1] = float("-inf")
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
    nll = torch.where(masked, nll, torch.zeros_like(nll))
    return (nll / t[:, None]).sum() / x0.numel()


def remask_step(logits, canvas, k):
    logits = logits.float().clone()
    logits[..., 1] = float("-inf")
    confidence, tokens = torch.softmax(logits, dim=-1).max(dim=-1)
    confidence = torch.where(canvas == 1, confidence, torch.full_like(confidence, float("-inf")))
    chosen = torch.zeros_like(canvas, dtype=torch.bool).scatter(1, confidence.topk(k, dim=1).indices, True)
    return torch.where(chosen & (canvas == 1), tokens, canvas)


def tokens_per_step(n_masked, steps):
    base, remainder = divmod(n_masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


SOLUTIONS = {"06.1": diffusion_loss, "06.2": remask_step, "06.3": tokens_per_step}


# ---------------------------------------------------------------- further plausible wrong answers (not registered)
def diffusion_loss_weighted_by_the_mask_probability(logits, x0, masked, t):
    """1 / ((1 - eps) t): MDLM's weight is 1/t, although P(hidden) is (1 - eps) t."""
    return diffusion_loss(logits, x0, masked, (1 - 1e-3) * t)


def remask_step_over_the_whole_batch(logits, canvas, k):
    """The k surest positions of the whole batch, not k per row."""
    logits = logits.float().clone()
    logits[..., 1] = float("-inf")
    confidence, tokens = torch.softmax(logits, dim=-1).max(dim=-1)
    confidence = torch.where(canvas == 1, confidence, torch.full_like(confidence, float("-inf")))
    flat = torch.zeros(canvas.numel(), dtype=torch.bool)
    flat[confidence.flatten().topk(k).indices] = True
    return torch.where(flat.reshape(canvas.shape) & (canvas == 1), tokens, canvas)


def tokens_per_step_spread_from_the_end(n_masked, steps):
    return list(reversed(tokens_per_step(n_masked, steps)))


WRONG = {
    "06.1": (diffusion_loss_weighted_by_the_mask_probability, "case 1, one row of 6 tokens, t = 0.5: expected"),
    "06.2": (remask_step_over_the_whole_batch, "case 2, 2 rows of 10, commit 3: first difference at index"),
    "06.3": (tokens_per_step_spread_from_the_end, "case 1, 10 hidden tokens in 4 steps: expected 3 at item 0, got 2"),
}


@pytest.mark.parametrize("exercise_id", IDS)
def test_solution_passes_every_case(exercise_id):
    assert_solution_passes(exercise_id, SOLUTIONS[exercise_id])


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_further_wrong_answer_fails_with_the_difference(exercise_id):
    assert_wrong_answer_points_at_itself(exercise_id, *WRONG[exercise_id])


def test_the_loss_exercise_is_the_objectives_loss():
    """The reference of 06.1 on a real corruption equals MaskedDiffusion's loss on the same draw."""
    from workbench.objectives.base import MASK_ID
    model_logits = torch.randn(4, 16, 10, generator=torch.Generator().manual_seed(0))
    batch = torch.randint(4, 10, (4, 17), generator=torch.Generator().manual_seed(1))
    c = MaskedDiffusion().corrupt(batch, 10, torch.Generator().manual_seed(2))

    class Fixed(torch.nn.Module):
        config = type("Config", (), {"vocab_size": 10})()

        def forward(self, ids, attention_mode="causal"):
            return type("Out", (), {"logits": model_logits})()

    expected = MaskedDiffusion().loss(Fixed(), batch, torch.Generator().manual_seed(2)).loss
    assert torch.allclose(get("06.1").reference(model_logits, batch[:, :-1], c.inputs == MASK_ID, c.t), expected)


def test_the_schedule_exercise_is_the_samplers_rule():
    assert get("06.3").reference is transfer_schedule
