"""The training cache: the same run loads instead of training, anything that changes the run misses."""
import torch
import pytest

from workbench.models import GPT
from workbench.objectives import CausalLM
from workbench.train import Callback, Trainer, cached_fit
from workbench.train import cache as cache_module
from workbench.config import ModelConfig, TrainConfig
from workbench.data import CharTokenizer, TokenData, default_story_source


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_TRAINING_CACHE", raising=False)
    return tmp_path / "training"


@pytest.fixture
def story_data(cache):
    text = default_story_source().sample(6000, seed=0)
    return TokenData.from_text(text, CharTokenizer.train(text), source="stories")


@pytest.fixture
def tiny_config(story_data):
    return ModelConfig(vocab_size=story_data.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=16)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append(("begin", trainer.step))

    def on_step(self, trainer, record):
        self.calls.append(("step", record["step"]))

    def on_train_end(self, trainer):
        self.calls.append(("end", trainer.step))


def _trainer(tiny_config, story_data, seed=0, callbacks=(), **changes):
    config = TrainConfig(**{**dict(steps=6, batch_size=4, eval_every=3, eval_batches=1, warmup_steps=2,
                                   device="cpu", seed=0), **changes})
    return Trainer(GPT(tiny_config, seed=seed), CausalLM(), story_data, config, callbacks=list(callbacks))


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_second_run_loads_the_first_exactly_and_continues_like_it(tiny_config, story_data, cache, capsys):
    first = _trainer(tiny_config, story_data)
    cached_fit(first)
    assert not first.from_cache and "saved to the training cache" in capsys.readouterr().out
    recorder = Recorder()
    second = _trainer(tiny_config, story_data, callbacks=[recorder])
    history = cached_fit(second)
    assert second.from_cache and "loaded from the training cache" in capsys.readouterr().out
    assert _same_weights(first, second) and second.step == 6 and history == first.history
    assert recorder.calls == [("begin", 6), ("end", 6)]  # a live plot is shown the finished run, no steps
    first.fit(3)
    second.fit(3)  # optimizer and RNG came back too: continuing is exact
    assert _same_weights(first, second)


@pytest.mark.parametrize("change", [dict(seed=1), dict(lr=2e-3), dict(steps=7)])
def test_anything_that_changes_the_run_misses(tiny_config, story_data, cache, change):
    cached_fit(_trainer(tiny_config, story_data))
    model_seed = change.pop("seed", 0)
    other = _trainer(tiny_config, story_data, seed=model_seed, **change)
    cached_fit(other, quiet=True)
    assert not other.from_cache
    assert len(list(cache.iterdir())) == 2


def test_code_version_is_part_of_the_key(tiny_config, story_data, cache, monkeypatch):
    cached_fit(_trainer(tiny_config, story_data), quiet=True)
    monkeypatch.setattr(cache_module, "code_version", lambda: "edited")
    again = _trainer(tiny_config, story_data)
    cached_fit(again, quiet=True)
    assert not again.from_cache


def test_stopped_runs_and_continued_runs_are_not_cached(tiny_config, story_data, cache, capsys):
    class Stop(Callback):
        def on_step(self, trainer, record):
            if record["step"] == 2:
                raise KeyboardInterrupt

    stopped = _trainer(tiny_config, story_data, callbacks=[Stop()])
    cached_fit(stopped)
    assert stopped.step == 2 and "not cached: the run stopped at step 2 of 6" in capsys.readouterr().out
    assert not cache.exists() or not any(cache.iterdir())
    cached_fit(stopped, quiet=True)  # a trainer that already trained just continues
    assert stopped.step == 6 and not stopped.from_cache and not cache.exists()


def test_switched_off(tiny_config, story_data, cache, monkeypatch):
    monkeypatch.setenv("WORKBENCH_TRAINING_CACHE", "off")
    trainer = _trainer(tiny_config, story_data)
    cached_fit(trainer)
    assert trainer.step == 6 and not cache.exists()


def test_damaged_entry_trains_again_and_an_unwritable_cache_only_warns(tiny_config, story_data, cache, capsys,
                                                                          tmp_path, monkeypatch):
    cached_fit(_trainer(tiny_config, story_data), quiet=True)
    (entry,) = cache.iterdir()
    (checkpoint,) = entry.glob("step-*")
    (checkpoint / "model.safetensors").write_bytes(b"garbage")
    again = _trainer(tiny_config, story_data)
    cached_fit(again)
    assert not again.from_cache and again.step == 6 and "cannot be read" in capsys.readouterr().out
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("WORKBENCH_CACHE", str(blocked))
    third = _trainer(tiny_config, story_data)
    cached_fit(third)
    assert third.step == 6 and "could not write the training cache" in capsys.readouterr().out
