"""Preparing a class: fill the training cache, write the student edition.

    workbench warm [--preset cpu] [NOTEBOOK ...]     run every notebook once, headless: everything the
                                                     notebooks train lands in the training cache
                                                     (workbench/train/cache.py), so in class each
                                                     training cell loads in about a second
    workbench student-edition DIR [--overwrite]      the notebooks with the solutions taken out
                                                     (workbench/exercises/editions.py)

``warm`` executes the repository's notebooks in memory (nothing is written back to them) in a fresh
kernel each, under the given preset, and prints each notebook's wall time. Run it twice to see the
time a student waits with a warm cache.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from .exercises.editions import NOTEBOOKS
from .train.cache import SWITCH_ENV, cache_dir

QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def notebook_paths(notebooks: Optional[Iterable] = None) -> list:
    paths = [Path(p) for p in notebooks] if notebooks else sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such notebook: {', '.join(missing)}")
    if not paths:
        raise FileNotFoundError(f"no notebooks found in {NOTEBOOKS}")
    return paths


def warm_cache(preset: str, notebooks: Optional[Iterable] = None, timeout_s: int = 1800) -> list:
    """Execute each notebook once under ``preset`` (filling the training cache). Returns [(name, seconds)]."""
    from .publish import execute

    directory = cache_dir()
    if directory is None:
        raise ValueError(f"{SWITCH_ENV}=off: the training cache is switched off, so warming it would do nothing. "
                         f"Unset {SWITCH_ENV} and run again")
    paths = notebook_paths(notebooks)
    env_before = {k: os.environ.get(k) for k in ("WORKBENCH_PRESET", *QUIET_ENV)}
    os.environ.update({"WORKBENCH_PRESET": preset, **QUIET_ENV})  # the kernels inherit this environment
    timings = []
    try:
        for path in paths:
            print(f"running {path.name} (preset {preset}) ...", flush=True)
            _, seconds = execute(path, preset, timeout_s)  # in memory: the notebook file is not written
            timings.append((path.name, seconds))
            print(f"  {seconds:6.1f} s", flush=True)
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    print(f"\ntraining cache: {directory}")
    return timings
