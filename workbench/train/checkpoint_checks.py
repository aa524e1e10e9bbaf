"""What a checkpoint's JSON must hold, checked before anything is loaded: one clear error per damage.

``checkpoint.py`` writes and reads checkpoints; this file holds the checks behind its readers.
Every way a run directory can be damaged (a hand-edited field, binary garbage, a missing entry,
a negative step) raises one ``CheckpointError`` that names the file, the problem and the fix, and
changes nothing. The messages write values the way JSON writes them (``null``, ``"five"``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional

import torch

from ..validation import is_number


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


MISSING = object()
RESAVE = "use another step-* folder of the run, or save the checkpoint again"


def json_type(value) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return "a JSON " + names.get(type(value), "number")


def describe(value) -> str:
    """A value for a message: containers by their JSON type, anything else as JSON writes it (shortened)."""
    if value is MISSING:
        return "missing"
    if isinstance(value, (dict, list)):
        return json_type(value)
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def corrupt(meta_path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{meta_path} is corrupt ({reason}); {RESAVE}")


def need(meta_path: Path, name: str, value, ok, requirement: str) -> None:
    """Raise unless ``ok(value)``: '<file> is corrupt (<name> is <value>; it must be <requirement>)'."""
    if value is MISSING or not ok(value):
        raise corrupt(meta_path, f"{name} is {describe(value)}; it must be {requirement}")


def need_list(meta_path: Path, name: str, value, ok, requirement: str) -> None:
    """Raise unless ``value`` is a list whose every item passes ``ok``."""
    need(meta_path, name, value, lambda v: isinstance(v, list), "a list")
    for index, item in enumerate(value):
        need(meta_path, f"{name}[{index}]", item, ok, requirement)


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_object(value) -> bool:
    return isinstance(value, dict)


def is_plain_name(name) -> bool:
    """A file or folder name inside one folder: no path separators, not '.' or '..'."""
    return isinstance(name, str) and name not in ("", ".", "..") and not set(name) & {"/", "\\", "\0"}


def read_json_object(path: Path, fix: str) -> dict:
    """Parse ``path`` as a JSON object; anything else raises one CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; {fix}")
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path} is corrupt (not UTF-8 text: {error.reason} at byte {error.start}); {fix}") \
            from None
    except (json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path} is corrupt (not valid JSON: {error}); {fix}") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {path} ({error.strerror or error}); {fix}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} is corrupt ({json_type(value)}, not an object); {fix}")
    return value


def check_file(meta_path: Path, name, info) -> None:
    """One entry of ``files``: a plain name, a well-formed record, and a file of that size and hash."""
    where = f"files[{name!r}]"
    if not is_plain_name(name):
        raise corrupt(meta_path, f"files names {name!r}, which is not a file name in this folder")
    need(meta_path, where, info, is_object, "an object with the file's bytes and sha256")
    need(meta_path, f"{where}['bytes']", info.get("bytes", MISSING), is_count, "the file's size (an integer >= 0)")
    need(meta_path, f"{where}['sha256']", info.get("sha256", MISSING),
          lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v), "the file's sha256 (64 hex digits)")
    file = meta_path.parent / name
    if not os.path.lexists(file):
        raise CheckpointError(f"checkpoint file {file} is missing; the checkpoint is incomplete: {RESAVE}")
    if not file.is_file():
        raise CheckpointError(f"{file} is not a file; the checkpoint is damaged: {RESAVE}")
    try:
        size, digest = file.stat().st_size, sha256(file)
    except OSError as error:
        raise CheckpointError(f"cannot read {file} ({error.strerror or error}); {RESAVE}") from None
    if size != info["bytes"] or digest != info["sha256"]:
        raise CheckpointError(
            f"checkpoint file {file} is truncated or corrupt (expected {info['bytes']} bytes with "
            f"sha256 {info['sha256'][:12]}..., found {size} bytes); use an earlier checkpoint"
        )


