"""`workbench train --objective NAME --option KEY=VALUE`: every registered objective trains from the command
line, a resumed run keeps its own objective, and wrong names or options are one clear error."""
import json

import pytest

from workbench.cli import main, parse_objective_options
from workbench.objectives import OBJECTIVES
from workbench.train import checkpoint as ckpt

SMALL = ["--preset", "ci", "--steps", "3", "--n-layer", "1", "--d-model", "32", "--block-size", "32"]

# every objective the issue names, with an option that is not its default where it has one
EXPECTED = {
    "clm": [],
    "mlm": ["-o", "mask_ratio=0.3", "-o", "strategy=span"],
    "prefix_lm": [],
    "t5_span": ["-o", "n_sentinels=8"],
    "electra": [],
    "meap": ["-o", "mask_ratio=0.1"],
    "clm_then_mlm": ["-o", "switch_at=0.5"],
    "mdlm": ["-o", "estimator=exact_count", "-o", "time_conditioning=True"],
}


def test_every_objective_the_workbench_teaches_is_registered():
    assert set(EXPECTED) <= set(OBJECTIVES.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_train_with_each_objective(name, tmp_path, capsys, tmp_cache):
    out = tmp_path / name
    assert main(["train", *SMALL, "--objective", name, *EXPECTED[name], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"objective {name}" in printed
    _, meta = ckpt.read_checkpoint(out)
    assert meta["objective"]["name"] == name
    for pair in EXPECTED[name][1::2]:
        key, value = pair.split("=")
        assert str(meta["objective"]["options"][key]) == value


def test_resume_keeps_the_runs_objective_and_refuses_another(tmp_path, capsys, tmp_cache):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--objective", "mlm", "-o", "mask_ratio=0.4", "--out", str(out)]) == 0
    more = [a if a != "3" else "5" for a in SMALL]
    assert main(["train", *more, "--out", str(out), "--resume"]) == 0
    _, meta = ckpt.read_checkpoint(out)
    assert meta["step"] == 5 and meta["objective"] == {"name": "mlm", "options": {"mask_ratio": 0.4,
                                                                                   "strategy": "token"}}
    capsys.readouterr()
    assert main(["train", *more, "--objective", "clm", "--out", str(out), "--resume"]) == 2
    assert "trained with the objective 'mlm'" in capsys.readouterr().err
    assert main(["train", *more, "-o", "mask_ratio=0.2", "--out", str(out), "--resume"]) == 2
    assert "--option needs --objective" in capsys.readouterr().err


def test_unknown_objective_and_bad_options_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--objective", "bert", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown objective 'bert'" in err and "mlm" in err
    assert main(["train", *SMALL, "--objective", "mlm", "-o", "ratio=0.3", "--out", str(out)]) == 2
    assert "objective 'mlm' has no option 'ratio'; its options are: mask_ratio" in capsys.readouterr().err
    assert main(["train", *SMALL, "--objective", "mlm", "-o", "mask_ratio=lots", "--out", str(out)]) == 2
    assert "--option mask_ratio='lots'" in capsys.readouterr().err
    assert main(["train", *SMALL, "--objective", "mlm", "-o", "mask_ratio", "--out", str(out)]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err
    assert main(["train", *SMALL, "--objective", "mlm", "-o", "mask_ratio=1.5", "--out", str(out)]) == 2
    assert "mask_ratio" in capsys.readouterr().err
    assert not out.exists()  # nothing was created for a refused command


def test_option_values_are_read_as_the_type_of_their_default():
    assert parse_objective_options("mlm", ["mask_ratio=0.5", "strategy=whole_word"]) == {
        "mask_ratio": 0.5, "strategy": "whole_word"}
    options = parse_objective_options("clm_then_mlm", ['second_options={"mask_ratio": 0.4}', "switch_at=0.25"])
    assert options == {"second_options": {"mask_ratio": 0.4}, "switch_at": 0.25}
    assert json.dumps(options)  # JSON values: they go into checkpoint.json


def test_sample_from_a_diffusion_run_uses_its_sampler(tmp_path, capsys, tmp_cache):
    out = tmp_path / "mdlm"
    assert main(["train", *SMALL, "--objective", "mdlm", "-o", "time_conditioning=True", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--prompt", "Once", "--max-new-tokens", "12", "--steps", "4",
                 "--sampler", "random", "--num-samples", "2"]) == 0
    samples = capsys.readouterr().out.split("-" * 40)[:2]
    # 12 tokens after the prompt (an untrained model may write special ids, which are not printed)
    assert all(text.strip("\n").startswith("Once") and 4 < len(text.strip("\n")) <= 16 for text in samples), samples
    assert main(["sample", "--checkpoint", str(out), "--prompt", "x" * 40]) == 2
    assert "no room in the context" in capsys.readouterr().err
    ar = tmp_path / "clm"
    assert main(["train", *SMALL, "--out", str(ar)]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(ar), "--steps", "4"]) == 2
    assert "--steps and --sampler are for masked diffusion runs" in capsys.readouterr().err
