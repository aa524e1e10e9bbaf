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
foreign file gives one clear error and changes nothing. Every way a run
directory can be damaged (a hand-edited pointer, binary garbage, a missing
field, a negative step) raises one ``CheckpointError`` that names the file,
the problem and the fix (the checks are in ``checkpoint_checks.py``). A save
killed outright (kill -9, power loss) leaves dot-named temporaries behind;
the next save into the run sweeps them away.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from .checkpoint_checks import (MISSING, RESAVE, CheckpointError, check_file, check_model_config,  # noqa: F401
                                check_training_state, corrupt, describe, is_object, is_plain_name, need,
                                read_json_object, sha256)

FORMAT = "lm-workbench-checkpoint"
VERSION = 1


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


def objective_tensors(objective: torch.nn.Module, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the objective owns (ELECTRA's generator, a head), without the tensors it shares with the model:
    those are saved once, in model.safetensors."""
    seen = {t.data_ptr() for t in model.state_dict().values()}
    tensors = {}
    for name, tensor in objective.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.detach().cpu().contiguous()
    return tensors


def check_objective_tensors(objective: torch.nn.Module, model: torch.nn.Module,
                            tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor the objective owns is in ``tensors`` with its shape, and nothing else (all or nothing)."""
    expected = objective_tensors(objective, model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{n}: checkpoint {tuple(tensors[n].shape)} vs objective {tuple(expected[n].shape)}"
             for n in expected if n in tensors and tensors[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        parts = [f"{what} {items[:5]}" for what, items in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)) if items]
        raise CheckpointError(
            f"the checkpoint's objective weights do not fit this {type(objective).__name__} ({'; '.join(parts)}); "
            "resume with the objective the run was trained with (Trainer.resume(path, data=...) builds it)"
        )


def load_objective_tensors(objective: torch.nn.Module, model: torch.nn.Module,
                           tensors: dict[str, torch.Tensor]) -> None:
    check_objective_tensors(objective, model, tensors)
    if tensors:
        state = objective.state_dict()
        with torch.no_grad():
            for name, value in tensors.items():
                state[name].copy_(value)


def check_same_objective(directory: Path, saved, objective) -> None:
    """Refuse to resume a run with another objective (or other options) than it was trained with."""
    if saved is None:
        return
    saved_dict = {"name": saved, "options": {}} if isinstance(saved, str) else saved
    current = objective.to_dict()
    if json.dumps(saved_dict, sort_keys=True) != json.dumps(current, sort_keys=True):
        raise CheckpointError(
            f"{directory} was trained with the objective {_describe_objective(saved_dict)}, not "
            f"{_describe_objective(current)}; resume with the run's own objective (Trainer.resume(path, data=...) "
            "rebuilds it; `workbench train --resume` without --objective uses it)"
        )


def _describe_objective(d: dict) -> str:
    options = ", ".join(f"{k}={v!r}" for k, v in sorted(d.get("options", {}).items()))
    return f"{d.get('name')!r}" + (f" ({options})" if options else "")


def checkpoint_objective(directory: Path, meta: dict):
    """The objective a checkpoint was trained with, rebuilt from its "objective" entry (CLM when absent)."""
    from ..objectives import objective_from_dict

    saved = meta.get("objective") or "clm"
    try:
        return objective_from_dict(saved, load_checkpoint_tokenizer(directory))
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{directory / 'checkpoint.json'}: its objective entry {saved!r} cannot be "
                              f"rebuilt ({error}); {RESAVE}") from None


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
    sweep_temporaries(directory.parent)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    files = {}
    for filename, tensors in tensor_files.items():
        save_file(tensors, str(tmp / filename))
    for filename, text in (extra_files or {}).items():
        (tmp / filename).write_text(text)
    for path in sorted(tmp.iterdir()):
        files[path.name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
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
    steps = checkpoint_folders(run_dir)
    for path in steps[:-keep] if keep > 0 else []:
        if path != latest:
            shutil.rmtree(path)


# ---------------------------------------------------------------- leftovers of killed saves
# .step-N.tmp-PID (a save being written), .step-N.old-PID (a re-saved step being swapped out),
# .latest.json.tmp-PID (a pointer being replaced); group 1: the step, 2: tmp or old, 3: the pid.
_TEMPORARY = re.compile(r"\.(?:(step-\d+)\.(tmp|old)|latest\.json\.tmp)-(\d+)")


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing its temporaries (when unsure: yes)."""
    if pid == os.getpid():
        return False  # our own leftovers: this process is not mid-save while it sweeps
    if os.name != "posix":
        return True  # on Windows os.kill(pid, 0) would stop the process instead of probing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: alive, but another user's
        return True
    return True


def sweep_temporaries(run_dir: Path) -> None:
    """Remove the temporaries that killed saves left in ``run_dir``, and nothing else.

    Only the exact names above count, only those of a process that is gone (or of this one),
    and only of the kind a save makes (a real folder, or a file for the pointer). A
    ``.step-N.old-PID`` folder whose ``step-N`` is missing is the only copy of that step (the
    save died between its two renames), so it is renamed back instead of deleted.
    """
    run_dir = Path(run_dir)
    for entry in sorted(run_dir.iterdir()):
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or _process_alive(int(match[3])) or entry.is_symlink():
            continue
        step = run_dir / match[1] if match[1] else None
        try:
            if step is None:
                if entry.is_file():
                    entry.unlink()
            elif entry.is_dir():
                if match[2] == "old" and not os.path.lexists(step):
                    os.rename(entry, step)
                elif match[2] == "tmp" or step.is_dir():
                    shutil.rmtree(entry)
        except OSError:
            pass  # best effort: another process swept it first, or it is not ours to remove


# ---------------------------------------------------------------- reading, with one clear error
def _pointer_fix(run_dir: Path) -> str:
    steps = [p.name for p in checkpoint_folders(run_dir)]
    if not steps:
        return "the run holds no step-* folder: train again, or pass another run directory"
    shown = ", ".join(steps[-6:]) if len(steps) <= 6 else "..., " + ", ".join(steps[-5:])
    return f"the run holds {shown}: point latest.json at one of them, or pass that folder"


def _dangling_pointer(pointer: Path, name: str) -> CheckpointError:
    """latest.json names a folder that is not there: say which ones are, or how to get it back."""
    run_dir = pointer.parent
    if os.path.lexists(run_dir / name):
        return CheckpointError(f"{pointer} points at {name}, which is not a folder; {_pointer_fix(run_dir)}")
    swapped = sorted(p.name for p in run_dir.iterdir()
                     if (m := _TEMPORARY.fullmatch(p.name)) and m[1] == name and m[2] == "old" and p.is_dir())
    if swapped:
        return CheckpointError(f"{pointer} points at {name}, which is missing because a save was killed while "
                               f"replacing it; rename {swapped[0]} back to {name} (the next save does it for you)")
    return CheckpointError(f"{pointer} points at {name}, which is missing; {_pointer_fix(run_dir)}")


def resolve(path) -> Path:
    """A run directory (follows latest.json) or a checkpoint directory -> the checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a checkpoint folder; pass the run directory or the "
                              "step-* folder that holds it")
    pointer = path / "latest.json"
    if not os.path.lexists(pointer):
        return path
    name = read_json_object(pointer, _pointer_fix(path)).get("checkpoint", MISSING)
    if not is_plain_name(name):
        raise CheckpointError(f'{pointer} is corrupt (its "checkpoint" is {describe(name)}, not a folder name); '
                              f"{_pointer_fix(path)}")
    if not (path / name).is_dir():
        raise _dangling_pointer(pointer, name)
    return path / name


def read_checkpoint(path) -> tuple[Path, dict]:
    """Find, parse and verify a checkpoint; returns (directory, metadata).

    Checks what every reader needs: the format, each listed file's size and hash (the weights must
    be listed) and ``model_config``. Resuming also needs ``check_training_state``.
    """
    directory = resolve(path)
    meta_path = directory / "checkpoint.json"
    if not os.path.lexists(meta_path):
        raise CheckpointError(
            f"{directory} is not a workbench checkpoint (no checkpoint.json); pass a run directory "
            "written by the Trainer or one of its step-* folders"
        )
    meta = read_json_object(meta_path, RESAVE)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a workbench checkpoint (format={meta.get('format')!r})")
    files = meta.get("files", MISSING)
    need(meta_path, "files", files, is_object, "an object with each file's bytes and sha256")
    if "model.safetensors" not in files:
        raise corrupt(meta_path, "files does not list model.safetensors, so the weights cannot be verified")
    for name, info in files.items():
        check_file(meta_path, name, info)
    check_model_config(meta, meta_path)
    return directory, meta


def read_tensors(directory: Path, filename: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(directory / filename))
    except Exception as error:  # safetensors raises its own error type
        raise CheckpointError(f"cannot read {directory / filename}: {error}; {RESAVE}") from None


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


def load_objective(path, model):
    """The objective a checkpoint was trained with, set up for ``model`` (from ``load_model``) with the weights
    it owns restored (a diffusion model's time embedding, ELECTRA's generator)."""
    directory, meta = read_checkpoint(path)
    objective = checkpoint_objective(directory, meta)
    objective.setup(model)
    owned = read_tensors(directory, "objective.safetensors") if "objective.safetensors" in meta["files"] else {}
    load_objective_tensors(objective, model, owned)
    return objective.to(next(model.parameters()).device).eval()


def load_checkpoint_tokenizer(directory: Path):
    """The checkpoint's tokenizer, or None when it was saved without one."""
    file = Path(directory) / "tokenizer.json"
    if not os.path.lexists(file):
        return None
    from ..data.tokenizers import load_tokenizer

    try:
        return load_tokenizer(file)
    except (ValueError, OSError) as error:  # TokenizerFileError is a ValueError
        raise CheckpointError(f"{file} is corrupt ({error}); {RESAVE}") from None


# ---------------------------------------------------------------- run directories
def checkpoint_folders(run_dir) -> list[Path]:
    """The step-* checkpoint folders of a run directory, oldest first."""
    return sorted(p for p in Path(run_dir).glob("step-*") if p.is_dir())


def remove_run(run_dir) -> None:
    """Delete a run's checkpoints (step-* folders, latest.json and temporaries of killed saves), nothing else."""
    run_dir = Path(run_dir)
    pointer = run_dir / "latest.json"
    if pointer.is_file():
        pointer.unlink()
    sweep_temporaries(run_dir)
    for folder in checkpoint_folders(run_dir):
        shutil.rmtree(folder)
