"""Widget behaviour without a browser: drive the ipywidgets objects directly (set .value, click) and read
the figure data and HTML they show. tests/live/ checks the same widgets in a real browser."""
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from helpers import markov_data, single_thread, tiny_model, train_config  # noqa: F401 (autouse fixture)
from workbench.config import ModelConfig
from workbench.data import SPECIAL_TOKENS, CharTokenizer
from workbench.generate import generate, sample_text, special_ids_to_suppress
from workbench.inspect import attention_maps, next_token_distribution
from workbench.models import GPT
from workbench.objectives import CausalLM
from workbench.train import Callback, Trainer
from workbench.viz import widgets as viz_widgets
from workbench.viz.figures import attention_figure, heatmap_grid_figure, heatmap_scale, is_probability_map

TEXT = "Once upon a time, Mia saw a cat. She was happy. The end.\n"
LONG_PROMPT = ("Once upon a time, Mia saw a cat. She was happy. The end. " * 2)[:64]


@pytest.fixture
def tokenizer():
    return CharTokenizer.train(TEXT)


def char_model(tokenizer, **changes):
    torch.manual_seed(0)
    config = dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, d_model=16)
    config.update(changes)
    return GPT(ModelConfig(**config))


# ------------------------------------------------------------------ sampling explorer

def test_sampling_explorer_clears_its_error_once_the_prompt_works(tokenizer):
    sampler = viz_widgets.sampling_explorer(char_model(tokenizer), tokenizer, prompt="Mia")
    prompt, figure, message = sampler.children[0], sampler.children[3], sampler.children[4]
    before = list(figure.data[0].y)
    prompt.value = "Mia ☕"  # not in the vocabulary
    assert "☕" in message.value or "vocabulary" in message.value
    prompt.value = "Mia s"
    assert message.value == ""
    assert list(figure.data[0].y) != before and "Mia s" in figure.layout.title.text
    # a sample replaces the text; a later good redraw must not wipe the sample
    sampler.children[2].children[1].click()
    sample = message.value
    assert "Mia s" in sample
    sampler.children[1].children[0].value = 0.5
    assert message.value == sample


def test_sampling_explorer_sliders_show_their_whole_labels(tokenizer):
    sampler = viz_widgets.sampling_explorer(char_model(tokenizer), tokenizer, prompt="Mia")
    sliders = sampler.children[1].children
    assert [s.description for s in sliders] == ["temperature", "top-k (0=off)", "top-p"]
    assert all(s.style.description_width == "initial" for s in sliders)


def test_sampling_explorer_shows_no_special_tokens(tokenizer):
    model = char_model(tokenizer)
    sampler = viz_widgets.sampling_explorer(model, tokenizer, prompt="Mia")
    figure = sampler.children[3]
    shown = set(figure.data[0].x)
    assert not shown & set(SPECIAL_TOKENS)
    dist = next_token_distribution(model, tokenizer, "Mia", suppress_special=True)
    assert list(figure.data[0].x) == dist.tokens


# ------------------------------------------------------------------ special tokens

def test_special_tokens_to_suppress_keep_eos_only_as_a_stop_token(tokenizer):
    assert special_ids_to_suppress(tokenizer) == [0, 1, 2, 3]
    assert special_ids_to_suppress(tokenizer, stop_tokens=[tokenizer.eos_id]) == [0, 1, 2]


def test_sampling_never_emits_special_tokens(tokenizer):
    model = char_model(tokenizer)
    prompt = tokenizer.encode("Mia")
    specials = torch.arange(len(SPECIAL_TOKENS))
    # hot sampling from an untrained model: without suppression the specials do come up
    plain = generate(model, prompt, 300, temperature=3.0, seed=0)
    assert torch.isin(plain[len(prompt):], specials).any()
    for use_cache in (True, False):
        out = generate(model, prompt, 300, temperature=3.0, seed=0, use_cache=use_cache,
                       suppress_tokens=special_ids_to_suppress(tokenizer))
        assert not torch.isin(out[len(prompt):], specials).any()
    greedy = [generate(model, prompt, 40, temperature=0, use_cache=c, suppress_tokens=[0, 1, 2, 3])
              for c in (True, False)]
    assert torch.equal(*greedy) and not torch.isin(greedy[0][len(prompt):], specials).any()
    # sample_text suppresses them by default; its decoded text can therefore not have lost any token
    n = 200
    text = sample_text(model, tokenizer, "Mia", n, temperature=3.0, seed=1)
    assert len(tokenizer.encode(text)) == len("Mia") + n


