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


def attention_figure(probs: np.ndarray, query_labels: Sequence[str], key_labels: Sequence[str],
                     title: str = "Attention") -> go.Figure:
    """Heatmap of one head's attention probabilities: rows are queries, columns keys."""
    probs = np.asarray(probs)
    tick_font = dict(size=max(7, min(12, 480 // max(1, len(key_labels)))))  # long prompts: smaller labels
    fig = go.Figure(go.Heatmap(z=probs, x=list(range(len(key_labels))), y=list(range(len(query_labels))),
                               colorscale="Blues", zmin=0.0, zmax=1.0, colorbar=dict(title="p"),
                               customdata=np.array([[f"{q} -> {k}" for k in key_labels] for q in query_labels]),
                               hovertemplate="%{customdata}: %{z:.3f}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=title, height=480, width=560,
                      xaxis=dict(title="key", tickvals=list(range(len(key_labels))), ticktext=list(key_labels),
                                 tickfont=tick_font),
                      yaxis=dict(title="query", autorange="reversed", tickvals=list(range(len(query_labels))),
                                 ticktext=list(query_labels), tickfont=tick_font),
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
