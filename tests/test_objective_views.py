"""What notebooks 04 and 05 show about objectives: the roles of a corruption's positions, the masking explorer,
the [MASK] head's predictions, and the equal-compute budget rule."""
import math

import pytest
import torch

from helpers import single_thread, tiny_model  # noqa: F401 (autouse fixture)
from workbench.config import ModelConfig
from workbench.data import CharTokenizer
from workbench.equal_compute import OBJECTIVE_SETUPS, make_setup, representation_mode, steps_for_flops
from workbench.inspect import encode_with_masks, mask_predictions
from workbench.models import GPT
from workbench.objectives import IGNORE, CausalLM, Corruption, MaskedLM, MEAP, PrefixLM, T5SpanCorruption
from workbench.viz.corruption import corrupt_text, corruption_html, corruption_roles, corruption_stats
from workbench.viz.widgets import masking_explorer

TEXT = "Once upon a time, Mia saw a cat. She was happy. The end.\n"


@pytest.fixture
def tokenizer():
    return CharTokenizer.train(TEXT)


def test_roles_follow_the_corruption_tensors():
    original = torch.tensor([[5, 6, 7, 8, 9, 10]])
    inputs = torch.tensor([[5, 1, 12, 8, 40, 0]])   # [MASK], replaced, kept-and-scored, sentinel, pad
    targets = torch.tensor([[IGNORE, 6, 7, 8, 9, IGNORE]])
    roles = corruption_roles(Corruption(inputs, targets, "bidirectional", original=original), 0, tokenizer_vocab=32)
    assert roles == ["context", "masked", "replaced", "scored", "sentinel", "pad"]
    prefix = Corruption(original, torch.tensor([[IGNORE, IGNORE, 8, 9, 10, 11]]), "prefix",
                        prefix_len=torch.tensor([3]), original=original)
    assert corruption_roles(prefix, 0, 32) == ["prefix", "prefix", "scored", "scored", "scored", "scored"]


def test_stats_count_each_role_over_the_batch():
    batch = torch.randint(4, 30, (32, 65), generator=torch.Generator().manual_seed(0))
    bert = corruption_stats(MaskedLM(0.15).corrupt(batch, 30, torch.Generator().manual_seed(1)), 30)
    assert bert["scored (any role)"] == pytest.approx(bert["masked"] + bert["replaced"] + bert["scored"])
    assert abs(bert["scored (any role)"] - 0.15) < 0.04
    meap = corruption_stats(MEAP(0.15).corrupt(batch, 30, torch.Generator().manual_seed(1)), 30)
    assert meap["scored (any role)"] == 1.0 and meap["masked"] == pytest.approx(int(64 * 0.15) / 64)
    clm = corruption_stats(CausalLM().corrupt(batch, 30), 30)
    assert clm["scored"] == 1.0 and clm["masked"] == 0.0
    t5 = corruption_stats(T5SpanCorruption(n_sentinels=8).corrupt(batch, 30, torch.Generator().manual_seed(1)), 30)
    assert t5["sentinel"] > 0


def test_html_shows_every_token_and_a_legend(tokenizer):
    corruption = corrupt_text(MaskedLM(0.5), tokenizer, TEXT[:30], seed=0)
    html = corruption_html(corruption, 0, tokenizer, title="BERT")
    assert html.count("<span title=") == corruption.inputs.shape[1]
    assert "replaced by [MASK]" in html and "BERT" in html and "bidirectional" in html
    prefix = corruption_html(corrupt_text(PrefixLM(prefix_fraction=0.5), tokenizer, TEXT[:30]), 0, tokenizer)
    assert "prefix of 14 tokens" in prefix
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        corrupt_text(MaskedLM(), tokenizer, "a")


def test_masking_explorer_redraws_on_every_control(tokenizer):
    objectives = {"BERT": ("fraction chosen", lambda r: MaskedLM(mask_ratio=r)),
                  "MEAP": ("fraction masked", lambda r: MEAP(mask_ratio=r))}
    box = masking_explorer(tokenizer, TEXT[:40], objectives)
    prompt, (choice, rate, draw), view = box.children[0], box.children[1].children, box.children[2]
    seen = [view.value]
    for control, value in ((rate, 0.5), (draw, 3), (choice, "MEAP"), (prompt, TEXT[5:45])):
        control.value = value
        assert view.value != seen[-1], control.description
        seen.append(view.value)
    prompt.value = "a"
    assert "fewer than 2 tokens" in view.value


def test_mask_predictions_read_both_sides(tokenizer):
    assert encode_with_masks(tokenizer, "[MASK]he [MASK]") == [1] + tokenizer.encode("he ") + [1]
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=16), seed=0)
    out = mask_predictions(model, tokenizer, "Mia [MASK]aw a cat.", k=3)
    assert out.positions == [4] and len(out.tokens[0]) == 3 and out.probs.shape == (1, 3)
    assert (out.probs[0][:-1] >= out.probs[0][1:]).all() and out.probs.sum() <= 1.0
    assert not any(t.startswith("[") for t in out.tokens[0])  # specials left out
    right = mask_predictions(model, tokenizer, "Mia [MASK]aw a hat.", k=3)
    assert not torch.allclose(torch.tensor(out.probs), torch.tensor(right.probs))  # the right context counts
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        mask_predictions(model, tokenizer, "Mia saw a cat.")


def test_steps_for_flops_never_overspend():
    assert steps_for_flops(10 * 3000 * 512, 3000, 512) == 10
    assert steps_for_flops(10.99 * 3000 * 512, 3000, 512) == 10
    assert steps_for_flops(1.0, 3000, 512) == 1
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="flops_budget"):
            steps_for_flops(bad, 3000, 512)


def test_every_setup_builds_and_reads_its_representation_in_the_right_mode(tokenizer):
    modes = {label: representation_mode(make_setup(label, tokenizer)) for label in OBJECTIVE_SETUPS}
    assert modes["CLM"] == modes["MEAP"] == "causal"
    assert all(modes[label] == "bidirectional" for label in ("prefix LM", "MLM 15%", "MLM 40%", "span corruption",
                                                             "ELECTRA", "CLM then MLM"))
    with pytest.raises(ValueError, match="unknown setup"):
        make_setup("GPT-5")