def test_eos_stays_sampleable_when_it_is_a_stop_token(tokenizer):
    model = char_model(tokenizer)
    dist = next_token_distribution(model, tokenizer, "Mia", suppress_special=True,
                                   stop_tokens=[tokenizer.eos_id], show=tokenizer.vocab_size)
    assert "[EOS]" in dist.tokens and not {"[PAD]", "[MASK]", "[BOS]"} & set(dist.tokens)


def test_shown_distribution_renormalizes_over_the_other_tokens(tokenizer):
    model = char_model(tokenizer)
    model.eval()
    dist = next_token_distribution(model, tokenizer, "Mia", suppress_special=True, show=tokenizer.vocab_size)
    assert len(dist.tokens) == tokenizer.vocab_size - 4 and not set(dist.tokens) & set(SPECIAL_TOKENS)
    assert dist.suppressed == list(SPECIAL_TOKENS)
    assert math.isclose(float(dist.probs.sum()), 1.0, rel_tol=1e-5)
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("Mia")])).logits[0, -1]
    expected = logits[4:].softmax(-1).sort(descending=True).values.numpy()
    np.testing.assert_allclose(dist.probs, expected, rtol=1e-5)
    # temperature and top-k act on the renormalized distribution, as the sampler's do
    top3 = next_token_distribution(model, tokenizer, "Mia", top_k=3, suppress_special=True)
    assert top3.kept.sum() == 3 and math.isclose(float(top3.probs[:3].sum()), 1.0, rel_tol=1e-5)
    greedy = next_token_distribution(model, tokenizer, "Mia", temperature=0, suppress_special=True)
    first = generate(model, tokenizer.encode("Mia"), 1, temperature=0, suppress_tokens=[0, 1, 2, 3])[-1]
    assert greedy.tokens[0] == tokenizer.token_strings([int(first)])[0] and greedy.probs[0] == 1.0


# ------------------------------------------------------------------ attention explorer

@pytest.mark.parametrize("attention", ["gla", "delta", "ssd"])
def test_mixing_matrices_get_a_symmetric_scale_of_their_own(tokenizer, attention):
    model = char_model(tokenizer, attention=attention, position="none")
    explorer = viz_widgets.attention_explorer(model, tokenizer, LONG_PROMPT)
    layer, head = explorer.children[1].children[1:]
    figure = explorer.children[3]
    for lv, hv in [(0, 0), (1, 1)]:
        layer.value, head.value = lv, hv
        z = np.asarray(figure.data[0].z, dtype=float)
        np.testing.assert_allclose(z, attention_maps(model, tokenizer, LONG_PROMPT).probs[lv, hv], atol=1e-6)
        if is_probability_map(z):  # possible in principle; then the 0..1 scale is right
            continue
        top = np.abs(z).max()
        trace = figure.data[0]
        assert trace.zmin == pytest.approx(-top) and trace.zmax == pytest.approx(top) and trace.zmid == 0
        assert "±" in trace.colorbar.title.text


def test_probabilities_keep_the_zero_to_one_scale(tokenizer):
    model = char_model(tokenizer)
    explorer = viz_widgets.attention_explorer(model, tokenizer, "Mia saw")
    trace = explorer.children[3].data[0]
    assert (trace.zmin, trace.zmax, trace.colorbar.title.text) == (0.0, 1.0, "p")
    assert not trace.reversescale


def test_scale_switches_with_the_variant(tokenizer):
    models = {"mha": char_model(tokenizer), "ssd": char_model(tokenizer, attention="ssd", position="none")}
    explorer = viz_widgets.attention_explorer(models, tokenizer, "Mia saw a cat")
    variant = explorer.children[1].children[0]
    trace = explorer.children[3].data[0]
    variant.value = "ssd"
    z = np.asarray(trace.z, dtype=float)
    assert trace.zmax == pytest.approx(np.abs(z).max()) and trace.zmax < 0.5  # SSD is small, not blank
    variant.value = "mha"
    assert (trace.zmin, trace.zmax) == (0.0, 1.0) and not trace.reversescale


def test_heatmap_scale_rules():
    probs = np.tril(np.ones((4, 4)))
    probs /= probs.sum(-1, keepdims=True)
    assert heatmap_scale(probs)["zmax"] == 1.0
    signed = np.tril(np.arange(16.0).reshape(4, 4) - 8)
    scale = heatmap_scale(signed)
    assert (scale["zmin"], scale["zmax"], scale["zmid"]) == (-8.0, 8.0, 0.0)


def test_long_prompts_get_thinned_readable_ticks(tokenizer):
    labels = list(LONG_PROMPT)
    fig = attention_figure(np.eye(64), labels, labels)
    ticks = list(fig.layout.xaxis.tickvals)
    assert ticks == list(range(0, 64, 4)) and list(fig.layout.xaxis.ticktext) == labels[::4]
    assert fig.layout.xaxis.tickfont.size <= 10 and fig.layout.height >= 560
    short = attention_figure(np.eye(10), labels[:10], labels[:10])
    assert list(short.layout.xaxis.tickvals) == list(range(10))
    explorer = viz_widgets.attention_explorer(char_model(tokenizer), tokenizer, LONG_PROMPT)
    assert len(explorer.children[3].layout.xaxis.tickvals) <= 24
    assert len(explorer.children[3].data[0].customdata) == 64  # hover still names every token


