"""Plotly figures from plain numbers. No model, no widget, no Jupyter needed.

Every function takes arrays/lists and returns a ``plotly.graph_objects.Figure``
so the same picture works in a notebook, a saved HTML file or a test.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

TEMPLATE = "plotly_white"


def smooth(values: Sequence[float], window: int = 20) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or window <= 1:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.maximum(0, np.arange(1, len(values) + 1) - window)]) / counts


def loss_figure(history: dict, floor: Optional[float] = None, title: str = "Loss",
                y_title: str = "loss (nats / token)", smoothing: int = 20) -> go.Figure:
    """Training loss (smoothed), validation loss, and an optional entropy floor line."""
    fig = go.Figure(layout=dict(template=TEMPLATE, title=title, xaxis_title="step", yaxis_title=y_title,
                                height=360, margin=dict(l=50, r=20, t=50, b=40)))
    train = history.get("train", [])
    fig.add_scatter(x=[r["step"] for r in train], y=smooth([r["loss"] for r in train], smoothing),
                    mode="lines", name="train (smoothed)")
    evals = history.get("eval", [])
    fig.add_scatter(x=[r["step"] for r in evals], y=[r["val_loss"] for r in evals],
                    mode="lines+markers", name="validation")
    if floor is not None:
        fig.add_hline(y=floor, line_dash="dash", line_color="gray",
                      annotation_text=f"entropy floor {floor:.3f}", annotation_position="bottom right")
    return fig


def is_probability_map(values: np.ndarray, atol: float = 1e-3) -> bool:
    """True when every row is a probability distribution (softmax attention, linear attention).

    The token-mixing matrices of GLA, the delta rule and SSD are not: their weights
    can be negative and their rows need not sum to 1.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return True
    return bool(np.all(values >= -atol) and np.allclose(values.sum(-1), 1.0, atol=atol))


def heatmap_scale(values: np.ndarray) -> dict:
    """Colour settings for one attention heatmap (``go.Heatmap`` keyword arguments).

    Probabilities keep a fixed 0..1 sequential scale, so heads and layers compare
    directly. A mixing matrix gets a diverging scale symmetric around 0 and scaled to
    its own largest |weight| (named in the colorbar title), so a small map (SSD, within
    +-0.04) is as visible as a large one (GLA, several units), negative weights show in
    blue and decay along a row reads as fading colour.
    """
    values = np.asarray(values, dtype=float)
    if is_probability_map(values):
        return dict(colorscale="Blues", reversescale=False, zmin=0.0, zmax=1.0, zmid=None,
                    colorbar=dict(title=dict(text="p")))
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 1.0
    top = top if top > 0 else 1.0
    return dict(colorscale="RdBu", reversescale=True, zmin=-top, zmax=top, zmid=0.0,
                colorbar=dict(title=dict(text=f"weight<br>(±{top:.3g})")))


MAX_TICKS = 24  # at most this many token labels per axis; longer prompts label every 2nd, 4th, ... token


def token_ticks(labels: Sequence[str], max_ticks: int = MAX_TICKS) -> dict:
    """Axis settings that label every token of a short prompt and every 2nd/4th/8th... of a long one."""
    n = len(labels)
    step = 1
    while n / step > max_ticks:
        step *= 2
    positions = list(range(0, n, step))
    size = 12 if n <= 12 else 10 if step == 1 else 9
    return dict(tickmode="array", tickvals=positions, ticktext=[labels[i] for i in positions],
                tickfont=dict(size=size), tickangle=0)


