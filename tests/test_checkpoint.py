"""Checkpoints: round trips, pruning, clear errors that change nothing, and crash-safe saving."""
import json
import re
import shutil
import os
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from helpers import markov_data, model_state, single_thread, states_equal, tiny_model, train_config  # noqa: F401
from workbench.objectives import CausalLM
from workbench.train import CheckpointError, Trainer, load_model, save_model
from workbench.train import checkpoint as ckpt


def make_trainer(out_dir, model_changes=None, **train_changes):
    return Trainer(tiny_model(**(model_changes or {})), CausalLM(), markov_data(),
                   train_config(**{"steps": 6, **train_changes}), callbacks=[], out_dir=out_dir)


def _ids():
    return torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(0))


def step_dirs(run_dir):
    return sorted(p.name for p in pathlib.Path(run_dir).glob("step-*"))


def latest(run_dir):
    return json.loads((pathlib.Path(run_dir) / "latest.json").read_text())["checkpoint"]


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("changes", [dict(), dict(tie_embeddings=False, position="rope", n_kv_head=2,
                                                  norm="rmsnorm", mlp="swiglu", bias=False)])
def test_save_and_load_model_round_trip(tmp_path, changes):
    model = tiny_model(seed=5, **changes)
    with torch.no_grad():  # make sure we are not just comparing two fresh inits
        for p in model.parameters():
            p.add_(0.01)
    save_model(model, tmp_path / "model")
    loaded, tokenizer = load_model(tmp_path / "model")
    assert tokenizer is None
    assert loaded.config == model.config
    loaded.eval()
    assert torch.equal(loaded(_ids()).logits, model(_ids()).logits)
    assert states_equal(model_state(loaded), model_state(model))
    tensors = load_file(str(tmp_path / "model" / "model.safetensors"))
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.token_embedding.weight
        assert "lm_head.weight" not in tensors  # a tied matrix is stored once
    else:
        assert loaded.lm_head.weight.data_ptr() != loaded.token_embedding.weight.data_ptr()
        assert "lm_head.weight" in tensors


def test_checkpoint_metadata_lists_files_with_hashes(tmp_path):
    save_model(tiny_model(), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "checkpoint.json").read_text())
    assert meta["format"] == ckpt.FORMAT
    info = meta["files"]["model.safetensors"]
    assert info["bytes"] == (tmp_path / "m" / "model.safetensors").stat().st_size
    assert len(info["sha256"]) == 64


def test_trainer_checkpoints_latest_and_pruning(tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_every=2, keep_checkpoints=2)
    trainer.fit()
    assert step_dirs(tmp_path) == ["step-000004", "step-000006"]
    assert latest(tmp_path) == "step-000006"
    model, _ = load_model(tmp_path)  # a run directory follows latest.json
    assert states_equal(model_state(model), model_state(trainer.model))
    older, _ = load_model(tmp_path / "step-000004")
    assert not states_equal(model_state(older), model_state(trainer.model))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left

    one = make_trainer(tmp_path / "one", checkpoint_every=1, keep_checkpoints=1)
    one.fit()
    assert step_dirs(tmp_path / "one") == ["step-000006"]


