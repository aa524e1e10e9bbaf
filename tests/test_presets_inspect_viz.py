"""Presets, the inspect helpers behind the widgets, and the pure figures."""
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from workbench.config import ModelConfig
from workbench.data import CharTokenizer
from workbench.inspect import attention_maps, next_token_distribution
from workbench.models import GPT
from workbench.presets import PRESETS, preset, preset_name
from workbench.viz.figures import attention_figure, distribution_figure, loss_figure, smooth

TEXT = "Once upon a time, Mia saw a cat. She was happy. The end.\n"


@pytest.fixture
def model_and_tokenizer():
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(TEXT)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, d_model=16))
    return model, tokenizer


def test_preset_from_environment(monkeypatch):
    monkeypatch.setenv("WORKBENCH_PRESET", "cpu")
    assert preset().name == "cpu"
    monkeypatch.setenv("WORKBENCH_PRESET", "gpu")
    assert preset_name() == "gpu"
    assert preset("ci").name == "ci"


def test_unknown_preset_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("WORKBENCH_PRESET", "huge")
    with pytest.raises(ValueError, match="'huge'.*'ci', 'cpu', 'gpu'"):
        preset()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_valid_configs(name):
    chosen = PRESETS[name]
    config = chosen.model_config(vocab_size=50)
    assert config.vocab_size == 50
    train = chosen.train_config(steps=7)
    assert train.steps == 7
    assert chosen.model_config(50, n_layer=1).n_layer == 1


def test_presets_grow_from_ci_to_gpu():
    sizes = [GPT(PRESETS[n].model_config(64)).num_parameters() for n in ("ci", "cpu", "gpu")]
    assert sizes[0] < sizes[1] < sizes[2]


def test_attention_maps_shape_and_rows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    maps = attention_maps(model, tokenizer, "Mia saw")
    assert maps.probs.shape == (2, 2, 7, 7)
    assert maps.tokens == tokenizer.token_strings(tokenizer.encode("Mia saw")) == list("Mia\u2423saw")
    np.testing.assert_allclose(maps.probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps.probs[0, 0], k=1) == 0)  # causal: nothing above the diagonal
    assert model.training  # the helper restores the mode it found


def test_attention_maps_empty_text_is_clear(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="empty"):
        attention_maps(model, tokenizer, "")


