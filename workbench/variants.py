"""Named attention setups for side-by-side comparisons, in one place.

Notebook 03 and ``workbench bench --which decode`` compare the same list:
each entry turns a base ``ModelConfig`` into the variant, changing only how
tokens mix (and the position scheme that variant needs). Softmax variants use
RoPE, the modern default; recurrent mixers need no position signal at all.

| setup          | what changes                                  | cache per layer after T tokens |
|----------------|-----------------------------------------------|--------------------------------|
| MHA            | nothing: every head has its own K and V       | 2 T n_head d_head              |
| GQA            | n_head / 2 key/value heads, shared by 2 each  | 2 T (n_head / 2) d_head        |
| MQA            | one key/value head for all                    | 2 T d_head                     |
| MLA            | a compressed latent + one RoPE key            | T (d_c + d_r)                  |
| sliding window | only the last W = block / 4 keys              | 2 min(T, W) n_head d_head      |
| linear         | phi(q) . phi(k) instead of softmax            | n_head d_head^2 (constant)     |
| GLA            | linear + data-dependent decay per channel     | n_head d_head^2 (constant)     |
| delta rule     | linear + error-correcting write, decay        | n_head d_head^2 (constant)     |
| SSD (Mamba2)   | a selective state space model, no attention   | heads x state x head dim + conv|
"""
from __future__ import annotations

from typing import Callable

from .config import ModelConfig
from .models import ATTENTION

SETUPS: dict[str, Callable[[ModelConfig], dict]] = {
    "MHA": lambda c: dict(attention="mha", position="rope", n_kv_head=c.n_head),
    "GQA": lambda c: dict(attention="mha", position="rope", n_kv_head=max(1, c.n_head // 2)),
    "MQA": lambda c: dict(attention="mha", position="rope", n_kv_head=1),
    "MLA": lambda c: dict(attention="mla", position="rope", n_kv_head=c.n_head),
    "sliding window": lambda c: dict(attention="sliding_window", position="rope", n_kv_head=c.n_head,
                                     window=max(1, c.block_size // 4)),
    "linear": lambda c: dict(attention="linear", position="none", n_kv_head=c.n_head),
    "GLA": lambda c: dict(attention="gla", position="none", n_kv_head=c.n_head),
    "delta rule": lambda c: dict(attention="delta", position="none", n_kv_head=c.n_head),
    "SSD (Mamba2)": lambda c: dict(attention="ssd", position="none", n_kv_head=c.n_head),
}


def setup_names() -> list[str]:
    """The setups whose attention variant is registered, in the table's order."""
    return [name for name, changes in SETUPS.items()
            if changes(ModelConfig())["attention"] in ATTENTION]


def setup_config(name: str, base: ModelConfig) -> ModelConfig:
    """``base`` turned into setup ``name`` (every other field kept)."""
    if name not in SETUPS:
        raise ValueError(f"unknown setup {name!r}; choose one of: {', '.join(setup_names())}")
    return base.replace(**SETUPS[name](base))