def test_resaving_the_same_step_replaces_it(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit(steps=2)
    trainer.save_checkpoint()
    with torch.no_grad():
        trainer.model.token_embedding.weight.add_(1.0)
    trainer.save_checkpoint()
    assert step_dirs(tmp_path) == ["step-000002"]
    model, _ = load_model(tmp_path)
    assert states_equal(model_state(model), model_state(trainer.model))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resume_from_a_step_folder_keeps_saving_into_the_run_directory(tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_every=2, keep_checkpoints=5)
    trainer.fit(steps=4)
    resumed = Trainer.resume(tmp_path / "step-000002", CausalLM(), markov_data(), callbacks=[])
    assert resumed.step == 2
    resumed.fit(steps=4)
    assert step_dirs(tmp_path) == ["step-000002", "step-000004", "step-000006"]
    assert latest(tmp_path) == "step-000006"
    assert not (tmp_path / "step-000002" / "latest.json").exists()


# ---------------------------------------------------------------- clear errors that change nothing
def _trained(tmp_path, **changes):
    trainer = make_trainer(tmp_path / "run", **changes)
    trainer.fit(steps=2)
    trainer.save_checkpoint()
    return tmp_path / "run"


def _target(tmp_path, model_changes=None):
    target = make_trainer(tmp_path / "other", model_changes)
    target.fit(steps=1)
    return target, model_state(target.model), target.optimizer.state_dict()["state"][0]["exp_avg"].clone()


def _unchanged(target, weights, moment):
    assert states_equal(model_state(target.model), weights)
    assert torch.equal(target.optimizer.state_dict()["state"][0]["exp_avg"], moment)
    assert target.step == 1 and len(target.history["train"]) == 1


def test_checkpoint_from_another_config_names_the_field(tmp_path):
    run = _trained(tmp_path)
    target, weights, moment = _target(tmp_path, dict(n_layer=1))
    with pytest.raises(CheckpointError, match=r"n_layer: checkpoint 2 vs model 1"):
        target.load_checkpoint(run)
    _unchanged(target, weights, moment)


def test_weights_that_do_not_fit_raise_before_copying(tmp_path):
    save_model(tiny_model(d_model=64), tmp_path / "wide")
    model = tiny_model()
    before = model_state(model)
    tensors = ckpt.read_tensors(tmp_path / "wide", "model.safetensors")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        ckpt.load_model_tensors(model, tensors)
    assert states_equal(model_state(model), before)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_weights_file_is_rejected_and_nothing_changes(tmp_path, damage):
    run = _trained(tmp_path)
    file = run / latest(run) / "model.safetensors"
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    else:
        file.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    target, weights, moment = _target(tmp_path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        target.load_checkpoint(run)
    _unchanged(target, weights, moment)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(run)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Trainer.resume(run, CausalLM(), markov_data(), callbacks=[])


def test_corrupt_latest_json(tmp_path):
    run = _trained(tmp_path)
    (run / "latest.json").write_text('{"checkpoint": "step-0000')
    with pytest.raises(CheckpointError, match="latest.json is corrupt"):
        load_model(run)
    (run / "latest.json").write_text('["step-000002"]')
    with pytest.raises(CheckpointError, match="latest.json is corrupt"):
        load_model(run)
    (run / "latest.json").write_text('{"checkpoint": "step-999999"}')
    with pytest.raises(CheckpointError, match="step-999999"):
        load_model(run)


def test_folder_without_checkpoint_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint.json"):
        load_model(tmp_path / "empty")


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    trainer = make_trainer(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.load_checkpoint(tmp_path / "nowhere")


def test_corrupt_checkpoint_json_and_foreign_format(tmp_path):
    save_model(tiny_model(), tmp_path / "m")
    meta_path = tmp_path / "m" / "checkpoint.json"
    meta = meta_path.read_text()
    meta_path.write_text(meta[:40])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "m")
    meta_path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a workbench checkpoint"):
        load_model(tmp_path / "m")


def test_weights_only_checkpoint_cannot_resume_training(tmp_path):
    save_model(tiny_model(), tmp_path / "m")
    trainer = make_trainer(tmp_path / "run")
    with pytest.raises(CheckpointError, match="weights only"):
        trainer.load_checkpoint(tmp_path / "m")


# ---------------------------------------------------------------- atomic saves
def _crash_on_second_call(real):
    calls = []

    def crashing(*args, **kwargs):
        calls.append(args)
        if len(calls) >= 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    return crashing


def _crash_writing(name):
    real = pathlib.Path.write_text

    def crashing(self, *args, **kwargs):
        if self.name == name:
            raise OSError("disk full (simulated)")
        return real(self, *args, **kwargs)

    return crashing


@pytest.mark.parametrize("where", ["second tensor file", "checkpoint.json", "latest pointer"])
def test_a_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    trainer = make_trainer(tmp_path, keep_checkpoints=1)
    trainer.fit(steps=2)
    trainer.save_checkpoint()
    saved = model_state(trainer.model)
    trainer.fit(steps=2)

    with monkeypatch.context() as patch:
        if where == "second tensor file":
            patch.setattr(ckpt, "save_file", _crash_on_second_call(ckpt.save_file))
        elif where == "checkpoint.json":
            patch.setattr(pathlib.Path, "write_text", _crash_writing("checkpoint.json"))
        else:
            patch.setattr(pathlib.Path, "write_text", _crash_writing(f".latest.json.tmp-{os.getpid()}"))
        with pytest.raises(OSError, match="simulated"):
            trainer.save_checkpoint()

    assert latest(tmp_path) == "step-000002"
    model, _ = load_model(tmp_path)
    assert states_equal(model_state(model), saved)
    if where != "latest pointer":
        assert step_dirs(tmp_path) == ["step-000002"]  # the half-written one is not a step-* folder
    resumed = Trainer.resume(tmp_path, CausalLM(), markov_data(), callbacks=[])
    assert resumed.step == 2

    # the next save succeeds and cleans up after the crashed one
    trainer.save_checkpoint()
    assert latest(tmp_path) == "step-000004"
    assert step_dirs(tmp_path) == ["step-000004"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    model, _ = load_model(tmp_path)
    assert states_equal(model_state(model), model_state(trainer.model))


def test_tokenizer_travels_with_the_checkpoint(tmp_path):
    from workbench.data import CharTokenizer

    tokenizer = CharTokenizer.train("hello world, tiny models!")
    model = tiny_model(vocab_size=tokenizer.vocab_size)
    save_model(model, tmp_path / "m", tokenizer=tokenizer)
    _, loaded = load_model(tmp_path / "m")
    assert type(loaded) is CharTokenizer
    assert loaded.encode("tiny world") == tokenizer.encode("tiny world")
    assert loaded.vocab_size == tokenizer.vocab_size
    meta = json.loads((tmp_path / "m" / "checkpoint.json").read_text())
    assert "tokenizer.json" in meta["files"]  # size- and hash-checked like the weights

    trainer = Trainer(model, CausalLM(), markov_data(vocab_size=tokenizer.vocab_size), train_config(steps=1),
                      callbacks=[], out_dir=tmp_path / "run", tokenizer=tokenizer)
    trainer.fit()
    trainer.save_checkpoint()
    _, from_run = load_model(tmp_path / "run")
    assert from_run.encode("hello") == tokenizer.encode("hello")


# ---------------------------------------------------------------- damaged run directories: one CheckpointError
def _meta_path(run):
    return run / latest(run) / "checkpoint.json"


def _edit_meta(run, change):
    meta = json.loads(_meta_path(run).read_text())
    change(meta)
    _meta_path(run).write_text(json.dumps(meta))


def _fails_everywhere(tmp_path, run, match):
    """load_model, Trainer.load_checkpoint and Trainer.resume all raise CheckpointError and change nothing."""
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    target, weights, moment = _target(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        target.load_checkpoint(run)
    _unchanged(target, weights, moment)
    with pytest.raises(CheckpointError, match=match):
        load_model(run)
    with pytest.raises(CheckpointError, match=match):
        Trainer.resume(run, CausalLM(), markov_data(), callbacks=[])
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing deleted or renamed


def _put(path, content):
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def _set_file(key, value):
    return lambda meta: meta["files"]["model.safetensors"].update({key: value})


WEIGHTS = "files['model.safetensors']"


@pytest.mark.parametrize("damage, reason", [
    ('[1, 2]', "a JSON list, not an object"),
    ('"step-000002"', "a JSON string, not an object"),
    (b'{"format": "\xff\xfe\x80"}', "not UTF-8 text: invalid start byte at byte 12"),
    (lambda m: m.pop("model_config"), "model_config is missing; it must be an object of ModelConfig fields"),
    (lambda m: m.update(model_config=["gpt"]), "model_config is a JSON list; it must be an object"),
    (lambda m: m["model_config"].update(n_layer=-1), "model_config: ModelConfig.n_layer=-1 is invalid"),
    (lambda m: m["model_config"].update(colour="red"), "model_config: ModelConfig has no field(s) 'colour'"),
    (lambda m: m.pop("files"), "files is missing; it must be an object with each file's bytes and sha256"),
    (lambda m: m.update(files=["model.safetensors"]), "files is a JSON list; it must be an object"),
    (lambda m: m["files"].pop("model.safetensors"), "files does not list model.safetensors, so the weights"),
    (lambda m: m["files"]["model.safetensors"].pop("sha256"), f"{WEIGHTS}['sha256'] is missing; it must be the"),
    (lambda m: m["files"]["model.safetensors"].pop("bytes"), f"{WEIGHTS}['bytes'] is missing; it must be the"),
    (_set_file("sha256", 12), f"{WEIGHTS}['sha256'] is 12; it must be the file's sha256 (64 hex digits)"),
    (_set_file("bytes", "many"), f"{WEIGHTS}['bytes'] is \"many\"; it must be the file's size (an integer >= 0)"),
    (lambda m: m["files"].update({"model.safetensors": "abc"}), f'{WEIGHTS} is "abc"; it must be an object'),
    (lambda m: m["files"].update({"../step-000002/x": {}}), "files names '../step-000002/x', which is not a file"),
])
def test_damaged_checkpoint_json_names_the_file_and_changes_nothing(tmp_path, damage, reason):
    run = _trained(tmp_path)
    if callable(damage):
        _edit_meta(run, damage)
    else:
        _put(_meta_path(run), damage)
    _fails_everywhere(tmp_path, run, re.escape(f"{_meta_path(run)} is corrupt ({reason}"))


@pytest.mark.parametrize("pointer, reason", [
    ('{"checkpoint": 5}', 'its "checkpoint" is 5, not a folder name'),
    ('{"checkpoint": null}', 'its "checkpoint" is null, not a folder name'),
    ('{}', 'its "checkpoint" is missing, not a folder name'),
    ('["step-000002"]', "a JSON list, not an object"),
    ('{"checkpoint": "step-0000', "not valid JSON: Unterminated string"),
    (b'\x00\xff\xfe\x80garbage', "not UTF-8 text: invalid start byte at byte 1"),
    ('{"checkpoint": "../run/step-000002"}', 'its "checkpoint" is "../run/step-000002", not a folder name'),
    ('{"checkpoint": "/tmp"}', 'its "checkpoint" is "/tmp", not a folder name'),
    ('{"checkpoint": ".."}', 'its "checkpoint" is "..", not a folder name'),
    ('{"checkpoint": ""}', 'its "checkpoint" is "", not a folder name'),
])
def test_damaged_latest_json_names_the_file_and_changes_nothing(tmp_path, pointer, reason):
    run = _trained(tmp_path)
    _put(run / "latest.json", pointer)
    fix = "; the run holds step-000002: point latest.json at one of them, or pass that folder"
    _fails_everywhere(tmp_path, run, re.escape(f"{run / 'latest.json'} is corrupt ({reason}") + ".*" + re.escape(fix))


def test_latest_json_pointing_at_a_missing_step_names_the_ones_that_exist(tmp_path):
    trainer = make_trainer(tmp_path / "run", checkpoint_every=2, keep_checkpoints=5)
    trainer.fit(steps=4)
    run = tmp_path / "run"
    (run / "latest.json").write_text('{"checkpoint": "step-000006"}')
    _fails_everywhere(tmp_path, run, re.escape(
        f"{run / 'latest.json'} points at step-000006, which is missing; the run holds step-000002, "
        f"step-000004: point latest.json at one of them, or pass that folder"))
    for name in step_dirs(run):
        shutil.rmtree(run / name)
    _fails_everywhere(tmp_path, run, r"which is missing; the run holds no step-\* folder")


def _set_meta(**values):
    return lambda meta: meta.update(values)


def _set_optimizer(**values):
    return lambda meta: meta["optimizer"].update(values)


INTEGER, OBJECT, GROUP = "it must be an integer >= 0", "it must be an object", "an object with a params list"
GROUPS = "optimizer['param_groups'] holds groups of"


@pytest.mark.parametrize("damage, reason", [
    (_set_meta(step="five"), f'step is "five"; {INTEGER}'),
    (_set_meta(step=-3), f"step is -3; {INTEGER}"),
    (_set_meta(step=True), f"step is true; {INTEGER}"),
    (_set_meta(step=2.0), f"step is 2.0; {INTEGER}"),
    (lambda m: m.pop("step"), f"step is missing; {INTEGER}"),
    (_set_meta(elapsed=-1.0), "elapsed is -1.0; it must be a finite number >= 0"),
    (_set_meta(elapsed=float("nan")), "elapsed is NaN; it must be a finite number >= 0"),
    (_set_meta(elapsed="1s"), 'elapsed is "1s"; it must be a finite number >= 0'),
    (_set_meta(tokens_seen=-5), f"tokens_seen is -5; {INTEGER}"),
    (_set_meta(tokens_seen=1.5), f"tokens_seen is 1.5; {INTEGER}"),
    (_set_meta(history=[]), f"history is a JSON list; {OBJECT} with train and eval lists"),
    (_set_meta(history={"train": []}), "history['eval'] is missing; it must be a list"),
    (_set_meta(history={"train": [1], "eval": []}), f"history['train'][0] is 1; {OBJECT}"),
    (_set_meta(optimizer=[]), f"optimizer is a JSON list; {OBJECT} with param_groups and scalars"),
    (lambda m: m["optimizer"].pop("param_groups"), "optimizer['param_groups'] is missing; it must be a list"),
    (_set_optimizer(param_groups=[{"lr": 1}]), f"optimizer['param_groups'][0] is a JSON object; it must be {GROUP}"),
    (_set_optimizer(param_groups=[{"params": ["a"]}]), "optimizer['param_groups'][0] is a JSON object; it must"),
    (_set_optimizer(scalars=[]), f"optimizer['scalars'] is a JSON list; {OBJECT}"),
    (_set_optimizer(scalars={"step": 1}), "optimizer['scalars'] has the key 'step'; keys must read '<parameter"),
    (_set_meta(train_config="fast"), f'train_config is "fast"; {OBJECT} of TrainConfig fields'),
    (lambda m: m["train_config"].update(lr="fast"), "train_config: TrainConfig.lr='fast' is invalid"),
    (lambda m: m.pop("train_config"), f"train_config is missing; {OBJECT} of TrainConfig fields"),
    (lambda m: m["files"].pop("trainer.safetensors"), "files does not list trainer.safetensors, so the optimizer"),
    (lambda m: m["optimizer"]["param_groups"].pop(), f"{GROUPS} [10] parameters; this model's optimizer has [10, 18]"),
    (lambda m: m["optimizer"]["param_groups"][1]["params"].pop(), f"{GROUPS} [10, 17] parameters; this model's"),
    (_set_meta(data=[]), "data is a JSON list; it must be null or an object with tokens, tokens_sha256"),
    (_set_meta(data={"tokens": 5, "tokens_sha256": "ab"}), "data is a JSON object; it must be null or an object"),
])
def test_bad_training_state_cannot_resume_but_the_weights_still_load(tmp_path, damage, reason):
    run = _trained(tmp_path)
    _edit_meta(run, damage)
    target, weights, moment = _target(tmp_path)
    match = re.escape(f"{_meta_path(run)} is corrupt ({reason}")
    with pytest.raises(CheckpointError, match=match):
        target.load_checkpoint(run)
    _unchanged(target, weights, moment)
    with pytest.raises(CheckpointError, match=match):
        Trainer.resume(run, CausalLM(), markov_data(), callbacks=[])
    load_model(run)  # weights-only readers need none of it


def test_weights_only_checkpoint_cannot_resume(tmp_path):
    save_model(tiny_model(), tmp_path / "m")
    with pytest.raises(CheckpointError, match="holds weights only"):
        Trainer.resume(tmp_path / "m", CausalLM(), markov_data(), callbacks=[])


def _replace_with_folder(path):
    path.unlink()
    path.mkdir()


def _unlisted_tokenizer(step, text):
    """A tokenizer.json the metadata does not list, so no hash protects it."""
    (step / "tokenizer.json").write_text(text) if text else (step / "tokenizer.json").mkdir()
    meta = json.loads((step / "checkpoint.json").read_text())
    meta["files"].pop("tokenizer.json", None)
    (step / "checkpoint.json").write_text(json.dumps(meta))


WRONG_KINDS = {
    "latest.json is a folder": (lambda run, step: _replace_with_folder(run / "latest.json"),
                                r"latest.json is not a file; the run holds step-000002: point latest.json at"),
    "checkpoint.json is a folder": (lambda run, step: _replace_with_folder(step / "checkpoint.json"),
                                    r"step-000002/checkpoint.json is not a file"),
    "weights are a folder": (lambda run, step: _replace_with_folder(step / "model.safetensors"),
                             r"step-000002/model.safetensors is not a file"),
    "latest points at a file": (lambda run, step: shutil.rmtree(step) or step.write_text("x"),
                                r"points at step-000002, which is not a folder"),
    "tokenizer.json is garbage": (lambda run, step: _unlisted_tokenizer(step, "garbage"),
                                  r"step-000002/tokenizer.json is corrupt \(.*not an LM Workbench tokenizer"),
    "tokenizer.json is a folder": (lambda run, step: _unlisted_tokenizer(step, None),
                                   r"step-000002/tokenizer.json is corrupt \(.*is a directory"),
}


@pytest.mark.parametrize("damage", WRONG_KINDS)
def test_files_of_the_wrong_kind(tmp_path, damage):
    run = _trained(tmp_path)
    setup, match = WRONG_KINDS[damage]
    setup(run, run / "step-000002")
    with pytest.raises(CheckpointError, match=match):
        load_model(run)


def test_a_file_instead_of_a_folder(tmp_path):
    run = _trained(tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint.json is a file, not a checkpoint folder; pass the run"):
        load_model(run / "step-000002" / "checkpoint.json")


@pytest.mark.skipif(not os.path.exists("/proc/sys/kernel/pid_max"), reason="needs Linux pid_max for a dead pid")
def test_stale_temporaries_of_killed_saves_are_cleaned_safely(tmp_path):
    """A kill -9 mid-save leaves dot-folders; the next save removes those of dead processes, nothing else."""
    run = tmp_path / "run"
    trainer = make_trainer(run, keep_checkpoints=5)
    trainer.fit(steps=2)
    trainer.save_checkpoint()
    pid_max = int(pathlib.Path("/proc/sys/kernel/pid_max").read_text())
    dead, dead2, live, mine = pid_max + 1, pid_max + 7, os.getppid(), os.getpid()
    # killed between the two renames of a re-save: the .old folder is the only copy of step-000002
    os.rename(run / "step-000002", run / f".step-000002.old-{dead}")
    with pytest.raises(CheckpointError, match=rf"rename .step-000002.old-{dead} back to step-000002"):
        load_model(run)  # reading explains, and changes nothing
    assert (run / f".step-000002.old-{dead}").is_dir()
    stale = [f".step-000004.tmp-{dead}", f".step-000003.tmp-{mine}", f".step-000004.old-{dead2}"]
    kept = [f".step-000008.tmp-{live}", f".step-000009.old-{live}", ".step-000004.tmp-x", f".stepx.tmp-{dead}",
            f".step-000004.tmp-{dead}.keep", f".step-01.tmp-{dead}-1", f".latest.json.tmp-{dead}.d", "notes"]
    for name in stale + kept:
        (run / name).mkdir()
        (run / name / "junk").write_text("x")
    (run / f".latest.json.tmp-{dead}").write_text("{}")
    (run / f".latest.json.tmp-{live}").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep").write_text("x")
    (run / f".step-000010.tmp-{dead}").symlink_to(tmp_path / "elsewhere")
    (run / "step-000004").mkdir()  # .step-000004.old-<dead2> is a leftover of a finished swap
    (run / "step-000004" / "junk").write_text("x")

    trainer.fit(steps=4)
    trainer.save_checkpoint()
    left = sorted(p.name for p in run.iterdir() if p.name.startswith(".") or p.name == "notes")
    assert left == sorted(kept + [f".latest.json.tmp-{live}", f".step-000010.tmp-{dead}"])
    assert step_dirs(run) == ["step-000002", "step-000004", "step-000006"]
    assert (run / "step-000004" / "junk").exists()  # a step-* folder is never touched by the sweep
    assert (tmp_path / "elsewhere" / "keep").exists()
    load_model(run / "step-000002")
    assert json.loads((run / "step-000002" / "checkpoint.json").read_text())["step"] == 2
