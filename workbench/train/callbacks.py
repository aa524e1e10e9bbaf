"""Callbacks: how a training run reports itself.

The Trainer calls ``on_train_begin``, ``on_step`` (after every optimizer
step), ``on_eval`` (after every evaluation) and ``on_train_end``. Plain log
lines (``PrintLogger``) suit scripts, the CLI and CI; the notebooks use the
live plotly loss curve in ``workbench.viz.widgets.LiveLossPlot``.
"""
from __future__ import annotations

import sys


class Callback:
    def on_train_begin(self, trainer) -> None: ...

    def on_step(self, trainer, record: dict) -> None: ...

    def on_eval(self, trainer, record: dict) -> None: ...

    def on_train_end(self, trainer) -> None: ...


class PrintLogger(Callback):
    """One line per evaluation (and every ``every`` steps if given)."""

    def __init__(self, every: int = 0, stream=None):
        self.every = every
        self.stream = stream or sys.stdout

    def on_step(self, trainer, record: dict) -> None:
        if self.every and record["step"] % self.every == 0:
            print(
                f"step {record['step']:>6} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                f"{record['tokens_per_s']:,.0f} tok/s | {record['elapsed']:.1f} s",
                file=self.stream, flush=True,
            )

    def on_eval(self, trainer, record: dict) -> None:
        print(
            f"step {record['step']:>6} | train {record['train_loss']:.4f} | val {record['val_loss']:.4f} | "
            f"{record['elapsed']:.1f} s",
            file=self.stream, flush=True,
        )
