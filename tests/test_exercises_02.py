"""Exercises of notebook 02: the notebook's solutions pass, and wrong answers fail with a pointed line. What
every exercise shares (stub "not yet", known mistakes named, the notebook's cells agree with the registry, no
cell calls a learner's function) is tested once for all in test_exercises_framework.py."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from workbench.exercises import get, run_check

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_gpt_from_parts.ipynb"
IDS = ["02.1", "02.2", "02.3", "02.4", "02.5"]


def _cells():
    return [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]]


def _solution_cells():
    """{exercise id: source of the code cell that defines its function}, in notebook order."""
    cells = _cells()
    found = {}
    for exercise_id in IDS:
        name = get(exercise_id).function_name
        found[exercise_id] = next(src for kind, src in cells
                                  if kind == "code" and re.search(rf"^def {name}\(", src, re.M))
    return found


@pytest.fixture(scope="module")
def solutions():
    """The notebook's own solutions, exec'd in order in one namespace (later ones call earlier ones)."""
    namespace = {}
    exec("import math\nimport torch\nimport torch.nn.functional as F\n", namespace)
    for exercise_id, source in _solution_cells().items():
        exec(source, namespace)
    return {exercise_id: namespace[get(exercise_id).function_name] for exercise_id in IDS}


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_notebooks_solution_passes_every_case(exercise_id, solutions):
    report = run_check(get(exercise_id), solutions[exercise_id])
    assert report.passed, str(report)
    assert len(report.results) >= 3


def _attention_with_scores_masked_to_zero(x, w_qkv, b_qkv, w_o, b_o, n_head):
    """Masks the future by setting its scores to 0 instead of -inf: the future still gets exp(0) weight."""
    B, T, d = x.shape
    q, k, v = (x @ w_qkv.T + b_qkv).split(d, dim=-1)
    q, k, v = (t.view(B, T, n_head, d // n_head).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d // n_head)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), 0.0)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d) @ w_o.T + b_o


def _attention_without_output_projection(x, w_qkv, b_qkv, w_o, b_o, n_head):
    out = get("02.1").reference(x, w_qkv, b_qkv, torch.eye(x.shape[-1]), torch.zeros(x.shape[-1]), n_head)
    return out


def _layer_norm_rms(x, weight, bias, eps):
    """RMSNorm in LayerNorm's place: no centering."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight + bias


def _mlp_sigmoid_gelu(x, w_fc, b_fc, w_proj, b_proj):
    """The sigmoid approximation x * sigmoid(1.702 x): a third GELU, not the library's."""
    h = x @ w_fc.T + b_fc
    return (h * torch.sigmoid(1.702 * h)) @ w_proj.T + b_proj


@pytest.mark.parametrize("exercise_id, wrong, expected_words", [
    ("02.1", _attention_with_scores_masked_to_zero, "first difference"),
    ("02.1", _attention_without_output_projection, "first difference"),
    ("02.2", _layer_norm_rms, "first difference"),
    ("02.3", _mlp_sigmoid_gelu, "first difference"),
])
def test_unlisted_wrong_answers_fail_with_the_first_difference(exercise_id, wrong, expected_words):
    report = run_check(get(exercise_id), wrong)
    assert not report.passed and not report.not_yet
    assert expected_words in str(report)
    assert re.search(r"expected -?\d", str(report)), str(report)  # the line shows the numbers that differ


def test_a_block_that_forgets_a_residual_points_at_it(solutions):
    """Attention's residual kept, the MLP's forgotten: the line names the position and the values that differ."""
    namespace = solutions["02.4"].__globals__

    def wrong(x, params, n_head):
        p = params
        h = x + namespace["causal_self_attention"](namespace["layer_norm"](x, p["norm1.weight"], p["norm1.bias"], 1e-5),
                                                   p["attn.qkv.weight"], p["attn.qkv.bias"], p["attn.proj.weight"],
                                                   p["attn.proj.bias"], n_head)
        return namespace["mlp"](namespace["layer_norm"](h, p["norm2.weight"], p["norm2.bias"], 1e-5),
                                p["mlp.fc.weight"], p["mlp.fc.bias"], p["mlp.proj.weight"], p["mlp.proj.bias"])

    report = run_check(get("02.4"), wrong)
    assert not report.passed and "first difference at index" in str(report)


def test_centred_logits_fail_although_their_softmax_is_right(solutions):
    """Logits minus their mean give the same probabilities, but the exercise asks for the logits themselves."""
    exercise = get("02.5")

    def wrong(model, ids):
        logits = solutions["02.5"](model, ids)
        return logits - logits.mean(-1, keepdim=True)  # centred logits: same softmax, different numbers

    report = run_check(exercise, wrong)
    assert not report.passed and "first difference" in str(report)


def test_the_gelu_mistake_is_not_hidden_by_the_tolerance():
    """tanh-GELU and erf-GELU differ by ~1e-3 at most: the MLP cases must make that visible in every case."""
    exercise = get("02.3")
    for case in exercise.cases():
        exact = exercise.mistakes[0].function(*case.args)
        tanh = exercise.reference(*case.args)
        assert (exact - tanh).abs().max() > 20 * exercise.atol


# ------------------------------------------------------------------ the notebook and the registry agree
