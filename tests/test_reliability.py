"""Reliability: the same seed gives the same model, and no ordinary mistake costs a learner their run.

Through the API and through the `workbench` command line, in process and as a real process that is
sent SIGKILL in the middle of a save and SIGINT in the middle of training.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import model_state, single_thread, states_equal  # noqa: F401 (autouse fixture)
from workbench import cli
from workbench.cli import main
from workbench.data import CharTokenizer, TokenData
from workbench.models import GPT
from workbench.objectives import CausalLM
from workbench.presets import preset
from workbench.train import CheckpointError, Trainer
from workbench.train import checkpoint as ckpt

TINY = ["--preset", "ci", "--n-layer", "1", "--d-model", "32", "--block-size", "32"]


def train(out, *extra) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def weights(run_dir) -> dict:
    return load_file(str(ckpt.resolve(run_dir) / "model.safetensors"))


def files_digest(run_dir) -> str:
    """One hash over every file below run_dir (names and bytes): equal means nothing was touched."""
    digest = hashlib.sha256()
    for path in sorted(Path(run_dir).rglob("*")):
        digest.update(str(path.relative_to(run_dir)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- the same seed, the same model
def test_gpt_seed_fixes_the_initial_weights_whatever_ran_before():
    config = preset("ci").model_config(40)
    a = GPT(config, seed=3)
    torch.randn(100)  # anything drawing from the global RNG in between
    b = GPT(config, seed=3)
    assert states_equal(model_state(a), model_state(b))
    assert not states_equal(model_state(a), model_state(GPT(config, seed=4)))
    state = torch.get_rng_state()
    GPT(config, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left as it was


def test_the_readme_recipe_gives_bitwise_identical_models(tmp_cache):
    """README's library example, twice in one process with other RNG use in between."""
    def run():
        P = preset("ci")
        text = "Once upon a time, a cat sat on a mat. " * 200
        tokenizer = CharTokenizer.train(text)
        data = TokenData.from_text(text, tokenizer)
        model = GPT(P.model_config(tokenizer.vocab_size, n_layer=1, d_model=32), seed=0)
        trainer = Trainer(model, CausalLM(), data, P.train_config(steps=5, eval_every=0), callbacks=[])
        trainer.fit()
        torch.rand(7)
        return model_state(model)

    assert states_equal(run(), run())