def check_config(meta: dict, meta_path: Path, key: str, config_class) -> None:
    """``meta[key]`` must make a valid ``config_class`` (model_config: ModelConfig, train_config: TrainConfig)."""
    values = meta.get(key, MISSING)
    need(meta_path, key, values, is_object, f"an object of {config_class.__name__} fields")
    try:
        config_class.from_dict(values)
    except (TypeError, ValueError) as error:
        raise corrupt(meta_path, f"{key}: {error}") from None


def check_model_config(meta: dict, meta_path: Path) -> None:
    """Every reader builds the model from ``model_config``, so it must make a valid ModelConfig."""
    from ..config import ModelConfig

    check_config(meta, meta_path, "model_config", ModelConfig)


def check_training_state(meta: dict, meta_path: Path, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Check what resuming reads beyond the weights (after ``read_checkpoint``), before anything changes.

    step, tokens_seen: integers >= 0 (a negative step would train with a negative learning rate);
    elapsed: a finite number >= 0; history: train and eval lists of records; optimizer: param_groups
    (of the sizes ``optimizer``'s have, when given) and scalars; train_config: valid TrainConfig
    fields; trainer.safetensors: listed, so verified.
    """
    from ..config import TrainConfig

    if not {"step", "optimizer", "history", "train_config"} & meta.keys():
        raise CheckpointError(f"{meta_path.parent} holds weights only (no optimizer state), so it cannot resume "
                              "training; load it with workbench.train.load_model(path), or resume from a step-* "
                              "folder the Trainer saved")
    need(meta_path, "step", meta.get("step", MISSING), is_count, "an integer >= 0")
    if "elapsed" in meta:
        need(meta_path, "elapsed", meta["elapsed"], lambda v: is_number(v) and v >= 0, "a finite number >= 0")
    if "tokens_seen" in meta:
        need(meta_path, "tokens_seen", meta["tokens_seen"], is_count, "an integer >= 0")
    history = meta.get("history", MISSING)
    need(meta_path, "history", history, is_object, "an object with train and eval lists")
    for split in ("train", "eval"):
        need_list(meta_path, f"history[{split!r}]", history.get(split, MISSING), is_object, "an object")
    state = meta.get("optimizer", MISSING)
    need(meta_path, "optimizer", state, is_object, "an object with param_groups and scalars")
    need_list(meta_path, "optimizer['param_groups']", state.get("param_groups", MISSING),
               lambda group: isinstance(group, dict) and isinstance(group.get("params"), list)
               and all(map(is_count, group["params"])), "an object with a params list of integers")
    saved = [len(group["params"]) for group in state["param_groups"]]
    if optimizer is not None and saved != [len(group["params"]) for group in optimizer.param_groups]:
        raise corrupt(meta_path, f"optimizer['param_groups'] holds groups of {saved} parameters; this model's "
                                  f"optimizer has {[len(group['params']) for group in optimizer.param_groups]}")
    scalars = state.get("scalars", MISSING)
    need(meta_path, "optimizer['scalars']", scalars, is_object, "an object")
    for key in scalars:
        if not re.fullmatch(r"\d+\.\w+", key):
            raise corrupt(meta_path, f"optimizer['scalars'] has the key {key!r}; keys must read "
                                      "'<parameter index>.<state name>'")
    check_config(meta, meta_path, "train_config", TrainConfig)
    if "trainer.safetensors" not in meta["files"]:
        raise corrupt(meta_path, "files does not list trainer.safetensors, so the optimizer state cannot be verified")
    data = meta.get("data")  # what the run was trained on (TokenData.fingerprint), or null
    if data is not None:
        need(meta_path, "data", data, lambda d: is_object(d) and all(isinstance(d.get(k), str) for k in (
            "tokens_sha256", "tokenizer_sha256", "tokenizer")) and is_count(d.get("tokens")) and
            is_count(d.get("vocab_size")), "null or an object with tokens, tokens_sha256, tokenizer, vocab_size "
            "and tokenizer_sha256")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
