"""Widgets: the figures of ``figures.py`` wired to models, sliders and the Trainer.

* ``LiveLossPlot``      a Trainer callback that redraws the loss curve while training;
* ``sampling_explorer`` prompt + temperature / top-k / top-p sliders: the next-token
                        distribution redraws as you move them, and a button samples text;
* ``attention_explorer`` layer and head sliders over a prompt's attention heatmap;
* ``masking_explorer``  pick an objective and its rate: the text as that objective corrupts it;
* ``denoising_explorer`` a masked diffusion sampler step by step: sampler, steps, and a slider
                        through the steps, every token coloured by the model's confidence.

Widgets live only here; everything they show is computed by library functions
that tests call directly.

**Static snapshots.** Widget views need a live kernel: GitHub, nbviewer and a
reopened notebook show nothing where a widget was. With the environment
variable ``WORKBENCH_STATIC_FIGURES=1`` (set by ``python3 run.py publish``,
which executes the notebooks whose outputs are committed) ``LiveLossPlot``
draws its final curve as an ordinary figure instead of a live widget, and
each explorer also displays a static copy of its first view.
"""
from __future__ import annotations

import html
import os
from typing import Optional

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from IPython.display import HTML, display

from ..diffusion.sampling import SAMPLERS, sample
from ..generate import sample_text
from ..inspect import attention_maps, encode_with_masks, next_token_distribution
from ..train.callbacks import Callback
from .corruption import corrupt_text, corruption_html
from .denoising import denoising_html
from .figures import attention_figure, distribution_figure, heatmap_scale, loss_figure, smooth, token_ticks

STATIC_ENV = "WORKBENCH_STATIC_FIGURES"


def static_figures() -> bool:
    """True when widgets should also leave static figures behind (``WORKBENCH_STATIC_FIGURES=1``)."""
    return os.environ.get(STATIC_ENV, "") not in ("", "0")


def _show_static(figure) -> None:
    """Display a plain (non-widget) copy of ``figure`` when static snapshots are on."""
    if static_figures():
        display(go.Figure(figure))


class LiveLossPlot(Callback):
    """Draws the training and validation loss as they arrive (about ``updates`` redraws per run)."""

    def __init__(self, floor: Optional[float] = None, title: str = "Loss", updates: int = 60, smoothing: int = 20):
        self.floor, self.title, self.updates, self.smoothing = floor, title, updates, smoothing
        self.figure: Optional[go.FigureWidget] = None

    def on_train_begin(self, trainer) -> None:
        self.every = max(1, trainer.config.steps // self.updates)
        if static_figures():  # no live widget: the final curve is drawn once, at the end
            return
        if self.figure is None:
            self.figure = go.FigureWidget(loss_figure(trainer.history, self.floor, self.title,
                                                      smoothing=self.smoothing))
            display(self.figure)

    def on_step(self, trainer, record: dict) -> None:
        if record["step"] % self.every == 0:
            self.redraw(trainer.history)

    def on_eval(self, trainer, record: dict) -> None:
        self.redraw(trainer.history)

    def on_train_end(self, trainer) -> None:
        if static_figures():
            display(loss_figure(trainer.history, self.floor, self.title, smoothing=self.smoothing))
            return
        self.redraw(trainer.history)

    def redraw(self, history: dict) -> None:
        if self.figure is None:
            return
        train, evals = history["train"], history["eval"]
        with self.figure.batch_update():
            self.figure.data[0].x = [r["step"] for r in train]
            self.figure.data[0].y = smooth([r["loss"] for r in train], self.smoothing)
            self.figure.data[1].x = [r["step"] for r in evals]
            self.figure.data[1].y = [r["val_loss"] for r in evals]


SLIDER_STYLE = {"description_width": "initial"}  # full labels ("temperature", "top-k (0=off)"), not "temperat..."


def sampling_explorer(model, tokenizer, prompt: str = "", max_new_tokens: int = 200,
                      suppress_special: bool = True) -> widgets.Widget:
    """Move temperature / top-k / top-p and watch the next-token distribution reshape; press Sample.

    With ``suppress_special`` (the default) the special tokens a plain-text model never
    produces ([PAD], [MASK], [BOS], [EOS]; ``workbench.generate.special_ids_to_suppress``)
    are neither shown nor sampled: the bars are exactly the distribution Sample draws from.
    """
    prompt_box = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="90%"))
    temperature = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="temperature",
                                      style=SLIDER_STYLE)
    top_k = widgets.IntSlider(value=0, min=0, max=min(100, tokenizer.vocab_size), description="top-k (0=off)",
                              style=SLIDER_STYLE)
    top_p = widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p", style=SLIDER_STYLE)
    seed = widgets.IntText(value=0, description="seed")
    button = widgets.Button(description="Sample", button_style="primary")
    text_out = widgets.HTML()
    figure = go.FigureWidget(distribution_figure([], []))
    state = {"error": False}  # text_out holds an error message (cleared once the prompt works again)

    def settings():
        return dict(temperature=temperature.value, top_k=top_k.value or None,
                    top_p=top_p.value if top_p.value < 1.0 else None)

    def show_error(error):
        text_out.value = f"<b>{html.escape(str(error))}</b>"
        state["error"] = True

    def redraw(*_):
        try:
            dist = next_token_distribution(model, tokenizer, prompt_box.value or "\n",
                                           suppress_special=suppress_special, **settings())
        except ValueError as error:
            show_error(error)
            return
        if state["error"]:
            text_out.value, state["error"] = "", False
        with figure.batch_update():
            figure.data[0].x = dist.tokens
            figure.data[0].y = dist.probs
            figure.data[0].marker.color = ["#1f77b4" if k else "#cccccc" for k in dist.kept]
            figure.layout.title = f"next token after {prompt_box.value[-20:]!r}"

    def sample(*_):
        try:
            text = sample_text(model, tokenizer, prompt_box.value or "\n", max_new_tokens,
                               seed=seed.value, suppress_special=suppress_special, **settings())
        except ValueError as error:
            show_error(f"error: {error}")
            return
        state["error"] = False
        text_out.value = f"<pre style='white-space: pre-wrap'>{html.escape(text)}</pre>"

    for control in (prompt_box, temperature, top_k, top_p):
        control.observe(redraw, names="value")
    button.on_click(sample)
    redraw()
    _show_static(figure)
    return widgets.VBox([prompt_box, widgets.HBox([temperature, top_k, top_p]), widgets.HBox([seed, button]),
                         figure, text_out])


