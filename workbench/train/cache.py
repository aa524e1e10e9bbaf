"""Training cache: a run trained once loads in a second the next time (no waiting in class).

``cached_fit(trainer)`` stands where a notebook would call ``trainer.fit()``. It computes a key from
everything that decides the outcome of the run:

* the model config and the initial weights (their sha256: this covers the seed),
* the training config, the device type and autocast dtype,
* the objective (its class and settings),
* the data (``TokenData.fingerprint()``: the token ids' and the tokenizer's sha256),
* the code version (a sha256 of the library files that training runs through) and torch's version,

and looks for ``<cache>/<key>/``: a complete checkpoint of that exact run. If it is there, the model,
optimizer, step, history and RNG state are restored from it (so ``fit()`` afterwards continues exactly
as if the run had just ended) and the callbacks are shown the finished run (a ``LiveLossPlot`` draws the
whole curve). If not, the trainer trains live, and a run that reached its last step is saved into the
cache (written to a temporary folder and renamed into place, so a crash or a second process never
leaves half an entry). A stopped run is not cached. Either way it prints which of the two happened.

The cache folder is ``$WORKBENCH_CACHE/training`` (the tokenized data sits beside it in
``$WORKBENCH_CACHE/tokens``), by default ``~/.cache/lm-workbench/training``. ``WORKBENCH_TRAINING_CACHE=off``
turns it off (every run trains live). Deleting the folder is always safe.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import torch

from ..data.token_data import cache_root
from .checkpoint import CheckpointError

SWITCH_ENV = "WORKBENCH_TRAINING_CACHE"
OFF = ("off", "0", "none", "false", "no")
# Library files that do not change what training computes; editing them keeps the cache valid.
NOT_TRAINING_CODE = ("exercises/", "viz/", "hf/", "probing/", "diffusion/", "cli.py", "publish.py", "bench.py", "bench_decode.py",
                     "inspect.py", "generate.py", "equal_compute.py", "bench_diffusion.py")
PACKAGE = Path(__file__).resolve().parents[1]


def cache_dir() -> Optional[Path]:
    """The cache folder, or None when ``WORKBENCH_TRAINING_CACHE=off``."""
    if os.environ.get(SWITCH_ENV, "").strip().lower() in OFF:
        return None
    return cache_root() / "training"


def code_version() -> str:
    """sha256 of the library's training code (every .py file of the package except NOT_TRAINING_CODE)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(NOT_TRAINING_CODE):
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _objective_description(objective) -> dict:
    """The objective's class, its options, and the initial weights of what it owns (after Trainer setup)."""
    return {"class": f"{type(objective).__module__}.{type(objective).__qualname__}",
            "settings": objective.to_dict(), "initial_weights": _weights_sha256(objective)}


def run_key(trainer) -> str:
    """The content address of the run ``trainer.fit()`` would do from its current (fresh) state."""
    fingerprint = getattr(trainer.data, "fingerprint", None)
    description = {
        "model_config": trainer.model.config.to_dict(),
        "initial_weights": _weights_sha256(trainer.model),
        "train_config": trainer.config.to_dict(),
        "device": trainer.device.type,
        "autocast": str(trainer.amp_dtype),
        "objective": _objective_description(trainer.objective),
        "data": fingerprint() if callable(fingerprint) else None,
        "code": code_version(),
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def cached_fit(trainer, quiet: bool = False) -> dict:
    """``trainer.fit()``, or the same finished run loaded from the cache. Returns the history.

    Sets ``trainer.from_cache`` to True or False. A trainer that has already trained (step > 0) just
    continues with ``fit()``: only whole runs from a fresh start are cached.
    """
    say = (lambda message: None) if quiet else print
    trainer.from_cache = False
    directory = cache_dir()
    if directory is None or trainer.step != 0:
        return trainer.fit()
    key = run_key(trainer)
    entry = directory / key
    if (entry / "latest.json").is_file():
        try:
            trainer.load_checkpoint(entry)
        except (CheckpointError, OSError, ValueError) as error:
            say(f"the cached run {entry} cannot be read ({error}); training again")
        else:
            trainer.from_cache = True
            for callback in trainer.callbacks:
                callback.on_train_begin(trainer)
                callback.on_train_end(trainer)
            say(f"loaded from the training cache: {trainer.step} steps that took {trainer.elapsed:.1f} s to train "
                f"(cache: {directory}; set {SWITCH_ENV}=off to train live)")
            return trainer.history
    history = trainer.fit()
    if trainer.interrupted or trainer.step < trainer.config.steps:
        say(f"not cached: the run stopped at step {trainer.step} of {trainer.config.steps}")
        return history
    _store(trainer, directory, entry)
    say(f"trained {trainer.step} steps in {trainer.elapsed:.1f} s; saved to the training cache ({directory})")
    return history


def _store(trainer, directory: Path, entry: Path) -> None:
    """Save the finished run to ``entry`` atomically; a cache that cannot be written only costs time."""
    temporary = directory / f".{entry.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(temporary)
        try:
            temporary.rename(entry)
        except OSError:  # another process stored the same run first: theirs is identical
            if not (entry / "latest.json").is_file():
                raise
    except OSError as error:
        print(f"note: could not write the training cache at {directory} ({error}); "
              f"the run is fine, it just will not load instantly next time")
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