def test_heatmap_grid_gives_mixing_matrices_their_own_scale():
    probs = np.eye(3)
    gla = np.array([[5.0, 0, 0], [-6.6, 1, 0], [0.3, 2, 1]])
    fig = heatmap_grid_figure({"mha": probs, "gla": gla}, "maps")
    assert fig.data[0].coloraxis == "coloraxis" and fig.data[1].coloraxis == "coloraxis2"
    assert np.abs(np.asarray(fig.data[1].z)).max() == pytest.approx(1.0)
    assert fig.layout.coloraxis2.cmin == -1 and fig.layout.coloraxis.cmax == 1


# ------------------------------------------------------------------ training: progress bar, loss plot

def _notebook_bars(monkeypatch):
    """Make Trainer.fit use tqdm's notebook bar (enabled even under TQDM_DISABLE) and record the bars."""
    from tqdm.notebook import tqdm as notebook_tqdm

    import workbench.train.trainer as trainer_module

    bars = []

    class Recorded(notebook_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(trainer_module, "tqdm", Recorded)
    monkeypatch.setattr("tqdm.notebook.display", lambda *a, **k: None)
    return bars


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, record):
        if record["step"] == self.step:
            raise KeyboardInterrupt


def test_a_stopped_run_leaves_no_red_progress_bar(monkeypatch, capsys):
    bars = _notebook_bars(monkeypatch)
    trainer = Trainer(tiny_model(seed=0), CausalLM(), markov_data(), train_config(steps=6, batch_size=2),
                      callbacks=[StopAt(3)])
    trainer.fit()
    assert trainer.interrupted and trainer.step == 3
    for bar in (bars[-1],):
        assert bar.container.children[1].bar_style != "danger"
        assert bar.container.layout.display == "none"
        assert bar.container.comm is not None  # hidden, not closed: no "widget model not found" in the page
    trainer.callbacks = []
    trainer.fit()  # a completed run: the bar disappears as well
    assert trainer.step == 6 and len(bars) == 2
    assert bars[-1].container.layout.display == "none" and bars[-1].container.children[1].bar_style != "danger"
    assert bars[-1].container.comm is not None


def test_fit_closes_a_disabled_or_console_bar(monkeypatch, capsys):
    """Under TQDM_DISABLE (tests, CI) and in a terminal the bar is closed without error, stop or not."""
    from tqdm import tqdm as console_tqdm

    import workbench.train.trainer as trainer_module

    for disable in (True, False):
        monkeypatch.setattr(trainer_module, "tqdm",
                            lambda *a, d=disable, **k: console_tqdm(*a, **{**k, "disable": d}))
        trainer = Trainer(tiny_model(seed=0), CausalLM(), markov_data(), train_config(steps=4, batch_size=2),
                          callbacks=[StopAt(2)])
        trainer.fit()
        assert trainer.interrupted and trainer.step == 2


def test_live_loss_plot_shows_a_loaded_history_when_training_is_skipped(monkeypatch):
    """A training cache calls on_train_begin then on_train_end on a trainer whose history is complete."""
    shown = []
    monkeypatch.setattr(viz_widgets, "display", shown.append)
    monkeypatch.delenv(viz_widgets.STATIC_ENV, raising=False)
    trainer = Trainer(tiny_model(seed=0), CausalLM(), markov_data(), train_config(steps=8, batch_size=2,
                                                                                  eval_every=4))
    trainer.fit()
    plot = viz_widgets.LiveLossPlot(floor=0.5, smoothing=1)
    plot.on_train_begin(trainer)
    plot.on_train_end(trainer)
    assert len(shown) == 1 and isinstance(shown[0], go.FigureWidget)
    assert list(plot.figure.data[0].x) == list(range(1, 9))
    assert list(plot.figure.data[0].y) == pytest.approx([r["loss"] for r in trainer.history["train"]])
    assert list(plot.figure.data[1].x) == [4, 8]
    # a fresh plot on a skipped run must not need a single on_step
    static = []
    monkeypatch.setattr(viz_widgets, "display", static.append)
    monkeypatch.setenv(viz_widgets.STATIC_ENV, "1")
    again = viz_widgets.LiveLossPlot()
    again.on_train_begin(trainer)
    again.on_train_end(trainer)
    assert len(static) == 1 and list(static[0].data[0].x) == list(range(1, 9))
