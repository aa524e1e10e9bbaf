"""Device, dtype and seed: the three things that make a run repeatable.

``pick_device()`` prefers CUDA, then Apple's MPS, then the CPU, and any
choice can be forced (``device="cpu"``). On CUDA, matrix work runs under
bfloat16 autocast (weights and optimizer stay fp32); elsewhere everything is
fp32. ``seed_everything(seed)`` makes the same run repeat on the same machine.
"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .validation import check_choice, check_int


def pick_device(preference: str = "auto") -> torch.device:
    check_choice("device", "preference", preference, ("auto", "cpu", "cuda", "mps"))
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is visible; use device='auto' or 'cpu'")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was requested but Apple MPS is not available; use device='auto' or 'cpu'")
    return torch.device(preference)


def autocast_dtype(device: torch.device, preference: str = "auto") -> torch.dtype | None:
    """The autocast dtype for matrix work, or None for plain fp32."""
    check_choice("dtype", "preference", preference, ("auto", "float32", "bfloat16"))
    if preference == "float32":
        return None
    if preference == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def seeded(seed: int | None):
    """Run the block with torch's CPU RNG seeded to ``seed``, then put the global RNG back as it was.

    ``seed=None`` runs the block on the global RNG unchanged. Models are built inside this, so the
    same seed gives the same initial weights whatever ran before.
    """
    if seed is None:
        yield
        return
    check_int("seeded", "seed", seed, minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