def attention_explorer(model, tokenizer, prompt: str) -> widgets.Widget:
    """Layer and head sliders over the attention heatmap of ``prompt`` (edit the prompt to recompute).

    ``model`` may be a dict of named models (e.g. one per attention variant): a dropdown then picks one.
    For attention-free mixers the heatmap is their token-mixing matrix, drawn on a diverging scale
    symmetric around 0 and scaled to the shown map's largest |weight| (the colorbar names it);
    probabilities keep the fixed 0..1 scale (``figures.heatmap_scale``).
    """
    models = model if isinstance(model, dict) else {"model": model}
    variant = widgets.Dropdown(options=list(models), description="variant",
                               layout=widgets.Layout(display="flex" if len(models) > 1 else "none"))
    current = lambda: models[variant.value]  # noqa: E731
    prompt_box = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="90%"))
    layer = widgets.IntSlider(value=0, min=0, max=current().config.n_layer - 1, description="layer",
                              style=SLIDER_STYLE)
    head = widgets.IntSlider(value=0, min=0, max=current().config.n_head - 1, description="head",
                             style=SLIDER_STYLE)
    message = widgets.HTML()
    maps = {"value": attention_maps(current(), tokenizer, prompt)}
    labels = maps["value"].tokens
    figure = go.FigureWidget(attention_figure(maps["value"].probs[0, 0], labels, labels))

    def redraw(*_):
        current = maps["value"]
        names = current.tokens
        ticks = list(range(len(names)))
        values = current.probs[layer.value, head.value]
        with figure.batch_update():
            figure.data[0].z = values
            figure.data[0].x, figure.data[0].y = ticks, ticks
            figure.data[0].customdata = [[f"{q} -> {k}" for k in names] for q in names]
            figure.data[0].update(**heatmap_scale(values))  # 0..1 for probabilities, +-max|w| for mixers
            figure.layout.xaxis.update(**token_ticks(names))
            figure.layout.yaxis.update(**token_ticks(names))
            title = f"layer {layer.value}, head {head.value}"
            figure.layout.title = title if len(models) == 1 else f"{variant.value}: {title}"

    def recompute(*_):
        try:
            maps["value"] = attention_maps(current(), tokenizer, prompt_box.value)
            message.value = ""
        except ValueError as error:
            message.value = f"<b>{html.escape(str(error))}</b>"
            return
        layer.max, head.max = current().config.n_layer - 1, current().config.n_head - 1
        redraw()

    layer.observe(redraw, names="value")
    head.observe(redraw, names="value")
    prompt_box.observe(recompute, names="value")
    variant.observe(recompute, names="value")
    redraw()
    _show_static(figure)
    return widgets.VBox([prompt_box, widgets.HBox([variant, layer, head]), message, figure])


