"""The `workbench` command line: train, sample, tour, and clear errors."""
import json

import pytest

from workbench.cli import main
from workbench.train import load_model


def test_train_then_sample(tmp_path, capsys, tmp_cache):
    out = tmp_path / "run"
    code = main(["train", "--preset", "ci", "--data", "stories", "--steps", "30", "--n-layer", "1",
                 "--d-model", "32", "--block-size", "32", "--out", str(out)])
    assert code == 0
    pointer = json.loads((out / "latest.json").read_text())
    assert pointer["checkpoint"] == "step-000030"
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--prompt", "Once", "--max-new-tokens", "20"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Once") and len(printed.splitlines()[0]) > 4


def test_train_resume_continues(tmp_path, tmp_cache):
    out = tmp_path / "run"
    args = ["train", "--preset", "ci", "--steps", "10", "--n-layer", "1", "--d-model", "32", "--block-size", "32",
            "--out", str(out)]
    assert main(args) == 0
    assert main(args[:3] + ["--steps", "20"] + args[5:] + ["--resume"]) == 0
    assert json.loads((out / "latest.json").read_text())["checkpoint"] == "step-000020"


def test_sample_with_unknown_characters_is_a_clear_error(tmp_path, capsys, tmp_cache):
    out = tmp_path / "run"
    assert main(["train", "--preset", "ci", "--steps", "2", "--n-layer", "1", "--d-model", "32",
                 "--block-size", "32", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--prompt", "☕"]) == 2
    assert "☕" in capsys.readouterr().err


def test_missing_checkpoint_and_data_are_clear_errors(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "r")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_invalid_model_size_is_one_clear_error(tmp_path, capsys, tmp_cache):
    assert main(["train", "--preset", "ci", "--n-head", "3", "--d-model", "32", "--out", str(tmp_path / "r")]) == 2
    assert "n_head=3" in capsys.readouterr().err


def test_tour_runs_and_reports_the_floor(capsys, tmp_cache):
    assert main(["tour", "--preset", "ci", "--steps", "20", "--n-layer", "1", "--d-model", "32"]) == 0
    printed = capsys.readouterr().out
    assert "0.4030 nats/char" in printed and "sample, temperature" in printed


def test_train_picks_an_attention_variant_and_sample_reloads_it(tmp_path, capsys, tmp_cache):
    out = tmp_path / "window"
    assert main(["train", "--preset", "ci", "--steps", "5", "--n-layer", "1", "--d-model", "32", "--block-size", "32",
                 "--attention", "sliding_window", "--window", "8", "--position", "alibi", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sliding_window" in printed and "alibi positions" in printed
    model, _ = load_model(out)
    assert (model.config.attention, model.config.window, model.config.position) == ("sliding_window", 8, "alibi")
    assert main(["sample", "--checkpoint", str(out), "--prompt", "Once", "--max-new-tokens", "5"]) == 0


def test_unsupported_variant_position_is_one_clear_error(tmp_path, capsys, tmp_cache):
    assert main(["train", "--preset", "ci", "--attention", "sliding_window", "--position", "alibi", "--window", "0",
                 "--out", str(tmp_path / "r")]) == 2
    assert "window=0" in capsys.readouterr().err
    assert main(["train", "--preset", "ci", "--attention", "flash", "--out", str(tmp_path / "r")]) == 2
    assert "'flash'" in capsys.readouterr().err and not (tmp_path / "r").exists()