def attention_figure(probs: np.ndarray, query_labels: Sequence[str], key_labels: Sequence[str],
                     title: str = "Attention") -> go.Figure:
    """Heatmap of one head's attention probabilities (or a mixer's token-mixing matrix): rows are queries,
    columns keys. Colours follow ``heatmap_scale``; hover shows every token pair and its value."""
    probs = np.asarray(probs)
    scale = heatmap_scale(probs)
    fig = go.Figure(go.Heatmap(z=probs, x=list(range(len(key_labels))), y=list(range(len(query_labels))),
                               **scale,
                               customdata=np.array([[f"{q} -> {k}" for k in key_labels] for q in query_labels]),
                               hovertemplate="%{customdata}: %{z:.3g}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=title, height=600, width=640,
                      xaxis=dict(title="key", constrain="domain", **token_ticks(key_labels)),
                      yaxis=dict(title="query", autorange="reversed", scaleanchor="x", constrain="domain",
                                 **token_ticks(query_labels)),
                      margin=dict(l=60, r=20, t=50, b=60))
    return fig


def distribution_figure(labels: Sequence[str], probs: Sequence[float], kept: Optional[Sequence[bool]] = None,
                        title: str = "Next-token distribution") -> go.Figure:
    """Bar chart of a next-token distribution; tokens removed by top-k/top-p drawn in gray."""
    colors = None if kept is None else ["#1f77b4" if k else "#cccccc" for k in kept]
    fig = go.Figure(go.Bar(x=list(labels), y=list(probs), marker_color=colors))
    fig.update_layout(template=TEMPLATE, title=title, yaxis_title="probability", yaxis_range=[0, 1],
                      height=320, margin=dict(l=50, r=20, t=50, b=40))
    return fig


def bar_figure(labels: Sequence[str], values: Sequence[float], title: str, y_title: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(labels), y=list(values), text=[f"{v:.3g}" for v in values],
                           textposition="outside"))
    fig.update_layout(template=TEMPLATE, title=title, yaxis_title=y_title, height=340,
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig


def bars_figure(labels: Sequence[str], columns: dict[str, Sequence[float]], title: str) -> go.Figure:
    """One bar chart per column, side by side, sharing the labels (e.g. variants vs loss, speed, memory)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(columns), subplot_titles=list(columns))
    for i, values in enumerate(columns.values(), start=1):
        fig.add_bar(x=list(labels), y=list(values), text=[_short(v) for v in values], textposition="outside",
                    cliponaxis=False, showlegend=False, row=1, col=i)
    fig.update_layout(template=TEMPLATE, title=title, height=380, margin=dict(l=50, r=20, t=70, b=90))
    return fig


def lines_figure(x: Sequence[float], series: dict[str, Sequence[float]], title: str, x_title: str, y_title: str,
                 log_x: bool = False, log_y: bool = False, vline: Optional[float] = None,
                 vline_text: str = "", points: Optional[dict[str, tuple[Sequence, Sequence]]] = None,
                 dashed: Sequence[str] = ()) -> go.Figure:
    """Several named curves over one x axis; ``points`` adds markers (e.g. measurements on formula lines);
    curves named in ``dashed`` are drawn dashed (so coinciding curves stay visible)."""
    fig = go.Figure(layout=dict(template=TEMPLATE, title=title, xaxis_title=x_title, yaxis_title=y_title,
                                height=400, margin=dict(l=60, r=20, t=50, b=50)))
    colors = {}
    for i, (name, values) in enumerate(series.items()):
        colors[name] = PALETTE[i % len(PALETTE)]
        fig.add_scatter(x=list(x), y=list(values), mode="lines", name=name,
                        line=dict(color=colors[name], dash="dash" if name in dashed else "solid"))
    for name, (px, py) in (points or {}).items():
        fig.add_scatter(x=list(px), y=list(py), mode="markers", name=f"{name} (measured)", showlegend=False,
                        marker=dict(color=colors.get(name), size=8, symbol="circle-open", line_width=2))
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    if vline is not None:
        fig.add_vline(x=vline, line_dash="dash", line_color="gray", annotation_text=vline_text)
    return fig


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def heatmap_grid_figure(panels: dict[str, np.ndarray], title: str, columns: int = 3,
                        colorbar_title: str = "") -> go.Figure:
    """Small multiples: one (T x T) heatmap per name (rows: queries, columns: keys).

    Probability maps share one 0..1 scale (``colorbar_title``). Mixing matrices that are not
    probabilities (GLA, delta rule, SSD: signed, rows not summing to 1) are divided by their own
    largest |weight| and drawn on a second, diverging -1..1 scale, so each shows its pattern.
    """
    from plotly.subplots import make_subplots

    rows = -(-len(panels) // columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=list(panels), horizontal_spacing=0.04,
                        vertical_spacing=0.08)
    signed = False
    for i, values in enumerate(panels.values()):
        values = np.asarray(values, dtype=float)
        axis = "coloraxis"
        if not is_probability_map(values):
            top = float(np.abs(values).max()) or 1.0
            values, axis, signed = values / top, "coloraxis2", True
        fig.add_heatmap(z=values, coloraxis=axis, row=i // columns + 1, col=i % columns + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(template=TEMPLATE, title=title, height=280 * rows + 60, width=760 + (80 if signed else 0),
                      coloraxis=dict(colorscale="Blues", cmin=0, cmax=1,
                                     colorbar=dict(title=colorbar_title, x=1.0 if signed else None)),
                      margin=dict(l=20, r=20, t=70, b=20))
    if signed:
        fig.update_layout(coloraxis2=dict(colorscale="RdBu", reversescale=True, cmin=-1, cmax=1, cmid=0,
                                          colorbar=dict(title="weight /<br>max|weight|<br>(per panel)", x=1.12)))
    return fig


def _short(value: float) -> str:
    """45197 -> '45.2k', 0.5012 -> '0.501': bar labels that fit."""
    return f"{value / 1000:.1f}k" if abs(value) >= 1000 else f"{value:.3g}"