def masking_explorer(tokenizer, text: str, objectives: dict, rate: float = 0.15) -> widgets.Widget:
    """What each objective makes of ``text``: a dropdown picks the objective, a slider its rate, another the
    random draw; the text redraws with every position coloured by its role (``viz/corruption.py``).

    ``objectives`` maps a label to ``(what the rate means, make)`` where ``make(rate)`` builds the objective.
    """
    choice = widgets.Dropdown(options=list(objectives), description="objective", style=SLIDER_STYLE)
    rate_slider = widgets.FloatSlider(value=rate, min=0.05, max=0.8, step=0.05, description="rate",
                                      style=SLIDER_STYLE)
    draw = widgets.IntSlider(value=0, min=0, max=20, description="random draw", style=SLIDER_STYLE)
    prompt_box = widgets.Text(value=text, description="text", layout=widgets.Layout(width="90%"))
    view = widgets.HTML()

    def redraw(*_):
        meaning, make = objectives[choice.value]
        try:
            corruption = corrupt_text(make(rate_slider.value), tokenizer, prompt_box.value, seed=draw.value)
        except ValueError as error:
            view.value = f"<b>{html.escape(str(error))}</b>"
            return
        view.value = corruption_html(corruption, 0, tokenizer,
                                     title=f"{choice.value}: rate {rate_slider.value:.2f} = {meaning}")

    for control in (choice, rate_slider, draw, prompt_box):
        control.observe(redraw, names="value")
    redraw()
    if static_figures():
        display(HTML(view.value))
    return widgets.VBox([prompt_box, widgets.HBox([choice, rate_slider, draw]), view])


def denoising_explorer(model, objective, tokenizer, prompt: str, gen_length: int, samplers=None,
                       steps: Optional[int] = None) -> widgets.Widget:
    """Watch a masked diffusion model write ``gen_length`` tokens after ``prompt`` (type [MASK] into the prompt to
    infill there too): a dropdown picks the sampler, a slider the number of steps, another moves through them.

    The sampling runs when the prompt, sampler, steps or seed change; the step slider only redraws.
    """
    samplers = list(samplers or SAMPLERS)
    block = model.config.block_size
    prompt_box = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="90%"))
    sampler = widgets.Dropdown(options=samplers, description="sampler", style=SLIDER_STYLE)
    n_steps = widgets.IntSlider(value=steps or gen_length, min=1, max=gen_length, description="steps",
                                style=SLIDER_STYLE)
    seed = widgets.IntText(value=0, description="seed", layout=widgets.Layout(width="160px"))
    position = widgets.IntSlider(value=n_steps.value, min=0, max=n_steps.value, description="show step",
                                 style=SLIDER_STYLE)
    view = widgets.HTML()
    state = {"trace": None}

    def redraw(*_):
        if state["trace"] is not None:
            view.value = denoising_html(state["trace"], position.value, tokenizer,
                                        title=f"{sampler.value}, {n_steps.value} steps")

    def resample(*_):
        try:
            ids = encode_with_masks(tokenizer, prompt_box.value)
            canvas = torch.tensor(ids + [tokenizer.mask_id] * gen_length)[-block:]
            trace = sample(model, objective, canvas, n_steps.value, sampler=sampler.value,
                           generator=torch.Generator().manual_seed(seed.value))
        except ValueError as error:
            view.value = f"<b>{html.escape(str(error))}</b>"
            return
        state["trace"] = trace
        last = len(trace.states) - 1
        position.max = last
        position.value = last
        redraw()

    for control in (prompt_box, sampler, n_steps, seed):
        control.observe(resample, names="value")
    position.observe(redraw, names="value")
    resample()
    if static_figures():
        display(HTML(view.value))
    return widgets.VBox([prompt_box, widgets.HBox([sampler, n_steps, seed]), position, view])
