"""Helpers shared by the per-architecture interop modules."""
from __future__ import annotations

import torch

from ..config import ModelConfig


def needs_mismatches(config: ModelConfig, needs: dict) -> list[str]:
    """'field=wanted (got actual)' for each field of ``needs`` that ``config`` does not have."""
    return [f"{k}={v!r} (got {getattr(config, k)!r})" for k, v in needs.items() if getattr(config, k) != v]


def same_kv_heads(config: ModelConfig) -> list[str]:
    """The mismatch for architectures without grouped-query attention."""
    if config.n_kv_head != config.n_head:
        return [f"n_kv_head == n_head={config.n_head} (got {config.n_kv_head})"]
    return []


def load_exactly(module: torch.nn.Module, state: dict) -> None:
    """Copy ``state`` into ``module``; every name must match exactly (a mapping bug fails loudly)."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight mapping bug: missing {missing}, unexpected {unexpected}")
