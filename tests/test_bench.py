"""Smoke tests for `workbench bench`: the machinery runs and reports, on a tiny text, in seconds.

Speed itself is never asserted here (timings on a shared CPU are noise);
the real figures come from running the bench on tiny Shakespeare.
"""
import json
import random

import pytest

from workbench import bench

WORDS = ("the king shall speak of love and war to thee my lord what news from rome "
         "good night sweet prince").split()


@pytest.fixture
def tiny_text(tmp_path):
    rng = random.Random(0)
    lines = []
    while sum(len(line) + 1 for line in lines) < 20_000:
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + ".")
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(lines)[:20_000], encoding="utf-8")
    return path


def test_all_sections_print_table_and_write_json(tiny_text, tmp_path, capsys, tmp_cache):
    out = tmp_path / "figures.json"
    assert bench.main(["--data", str(tiny_text), "--steps", "3", "--threads", "1", "--contexts", "8,12",
                       "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for label in ("nanoGPT DOCUMENTED (not run)", "workbench @ nanoGPT config", "A/B: workbench",
                  "A/B: HF GPT2 reference", "workbench recipe", "tok/s (median step)", "wall to val<=1.88",
                  "workbench / HF GPT2 reference"):
        assert label in printed, label

    figures = json.loads(out.read_text())
    assert set(figures) >= {"machine", "target", "nanogpt_documented", "sections", "ratios"}
    assert figures["nanogpt_documented"]["val_loss"] == 1.886
    sections = figures["sections"]
    assert set(sections) == {"nanogpt", "reference", "recipe", "decode", "diffusion"}
    for name in ("nanogpt", "recipe"):
        run = sections[name]
        assert run["steps"] == 3
        assert run["tokens_per_s_median_step"] > 0
        assert run["tokens_per_s_overall"] > 0
        assert run["wall_s"] > 0
        assert run["final_val_loss"] > 0 and run["full_val_loss"] > 0
        assert {"wall_to_target_s", "step_at_target", "val_loss_at_target", "evals", "config",
                "model_config", "train_config"} <= set(run)
    assert sections["nanogpt"]["model_config"]["n_layer"] == 4
    assert sections["nanogpt"]["train_config"]["batch_size"] == 12
    ref = sections["reference"]
    assert ref["workbench_tokens_per_s_median_step"] > 0
    assert ref["reference_tokens_per_s_median_step"] > 0
    assert len(ref["rounds"]) == 3
    assert figures["ratios"]["workbench_vs_hf_reference_tokens_per_s"] > 0
    assert figures["machine"]["threads"] == 1


def test_one_section_only(tiny_text, tmp_path, capsys):
    out = tmp_path / "recipe.json"
    assert bench.main(["--data", str(tiny_text), "--which", "recipe", "--steps", "2", "--threads", "1",
                       "--target", "9.0", "--json", str(out)]) == 0
    recipe = json.loads(out.read_text())["sections"]["recipe"]
    # a target every evaluation reaches: the run stops at the first evaluation
    assert recipe["stopped_at_target"] and recipe["step_at_target"] == recipe["steps"]
    assert 0 < recipe["wall_to_target_s"] <= recipe["wall_s"] + 1e-9
    printed = capsys.readouterr().out
    assert "workbench recipe" in printed and "A/B" not in printed


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(SystemExit) as exc:
        bench.main(["--data", str(missing), "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere.txt" in err and "--data" in err
    with pytest.raises(FileNotFoundError, match="--data"):
        bench.load_char_data(missing)


def test_char_data_splits_like_nanogpt(tiny_text):
    data = bench.load_char_data(tiny_text)
    text = tiny_text.read_text(encoding="utf-8")
    assert len(data.train) == int(len(text) * 0.9)
    assert len(data.train) + len(data.val) == len(text)
    assert len(data.tokenizer.chars) == len(set(text))
    assert data.tokenizer.decode(data.val[:50].tolist()) == text[len(data.train):len(data.train) + 50]


def test_sections_registry_is_extensible():
    assert list(bench.SECTIONS) == ["nanogpt", "reference", "recipe", "decode", "diffusion"]
    assert all(callable(fn) for fn in bench.SECTIONS.values())


def test_decode_section_needs_no_data_and_checks_every_cache(tmp_path, capsys):
    """Every registered setup is measured; measured cache bytes equal each variant's formula."""
    from workbench.variants import setup_names

    out = tmp_path / "decode.json"
    assert bench.main(["--which", "decode", "--data", str(tmp_path / "absent.txt"), "--contexts", "6,20",
                       "--steps", "2", "--threads", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["sections"]["decode"]
    assert list(figures["setups"]) == setup_names() and "MHA" in figures["setups"]
    for name, setup in figures["setups"].items():
        for context in ("6", "20"):
            f = setup["contexts"][context]
            assert f["cache_bytes_measured"] == f["cache_bytes_formula"] > 0, (name, context)
            assert f["decode_tokens_per_s"] > 0
    ratios = figures["ratios_at_longest_context"]
    assert ratios["MHA"] == {"cache": 1.0, "decode_speed": 1.0}
    assert ratios["GQA"]["cache"] == 0.5 and ratios["MQA"]["cache"] == 0.25
    printed = capsys.readouterr().out
    assert "ratios to MHA at T=20" in printed and "formula differs" not in printed


def test_diffusion_section_needs_no_data_and_reports_the_ratio_over_seeds(tmp_path, capsys, tmp_cache):
    out = tmp_path / "diffusion.json"
    assert bench.main(["--which", "diffusion", "--data", str(tmp_path / "absent.txt"), "--steps", "2", "--threads", "1",
                       "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["sections"]["diffusion"]
    assert [r["seed"] for r in figures["per_seed"]] == [0, 1, 2] and figures["mdlm"]["estimator"] == "mdlm"
    for row in figures["per_seed"]:
        assert row["ppl_ratio"] > 0 and row["scored_tokens"] == 63
    ratios = [r["ppl_ratio"] for r in figures["per_seed"]]
    assert figures["ratio"]["min"] == min(ratios) and figures["ratio"]["max"] == max(ratios)
    assert set(figures["sampling"]) == {"AR (cached)", *(f"{name}, {n} steps" for n in (2, 4) for name in
                                                         ("ancestral", "low confidence", "random order"))}
    assert figures["sampling"]["low confidence, 4 steps"]["forward_passes"] == 4
    assert all(row["samples_per_s"] > 0 for row in figures["sampling"].values())
    printed = capsys.readouterr().out
    assert "ratio over seeds (exact_count)" in printed and "published at scale" in printed


def test_bad_contexts_are_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--which", "decode", "--contexts", "8,x"])
    assert "--contexts" in capsys.readouterr().err