def test_next_token_distribution_matches_the_model(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.eval()
    dist = next_token_distribution(model, tokenizer, "Mia", show=5)
    logits = model(torch.tensor([tokenizer.encode("Mia")])).logits[0, -1]
    expected = logits.softmax(-1).sort(descending=True).values[:5]
    np.testing.assert_allclose(dist.raw_probs, expected.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(dist.probs, dist.raw_probs, rtol=1e-5)  # temperature 1, no filter
    assert dist.kept.all()


def test_next_token_distribution_knobs(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    greedy = next_token_distribution(model, tokenizer, "Mia", temperature=0.0)
    assert greedy.probs[0] == 1.0 and greedy.probs[1:].sum() == 0
    top2 = next_token_distribution(model, tokenizer, "Mia", top_k=2)
    assert top2.kept.sum() == 2 and math.isclose(float(top2.probs[:2].sum()), 1.0, rel_tol=1e-5)
    hot = next_token_distribution(model, tokenizer, "Mia", temperature=3.0)
    cold = next_token_distribution(model, tokenizer, "Mia", temperature=0.3)
    assert cold.probs[0] > hot.probs[0]


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(smooth([1, 2, 3, 4], window=2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(smooth([5.0], window=10), [5.0])


def test_loss_figure_has_train_val_and_floor():
    history = {"train": [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 11)],
               "eval": [{"step": 5, "val_loss": 2.6}, {"step": 10, "val_loss": 2.1}]}
    fig = loss_figure(history, floor=0.4, smoothing=1)
    assert isinstance(fig, go.Figure)
    assert list(fig.data[0].y) == pytest.approx([3.0 - s / 10 for s in range(1, 11)])
    assert list(fig.data[1].y) == [2.6, 2.1]
    assert any(shape.y0 == 0.4 for shape in fig.layout.shapes)


def test_attention_and_distribution_figures():
    fig = attention_figure(np.eye(3), list("abc"), list("abc"))
    assert np.array_equal(np.asarray(fig.data[0].z), np.eye(3))
    assert list(fig.layout.xaxis.ticktext) == list("abc")
    bars = distribution_figure(["a", "b"], [0.7, 0.3], kept=[True, False])
    assert list(bars.data[0].marker.color) == ["#1f77b4", "#cccccc"]


def test_widgets_build_without_a_frontend(model_and_tokenizer):
    from workbench.viz.widgets import attention_explorer, sampling_explorer

    model, tokenizer = model_and_tokenizer
    explorer = attention_explorer(model, tokenizer, "Mia saw")
    layer_slider = explorer.children[1].children[1]
    head_slider = explorer.children[1].children[2]
    figure = explorer.children[3]
    layer_slider.value, head_slider.value = 1, 1
    expected = attention_maps(model, tokenizer, "Mia saw").probs[1, 1]
    np.testing.assert_allclose(np.asarray(figure.data[0].z), expected, atol=1e-6)
    sampler = sampling_explorer(model, tokenizer, prompt="Mia")
    sampler.children[2].children[1].click()  # the Sample button
    assert "Mia" in sampler.children[4].value
    sampler.children[0].value = "Mia ☕"  # unknown character: shown as a message, not raised
    assert "not in the vocabulary" in sampler.children[4].value or "☕" in sampler.children[4].value


def test_static_mode_leaves_plain_figures_instead_of_widgets(model_and_tokenizer, monkeypatch):
    """WORKBENCH_STATIC_FIGURES=1 (run.py publish): no live FigureWidget, the final curve as a plain Figure."""
    import workbench.viz.widgets as viz_widgets

    shown = []
    monkeypatch.setattr(viz_widgets, "display", shown.append)
    history = {"train": [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 6)], "eval": []}
    trainer = type("FakeTrainer", (), {"config": type("C", (), {"steps": 5})(), "history": history})()

    monkeypatch.setenv(viz_widgets.STATIC_ENV, "1")
    plot = viz_widgets.LiveLossPlot(floor=0.5)
    plot.on_train_begin(trainer)
    plot.on_step(trainer, {"step": 5})
    plot.on_train_end(trainer)
    assert plot.figure is None and len(shown) == 1
    assert type(shown[0]) is go.Figure and list(shown[0].data[0].x) == [1, 2, 3, 4, 5]
    model, tokenizer = model_and_tokenizer
    viz_widgets.attention_explorer(model, tokenizer, "Mia")
    assert len(shown) == 2 and type(shown[1]) is go.Figure  # a static copy of the explorer's first view

    shown.clear()
    monkeypatch.setenv(viz_widgets.STATIC_ENV, "0")
    live = viz_widgets.LiveLossPlot()
    live.on_train_begin(trainer)
    live.on_train_end(trainer)
    assert len(shown) == 1 and isinstance(shown[0], go.FigureWidget)
    assert list(live.figure.data[0].x) == [1, 2, 3, 4, 5]
    viz_widgets.attention_explorer(model, tokenizer, "Mia")
    assert len(shown) == 1  # interactive mode: the widget alone


def test_publish_strips_widget_views_and_state():
    import nbformat

    from workbench.publish import WIDGET_VIEW, strip_live_outputs

    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    widget_out = nbformat.v4.new_output("display_data", data={WIDGET_VIEW: {"model_id": "x"}, "text/plain": "VBox()"})
    figure_out = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "Figure"})
    text_out = nbformat.v4.new_output("stream", name="stdout", text="ok\n")
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[widget_out, figure_out, text_out]),
                nbformat.v4.new_markdown_cell("# title")]
    assert strip_live_outputs(nb) == 1
    assert nb.cells[0].outputs == [figure_out, text_out]
    assert "widgets" not in nb.metadata
    assert strip_live_outputs(nb) == 0


def test_attention_explorer_switches_between_named_models(model_and_tokenizer):
    from workbench.viz.widgets import attention_explorer

    model, tokenizer = model_and_tokenizer
    torch.manual_seed(1)
    other = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=3, n_head=4, d_model=16,
                            attention="sliding_window", window=2, position="rope"))
    explorer = attention_explorer({"mha": model, "window 2": other}, tokenizer, "Mia saw")
    variant, layer, head = explorer.children[1].children
    figure = explorer.children[3]
    variant.value = "window 2"
    assert (layer.max, head.max) == (2, 3)
    layer.value, head.value = 2, 3
    expected = attention_maps(other, tokenizer, "Mia saw").probs[2, 3]
    np.testing.assert_allclose(np.asarray(figure.data[0].z), expected, atol=1e-6)
    assert np.all(np.tril(expected, k=-2) == 0)  # the window: nothing older than 1 token back
    assert "window 2" in figure.layout.title.text


def test_loss_by_position_is_the_mean_cross_entropy_per_position():
    from helpers import markov_data
    from workbench.inspect import loss_by_position

    data = markov_data()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, d_model=16, position="rope"))
    losses = loss_by_position(model, data, length=20, batches=2, batch_size=4, seed=3)
    g = torch.Generator().manual_seed(3)
    batches = [data.get_batch("val", 4, 21, g) for _ in range(2)]
    with torch.no_grad():
        per = [torch.nn.functional.cross_entropy(model(b[:, :-1]).logits.transpose(1, 2), b[:, 1:],
                                                 reduction="none").mean(0) for b in batches]
    np.testing.assert_allclose(losses, (sum(per) / 2).numpy(), rtol=1e-5)
    assert losses.shape == (20,)  # runs past block_size=8 with RoPE
    learned = GPT(ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(ValueError, match="block_size"):
        loss_by_position(learned, data, length=20, batches=1)
