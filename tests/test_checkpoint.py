"""Checkpoints: round trips, pruning, clear errors that change nothing, and crash-safe saving."""
import json
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
