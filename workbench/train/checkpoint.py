"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A run directory holds numbered checkpoints and a pointer to the newest:

    run/
      latest.json            {"checkpoint": "step-000500"}
      step-000500/
        checkpoint.json      format, configs, step, history, file sizes + sha256
        model.safetensors    the weights (any safetensors reader can open them)
        trainer.safetensors  optimizer moments and RNG states (for exact resume)
        tokenizer.json       when the run has a tokenizer

A checkpoint is written to a temporary folder and renamed into place, and
``latest.json`` is replaced atomically afterwards, so a crash mid-save never
leaves ``latest`` pointing at a half-written checkpoint. Loading verifies
every file's size and hash before touching the model, so a truncated or
foreign file gives one clear error and changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

FORMAT = "lm-workbench-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


# ---------------------------------------------------------------- tensors <-> dicts
def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied (shared) tensors stored once, contiguous, on the CPU."""
    seen: dict[int, str] = {}
    tensors = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen:
            continue
        seen[key] = name
        tensors[name] = tensor.detach().cpu().contiguous()
    return tensors


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors into ``model`` after checking every name and shape (all or nothing)."""
    expected = model_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{n}: checkpoint {tuple(tensors[n].shape)} vs model {tuple(expected[n].shape)}"
             for n in expected if n in tensors and tensors[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:5]}")
        raise CheckpointError(
            "the checkpoint's weights do not fit this model (" + "; ".join(parts) + "); "
            "load it with workbench.train.load_model(path), which builds the model from the checkpoint's config"
        )
    model.load_state_dict(tensors, strict=False)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                tensors[f"optimizer.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            index, name = key[len("optimizer."):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(directory: Path, tensor_files: dict[str, dict[str, torch.Tensor]], meta: dict,
                     extra_files: Optional[dict[str, str]] = None) -> Path:
    """Write files into ``directory`` atomically: a temp folder renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for filename, tensors in tensor_files.items():
        save_file(tensors, str(tmp / filename))
    for filename, text in (extra_files or {}).items():
        (tmp / filename).write_text(text)
    for path in sorted(tmp.iterdir()):
        files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    meta = {"format": FORMAT, "version": VERSION, **meta, "files": files}
    (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=1))
    _fsync_dir(tmp)
    if directory.exists():  # re-saving the same step: swap, then remove the old copy
        old = directory.parent / f".{directory.name}.old-{os.getpid()}"
        os.rename(directory, old)
        os.rename(tmp, directory)
        shutil.rmtree(old)
    else:
        os.rename(tmp, directory)
    _fsync_dir(directory.parent)
    return directory


def point_latest(run_dir: Path, checkpoint: Path) -> None:
    tmp = run_dir / f".latest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"checkpoint": checkpoint.name}))
    os.replace(tmp, run_dir / "latest.json")
    _fsync_dir(run_dir)


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step-* checkpoints (never the latest one)."""
    latest = resolve(run_dir)
    steps = sorted(p for p in run_dir.glob("step-*") if p.is_dir())
    for path in steps[:-keep] if keep > 0 else []:
        if path != latest:
            shutil.rmtree(path)


def resolve(path) -> Path:
    """A run directory (follows latest.json) or a checkpoint directory -> the checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    pointer = path / "latest.json"
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text())["checkpoint"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{pointer} is corrupt ({error}); point it at a step-* folder in {path}") from None
        return path / name
    return path


def read_checkpoint(path) -> tuple[Path, dict]:
    """Find, parse and verify a checkpoint; returns (directory, metadata)."""
    directory = resolve(path)
    meta_path = directory / "checkpoint.json"
    if not meta_path.is_file():
        raise CheckpointError(
            f"{directory} is not a workbench checkpoint (no checkpoint.json); pass a run directory "
            "written by the Trainer or one of its step-* folders"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{meta_path} is not valid JSON ({error}); the checkpoint is corrupt") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a workbench checkpoint (format={meta.get('format')!r})")
    for filename, info in meta.get("files", {}).items():
        file = directory / filename
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing; the checkpoint is incomplete")
        size = file.stat().st_size
        if size != info["bytes"] or _sha256(file) != info["sha256"]:
            raise CheckpointError(
                f"checkpoint file {file} is truncated or corrupt (expected {info['bytes']} bytes with "
                f"sha256 {info['sha256'][:12]}..., found {size} bytes); use an earlier checkpoint"
            )
    return directory, meta


def read_tensors(directory: Path, filename: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(directory / filename))
    except Exception as error:  # safetensors raises its own error type
        raise CheckpointError(f"cannot read {directory / filename}: {error}") from None


# ---------------------------------------------------------------- models alone
def save_model(model, path, tokenizer=None) -> Path:
    """Save weights + config (+ tokenizer) for inference, in the checkpoint format."""
    extra = {"tokenizer.json": tokenizer.to_json()} if tokenizer is not None else None
    return write_checkpoint(Path(path), {"model.safetensors": model_tensors(model)},
                            {"model_config": model.config.to_dict()}, extra)


def load_model(path, device: str | torch.device = "cpu"):
    """Build a GPT from a checkpoint (run dir or step folder). Returns (model, tokenizer or None)."""
    from ..config import ModelConfig
    from ..models import GPT

    directory, meta = read_checkpoint(path)
    model = GPT(ModelConfig.from_dict(meta["model_config"]))
    load_model_tensors(model, read_tensors(directory, "model.safetensors"))
    return model.to(device), load_checkpoint_tokenizer(directory)


def load_checkpoint_tokenizer(directory: Path):
    file = Path(directory) / "tokenizer.json"
    if not file.is_file():
        return None
    from ..data.tokenizers import load_tokenizer

    return load_tokenizer(file)


# ---------------------------------------------------------------- run directories
def checkpoint_folders(run_dir) -> list[Path]:
    """The step-* checkpoint folders of a run directory, oldest first."""
    return sorted(p for p in Path(run_dir).glob("step-*") if p.is_dir())


def remove_run(run_dir) -> None:
    """Delete a run's checkpoints (step-* folders, latest.json and leftover temporaries), nothing else."""
    run_dir = Path(run_dir)
    pointer = run_dir / "latest.json"
    if pointer.is_file():
        pointer.unlink()
    for folder in checkpoint_folders(run_dir):
        shutil.rmtree(folder)
