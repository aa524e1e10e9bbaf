"""Shared test setup: quiet, offline, small, and one thread per worker.

`python3 run.py test` already sets these for the whole run (notebook kernels
included); the defaults here make a bare `pytest tests` behave the same.
They must be set before transformers / huggingface_hub / tqdm are imported,
which is why this happens at import time rather than in a fixture.
"""

import os

import pytest

_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # hub misses fail in ~3 s instead of ~27 s of retries
    "HF_DATASETS_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "WORKBENCH_PRESET": "ci",
    "MPLBACKEND": "Agg",
}
for _key, _value in _ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

# run.py runs 2 xdist workers on 2 cores with OMP_NUM_THREADS=1; make torch
# honour it even if something configured threads differently before us.
if os.environ.get("OMP_NUM_THREADS") == "1":
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    else:
        torch.set_num_threads(1)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point WORKBENCH_CACHE at an empty per-test directory and return it."""
    cache = tmp_path / "workbench-cache"
    cache.mkdir()
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    return cache
