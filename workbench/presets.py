"""One switch for sizes everywhere: ``WORKBENCH_PRESET=ci|cpu|gpu``.

* ``ci``  – every notebook executes in about a minute on 2 CPU cores and
  still shows (and asserts) that learning happened.
* ``cpu`` – the default without a GPU: each notebook runs in at most ~5
  minutes on a 2-core laptop and shows the phenomenon clearly.
* ``gpu`` – larger models that use a single GPU well (the default when CUDA
  is available).

Notebooks and the CLI ask ``preset()`` for model and training configs and
override only what their lesson is about.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .config import ModelConfig, TrainConfig
from .validation import check_choice

PRESET_NAMES = ("ci", "cpu", "gpu")


@dataclass(frozen=True)
class Preset:
    name: str
    model: dict[str, Any]              # ModelConfig fields
    train: dict[str, Any]              # TrainConfig fields
    corpus_chars: int                  # characters of synthetic text to generate
    sample_tokens: int                 # tokens to generate in demos
    notes: dict[str, Any] = field(default_factory=dict)

    def model_config(self, vocab_size: int, **overrides) -> ModelConfig:
        return ModelConfig(**{**self.model, "vocab_size": vocab_size, **overrides})

    def train_config(self, **overrides) -> TrainConfig:
        return TrainConfig(**{**self.train, **overrides})


PRESETS = {
    "ci": Preset(
        name="ci",
        model=dict(n_layer=2, n_head=4, d_model=64, block_size=64, dropout=0.0),
        train=dict(steps=250, batch_size=32, lr=1e-2, min_lr=1e-3, warmup_steps=20, weight_decay=0.0,
                   eval_every=125, eval_batches=8),
        corpus_chars=100_000,
        sample_tokens=120,
    ),
    "cpu": Preset(
        name="cpu",
        model=dict(n_layer=4, n_head=4, d_model=128, block_size=64, dropout=0.0),
        train=dict(steps=600, batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=50, weight_decay=0.0,
                   eval_every=100, eval_batches=20),
        corpus_chars=400_000,
        sample_tokens=300,
    ),
    "gpu": Preset(
        name="gpu",
        model=dict(n_layer=6, n_head=6, d_model=384, block_size=256, dropout=0.1),
        train=dict(steps=3000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=200, weight_decay=0.1,
                   eval_every=250, eval_batches=50),
        corpus_chars=2_000_000,
        sample_tokens=500,
    ),
}


def preset_name(name: Optional[str] = None) -> str:
    """The preset in force: the argument, else $WORKBENCH_PRESET, else gpu with CUDA and cpu without."""
    name = name or os.environ.get("WORKBENCH_PRESET") or ("gpu" if torch.cuda.is_available() else "cpu")
    check_choice("preset", "name (or $WORKBENCH_PRESET)", name, PRESET_NAMES)
    return name


def preset(name: Optional[str] = None) -> Preset:
    return PRESETS[preset_name(name)]