def test_the_cli_gives_bitwise_identical_weights_for_the_same_seed(tmp_path, tmp_cache):
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        torch.manual_seed(len(name) * 1000 + ord(name))  # the caller's RNG state must not matter
        assert train(tmp_path / name, "--steps", "3", "--seed", seed) == 0
    a, b, c = (weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------- work that must never be lost
def test_train_refuses_to_replace_a_run_without_resume_or_overwrite(tmp_path, capsys, tmp_cache):
    out = tmp_path / "run"
    assert train(out, "--steps", "4") == 0
    before = files_digest(out)
    capsys.readouterr()
    assert train(out, "--steps", "6") == 2
    err = capsys.readouterr().err
    assert f"{out} holds a run" in err and "--resume" in err and "--overwrite" in err
    assert files_digest(out) == before
    assert train(out, "--steps", "6", "--resume", "--overwrite") == 2
    assert "choose one" in capsys.readouterr().err and files_digest(out) == before

    (out / "notes.txt").write_text("mine")
    assert train(out, "--steps", "2", "--overwrite") == 0
    assert "removed the checkpoints" in capsys.readouterr().out
    assert [p.name for p in ckpt.checkpoint_folders(out)] == ["step-000002"]
    assert (out / "notes.txt").read_text() == "mine"  # only checkpoints are removed


@pytest.mark.parametrize("layout", ["file", "under_a_file"])
def test_an_unusable_out_is_refused_before_training(tmp_path, capsys, tmp_cache, monkeypatch, layout):
    (tmp_path / "taken").write_text("not a directory")
    out = tmp_path / "taken" if layout == "file" else tmp_path / "taken" / "run"
    monkeypatch.setattr(cli, "_build", lambda *a, **k: pytest.fail("training was set up before --out was checked"))
    assert train(out, "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "error: --out" in err and "taken" in err and "is a file" in err and "choose another --out" in err
    assert (tmp_path / "taken").read_text() == "not a directory"


def test_a_nan_stop_saves_the_last_good_state_and_says_where(tmp_path, capsys, tmp_cache, monkeypatch):
    calls = []
    real_loss = CausalLM.loss

    def poisoned(self, model, batch, generator=None):
        calls.append(1)
        out = real_loss(self, model, batch, generator)
        return out if len(calls) < 6 else type(out)(loss=out.loss * float("nan"), n_tokens=out.n_tokens)

    monkeypatch.setattr(CausalLM, "loss", poisoned)
    out = tmp_path / "run"
    assert train(out, "--steps", "20", "--checkpoint-every", "0") == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 6" in err and "state after step 5" in err
    assert f"saved the last good state (step 5) to {out / 'step-000005'}" in err and "--resume" in err
    directory, meta = ckpt.read_checkpoint(out)
    assert directory.name == "step-000005" and meta["step"] == 5


def test_periodic_checkpoints_from_the_cli(tmp_path, tmp_cache):
    out = tmp_path / "run"
    assert train(out, "--steps", "9", "--checkpoint-every", "4") == 0
    # saves at 4 and 8, then the final step; keep_checkpoints=2 keeps the newest two
    assert [p.name for p in ckpt.checkpoint_folders(out)] == ["step-000008", "step-000009"]


# ---------------------------------------------------------------- silently wrong results
def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_resuming_on_other_data_is_refused_unless_asked(tmp_path, capsys, tmp_cache):
    first = _write(tmp_path / "a.txt", "the cat sat on the mat. " * 400)
    other = _write(tmp_path / "b.txt", "the mat sat on the cat. " * 400)  # same characters, other text
    out = tmp_path / "run"
    assert train(out, "--data", first, "--steps", "3") == 0
    tokenizer_before = (ckpt.resolve(out) / "tokenizer.json").read_text()
    before = files_digest(out)
    capsys.readouterr()
    assert train(out, "--data", other, "--steps", "6", "--resume") == 2
    err = capsys.readouterr().err
    assert "was trained on other data" in err and "a.txt" in err and "--allow-new-data" in err
    assert files_digest(out) == before
    assert train(out, "--data", other, "--steps", "6", "--resume", "--allow-new-data") == 0
    directory, meta = ckpt.read_checkpoint(out)
    assert meta["step"] == 6 and meta["data"]["source"] == other
    assert (directory / "tokenizer.json").read_text() == tokenizer_before  # the run keeps its own tokenizer


def test_resuming_with_text_the_run_cannot_encode_is_one_clear_error(tmp_path, capsys, tmp_cache):
    out = tmp_path / "run"
    assert train(out, "--data", _write(tmp_path / "a.txt", "abc abc. " * 500), "--steps", "2") == 0
    capsys.readouterr()
    assert train(out, "--data", _write(tmp_path / "b.txt", "xyz xyz. " * 500), "--steps", "4", "--resume") == 2
    assert "error:" in capsys.readouterr().err


def test_the_api_refuses_a_checkpoint_of_another_tokenizer_always(tmp_path, tmp_cache):
    def trainer_on(text, out=None):
        data = TokenData.from_text(text, CharTokenizer.train(text))
        return Trainer(GPT(preset("ci").model_config(data.vocab_size, n_layer=1, d_model=32), seed=0), CausalLM(),
                       data, preset("ci").train_config(steps=2, eval_every=0), callbacks=[], out_dir=out)

    saved = trainer_on("abcd efgh. " * 300, tmp_path / "run")
    saved.fit()
    saved.save_checkpoint()
    other = trainer_on("ijkl mnop. " * 300)  # a tokenizer of the same size whose ids mean other characters
    assert other.data.vocab_size == saved.data.vocab_size
    for allow in (False, True):
        with pytest.raises(CheckpointError, match="another tokenizer.*same ids would mean other tokens"):
            other.load_checkpoint(tmp_path / "run", allow_new_data=allow)
    assert other.step == 0


def test_a_knob_the_attention_ignores_is_refused(tmp_path, capsys, tmp_cache):
    assert train(tmp_path / "run", "--attention", "mha", "--window", "5") == 2
    assert "window=5 has no effect with attention='mha'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("count", ["0", "-2", "two"])
def test_sample_needs_at_least_one_sample(count, capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", "--checkpoint", "anywhere", "--num-samples", count])
    assert info.value.code == 2 and "--num-samples" in capsys.readouterr().err


# ---------------------------------------------------------------- errors that are one clear line
@pytest.mark.parametrize("kind", ["binary", "directory", "empty"])
def test_bench_data_errors_are_one_clear_line(tmp_path, capsys, kind):
    path = tmp_path / "data"
    if kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_text("")
    assert main(["bench", "--which", "recipe", "--data", str(path), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and str(path) in err
    assert {"binary": "not UTF-8", "directory": "is a directory", "empty": "is empty"}[kind] in err


def test_ctrl_c_before_training_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted_import(*args, **kwargs):
        raise KeyboardInterrupt  # as when Ctrl-C lands while torch is still being imported

    monkeypatch.setattr(cli, "_build", interrupted_import)
    assert train(tmp_path / "run", "--steps", "2") == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted (Ctrl-C)") and "Traceback" not in err


# ---------------------------------------------------------------- real signals to a real process
def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", *args]


@pytest.fixture
def cli_env(tmp_cache):
    return {**os.environ, "OMP_NUM_THREADS": "1", "WORKBENCH_CACHE": str(tmp_cache), "PYTHONUNBUFFERED": "1"}


def _wait_for(condition, process, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.002)


def test_sigkill_during_a_save_leaves_a_valid_run_that_resumes(tmp_path, cli_env):
    out = tmp_path / "run"

    def command(steps, *extra):
        return _cli("train", "--preset", "ci", "--n-layer", "2", "--d-model", "64", "--steps", str(steps),
                    "--checkpoint-every", "1", "--out", str(out), *extra)

    for kill in range(2):
        process = subprocess.Popen(command(300, *(["--resume"] if kill else [])), env=cli_env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        own_temporary = f".tmp-{process.pid}"  # this process's save in progress (not a killed one's leftover)
        _wait_for(lambda: len(ckpt.checkpoint_folders(out)) >= 1 + kill  # a complete save came before
                  and any(p.name.endswith(own_temporary) for p in out.iterdir()), process, "save in progress")
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        directory, meta = ckpt.read_checkpoint(out)  # latest.json points at a complete, verified checkpoint
        assert directory.name == f"step-{meta['step']:06d}"
    done = subprocess.run(command(meta["step"] + 3, "--resume"), env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed {out} at step {meta['step']}" in done.stdout
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]  # no stale temporaries
    assert ckpt.read_checkpoint(out)[1]["step"] == meta["step"] + 3


def test_sigint_during_training_saves_and_resumes_bitwise(tmp_path, cli_env):
    """Ctrl-C mid-training, then --resume: the same weights as a run never interrupted."""
    common = ["train", *TINY, "--steps", "400", "--checkpoint-every", "25"]
    process = subprocess.Popen(_cli(*common, "--out", str(tmp_path / "stopped")), env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (tmp_path / "stopped" / "latest.json").exists(), process, "first checkpoint")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    directory, meta = ckpt.read_checkpoint(tmp_path / "stopped")
    assert 25 <= meta["step"] < 400 and "Traceback" not in stderr
    assert f"saved step {meta['step']} to {directory}" in stderr and "--resume" in stderr
    for name, extra in (("stopped", ["--resume"]), ("straight", [])):
        finished = subprocess.run(_cli(*common, "--out", str(tmp_path / name), *extra), env=cli_env,
                                  capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
    stopped, straight = weights(tmp_path / "stopped"), weights(tmp_path / "straight")
    assert all(torch.equal(stopped[k], straight[k]) for k in straight)


def test_sigint_in_the_first_second_is_one_line_not_a_traceback(tmp_path, cli_env):
    """Ctrl-C while torch is still being imported (or the data loaded): exit 130, one line, nothing written."""
    process = subprocess.Popen(_cli("train", *TINY, "--steps", "300", "--out", str(tmp_path / "run")), env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.startswith("interrupted") or "--resume" in stderr
