"""Tiny shared fixtures for the core tests: configs, models and an in-memory data source.

``MarkovData`` is an order-1 Markov chain over a small vocabulary: every
token has ``branching`` possible successors, chosen once from a fixed seed,
each with probability 1 / branching. Its entropy rate is exactly
ln(branching) nats per token, so a test can put the "did it learn" bound
between that floor and the untrained ln(vocab_size).
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import pytest
import torch

from workbench.config import ModelConfig, TrainConfig
from workbench.models import GPT
from workbench.objectives.base import Objective, ObjectiveOutput


@pytest.fixture(autouse=True)
def single_thread():
    """Run each test on one torch thread (restored afterwards).

    Tiny models gain nothing from a second thread, and with 2 threads on 2 cores
    any competing process slows a step 10-40x (DESIGN.md, "CPU timing").
    Test modules import this fixture so it applies to them automatically.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MarkovData:
    """The Trainer's data interface over two token streams ("train", "val") in memory."""

    def __init__(self, vocab_size: int = 32, branching: int = 2, length: int = 20_000, seed: int = 0,
                 val_length: int = 4_000):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.branching = branching
        # successors[s] = the `branching` distinct tokens that may follow s
        self.successors = torch.stack([torch.randperm(vocab_size, generator=g)[:branching]
                                       for _ in range(vocab_size)])
        self.streams = {"train": self._sample(length, g), "val": self._sample(val_length, g)}
        self.tokenizer = None

    @property
    def entropy_rate(self) -> float:
        """Nats per token of the source: the best loss any model can reach."""
        return math.log(self.branching)

    def _sample(self, length: int, g: torch.Generator) -> torch.Tensor:
        choices = torch.randint(0, self.branching, (length,), generator=g)
        out = torch.empty(length, dtype=torch.long)
        state = int(torch.randint(0, self.vocab_size, (1,), generator=g))
        for t in range(length):
            out[t] = state
            state = int(self.successors[state, choices[t]])
        return out

    def check_block(self, length: int) -> None:
        shortest = min(len(s) for s in self.streams.values())
        if length > shortest:
            raise ValueError(f"windows of {length} tokens do not fit a stream of {shortest} tokens")

    def get_batch(self, split: str, batch_size: int, length: int,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
        stream = self.streams[split]
        starts = torch.randint(0, len(stream) - length + 1, (batch_size,), generator=generator)
        return torch.stack([stream[s:s + length] for s in starts.tolist()])


@functools.lru_cache(maxsize=None)
def markov_data(vocab_size: int = 32, branching: int = 2, seed: int = 0) -> MarkovData:
    """One shared, read-only MarkovData per setting (building one takes a fraction of a second)."""
    return MarkovData(vocab_size=vocab_size, branching=branching, seed=seed)


class FixedBatches:
    """Serves rows of one fixed tensor in order, ignoring the generator.

    Two runs that draw the same rows in different batch sizes see the same data,
    which grad-accumulation tests need.
    """

    def __init__(self, rows: torch.Tensor):
        self.rows = rows
        self.cursor = 0
        self.tokenizer = None

    def check_block(self, length: int) -> None:
        if length != self.rows.shape[1]:
            raise ValueError(f"rows have {self.rows.shape[1]} tokens, windows of {length} were asked")

    def get_batch(self, split, batch_size, length, generator=None) -> torch.Tensor:
        if split != "train":
            return self.rows[:batch_size]
        out = self.rows[self.cursor:self.cursor + batch_size]
        self.cursor += batch_size
        assert out.shape[0] == batch_size, "FixedBatches ran out of rows"
        return out


class WrappedObjective(Objective):
    """Delegates to ``inner`` and counts calls; subclasses/tests override ``hook``."""

    name = "wrapped"

    def __init__(self, inner: Objective, hook=None):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.hook = hook

    def to_dict(self) -> dict:  # transparent: a checkpoint records the inner objective
        return self.inner.to_dict()

    def loss(self, model, batch, generator=None) -> ObjectiveOutput:
        self.calls += 1
        out = self.inner.loss(model, batch, generator)
        if self.hook is not None:
            out = self.hook(self.calls, model, out) or out
        return out


def tiny_config(**changes) -> ModelConfig:
    values = dict(vocab_size=32, block_size=16, n_layer=2, n_head=4, d_model=32)
    values.update(changes)
    return ModelConfig(**values)


def tiny_model(seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**changes)).eval()


def train_config(**changes) -> TrainConfig:
    values = dict(steps=20, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_every=0, eval_batches=2,
                  log_every=1000, device="cpu", dtype="float32", seed=7)
    values.update(changes)
    return TrainConfig(**values)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def forbid_network(monkeypatch) -> list:
    """Make every attempt to open a network connection fail loudly; returns the attempts made.

    "Fails fast offline" means: no connection is even tried (so no retries to wait for), which is
    exact on any machine, where a wall-clock bound would be a time limit acting as a test.
    """
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("test: the network must not be contacted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def assert_solution_passes(exercise_id: str, solution) -> None:
    """A notebook's solution passes every case of its exercise (3 to 6 cases)."""
    from workbench.exercises import get, run_check

    report = run_check(get(exercise_id), solution)
    assert report.passed, str(report)
    assert 3 <= len(report.results) <= 6


def assert_wrong_answer_points_at_itself(exercise_id: str, function, expected_text: str) -> None:
    """A plausible wrong answer fails, and its first failing line contains ``expected_text``."""
    from workbench.exercises import get, run_check

    report = run_check(get(exercise_id), function)
    assert not report.passed and not report.not_yet
    failing = [line for line in report.lines() if line.startswith("  ✘")]
    assert failing and expected_text in failing[0], str(report)
