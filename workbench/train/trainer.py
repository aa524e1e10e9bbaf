"""The one Trainer: AdamW, warmup + cosine, clipping, accumulation, eval, checkpoints.

It knows nothing about any objective: each step draws clean token windows
from the data, hands them to ``objective.loss(model, batch, generator)``,
and minimizes what comes back. The same loop trains every model in the
workbench, in notebooks, scripts, the CLI and tests.

What it trains is the model *and* whatever the objective owns (an
``Objective`` is an ``nn.Module``: ELECTRA's generator, a classification
head): both are optimized, clipped, moved to the device, checkpointed and
resumed together, and a tensor they share is counted once. Accumulated
micro-batches are weighted by the tokens each one scores
(``ObjectiveOutput.n_tokens``), so a step's gradient is that of the mean
loss over every scored token of the step, whichever micro-batch it was in.

Guarantees a classroom needs:

* **Exact resume.** A checkpoint holds weights, optimizer moments, the step,
  the history and every RNG state, so a run resumed at step k repeats the
  uninterrupted run's losses.
* **Stop button safe.** A KeyboardInterrupt (Jupyter's stop button) rolls
  the half-done step back (gradients cleared, RNG states restored), so model,
  optimizer and history are intact and ``fit()`` continues as if never
  stopped. The optimizer update itself is shielded from the interrupt.
* **No silent divergence.** A NaN or inf loss (or gradient), or an update
  too large for the weights' float type, stops training with
  ``NonFiniteLossError`` before it touches the weights, keeping the last good
  state. Should the optimizer itself fail half-way through an update, the
  Trainer refuses to save or continue that state until ``load_checkpoint``
  brings back the last saved one.
* **It knows its data.** A checkpoint records the tokenizer and a hash of
  the tokens it was trained on; resuming on other data is refused unless
  asked for (``allow_new_data=True``), and on another tokenizer always.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
from tqdm.auto import tqdm

from ..config import ModelConfig, TrainConfig
from ..device import autocast, autocast_dtype, pick_device, seed_everything
from ..interrupts import held_interrupts
from ..validation import check_int
from . import checkpoint as ckpt
from .callbacks import Callback, PrintLogger
from .schedule import warmup_cosine


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient or the update became NaN/inf; the model keeps its last good state."""


class BrokenUpdateError(RuntimeError):
    """The optimizer failed half-way through an update: the weights are no longer a state of the run."""


def _end_progress_bar(bar) -> None:
    """Close fit()'s bar so that it disappears, whether the run completed or was stopped.

    tqdm's notebook bar, closed short of its total (the stop button), turns red for good; a stop is
    not an error (fit() continues from there). And when it closes normally with ``leave=False`` it
    closes its widget model, while the browser may still be creating the bar's view: the page then
    logs "widget model not found". So a notebook bar is hidden (its model stays) and then closed as a
    finished, disabled bar; a console bar is closed as finished (``leave=False`` clears its line).
    """
    container = getattr(bar, "container", None)  # only tqdm.notebook bars have one
    if container is not None and not getattr(bar, "disable", False):
        container.layout.display = "none"
        container.layout.visibility = "hidden"
        bar.disable = True  # close() leaves a disabled bar's widget alone
    bar.total = bar.n
    bar.close()


class Trainer:
    def __init__(self, model, objective, data, config: Optional[TrainConfig] = None,
                 callbacks: Optional[Iterable[Callback]] = None, out_dir=None, tokenizer=None):
        self.config = config or TrainConfig()
        self.device = pick_device(self.config.device)
        self.amp_dtype = autocast_dtype(self.device, self.config.dtype)
        self.model = model.to(self.device)
        self.objective = objective
        objective.setup(self.model, seed=self.config.seed)  # builds what the objective owns (seeded, RNG untouched)
        self.objective.to(self.device)
        self.data = data
        self.tokenizer = tokenizer if tokenizer is not None else getattr(data, "tokenizer", None)
        self.callbacks = list(callbacks) if callbacks is not None else [PrintLogger()]
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.data.check_block(model.config.block_size + 1)
        self.generator = seed_everything(self.config.seed)
        # This trainer's own dropout RNG: swapped into torch's global RNG only while fit() runs, so two
        # trainers built (or fitted in turns) side by side do not draw from each other's stream.
        self._rng_state = _global_rng_state()
        self._fitting = False
        self.optimizer = self._make_optimizer()
        self.flops_per_token = objective.flops_per_token(self.model)
        self.step = 0
        self.history: dict[str, list[dict]] = {"train": [], "eval": []}
        self.elapsed = 0.0  # wall seconds spent in fit(), evaluation included
        self.tokens_seen = 0
        self.interrupted = False  # the last fit() was stopped by Ctrl-C / the stop button
        self._broken: Optional[str] = None  # why the state is unusable (a half-applied update), if it is
        self._forward_model = torch.compile(self.model) if self.config.compile else self.model

    # ------------------------------------------------------------------ setup
    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters, then those the objective owns that the model does not share, each once."""
        seen, params = set(), []
        for p in (*self.model.parameters(), *self.objective.parameters()):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        return params

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW (Loshchilov & Hutter 2019); weight decay on matrices only, not on biases or norms."""
        params = self.trained_parameters()
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(self.config.beta1, self.config.beta2),
                                 fused=self.device.type == "cuda")

    def lr_at(self, step: int) -> float:
        c = self.config
        return warmup_cosine(step, lr=c.lr, min_lr=c.min_lr, warmup_steps=c.warmup_steps, total_steps=c.steps)

    @property
    def tokens_per_step(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.model.config.block_size

    # ------------------------------------------------------------------ training
    def fit(self, steps: Optional[int] = None) -> dict:
        """Train until ``config.steps`` (or for ``steps`` more steps). Returns the history.

        Ctrl-C (Jupyter's stop button) ends it cleanly between steps and sets ``interrupted``.
        """
        if steps is not None:
            check_int("Trainer.fit", "steps", steps, minimum=0)
        self._check_usable()
        target = self.config.steps if steps is None else self.step + steps
        self.interrupted = False
        for callback in self.callbacks:
            callback.on_train_begin(self)
        bar = tqdm(total=target, initial=self.step, desc="training", unit="step", leave=False)
        start = time.perf_counter()
        base_elapsed = self.elapsed
        outer_rng = _global_rng_state()
        _set_global_rng_state(self._rng_state)
        self._fitting = True
        try:
            while self.step < target:
                record = self._train_step(start, base_elapsed)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                for callback in self.callbacks:
                    callback.on_step(self, record)
                if self.config.eval_every and (self.step % self.config.eval_every == 0 or self.step == target):
                    self._evaluate_and_log(start, base_elapsed)
                if self.out_dir is not None and self.config.checkpoint_every and \
                        self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            self.interrupted = True
            print(f"Interrupted after step {self.step}: model, optimizer and history are intact; "
                  "fit() continues from here.")
        finally:
            self._fitting = False
            self._rng_state = _global_rng_state()
            _set_global_rng_state(outer_rng)
            self.elapsed = base_elapsed + (time.perf_counter() - start)
            _end_progress_bar(bar)
            for callback in self.callbacks:
                callback.on_train_end(self)
        return self.history

    def _train_step(self, start: float, base_elapsed: float) -> dict:
        snapshot = (self.generator.get_state(), torch.get_rng_state(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        step_start = time.perf_counter()
        try:
            lr = self.lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.objective.set_progress(self.step, self.config.steps)
            self.model.train()
            self.objective.train()
            total, scored = 0.0, 0
            for _ in range(self.config.grad_accum):
                batch = self.data.get_batch("train", self.config.batch_size,
                                            self.model.config.block_size + 1, self.generator).to(self.device)
                with autocast(self.device, self.amp_dtype):
                    out = self.objective.loss(self._forward_model, batch, self.generator)
                loss_value = float(out.loss.detach())
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"the loss became {loss_value} at step {self.step + 1} (lr={lr:.2e}); training stopped "
                        f"and the model keeps its state after step {self.step}. Lower lr, lengthen warmup, "
                        "or set grad_clip > 0"
                    )
                # sum over scored tokens now, divide by the step's total below: micro-batches weigh by n_tokens
                (out.loss * out.n_tokens).backward()
                total += loss_value * out.n_tokens
                scored += out.n_tokens
            self._average_gradients(scored)
            total /= max(scored, 1)
            grad_norm = self._clip_gradients()
            self._check_update_fits()
        except (KeyboardInterrupt, NonFiniteLossError):
            self.optimizer.zero_grad(set_to_none=True)
            self.generator.set_state(snapshot[0])
            torch.set_rng_state(snapshot[1])
            if snapshot[2] is not None:
                torch.cuda.set_rng_state_all(snapshot[2])
            raise
        with held_interrupts():  # commit the step as one unit
            try:
                self.optimizer.step()
            except Exception as error:
                self._broken = (f"the optimizer failed half-way through the update of step {self.step + 1} "
                                f"({type(error).__name__}: {error}), so the weights are no longer the state "
                                f"after step {self.step}")
                raise BrokenUpdateError(f"{self._broken}. Nothing was saved; reload the last checkpoint "
                                        "with trainer.load_checkpoint(run_dir)") from error
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            step_time = time.perf_counter() - step_start
            record = {"step": self.step, "loss": total, "lr": lr, "grad_norm": grad_norm,
                      "tokens": self.tokens_seen, "flops": self.tokens_seen * self.flops_per_token,
                      "tokens_per_s": self.tokens_per_step / max(step_time, 1e-9),
                      "elapsed": base_elapsed + time.perf_counter() - start, **out.metrics}
            self.history["train"].append(record)
        return record

    def _average_gradients(self, scored: int) -> None:
        """Turn the summed gradients of the step's micro-batches into the gradient of their token mean."""
        if scored > 1:
            for p in self.trained_parameters():
                if p.grad is not None:
                    p.grad.div_(scored)

    def _clip_gradients(self) -> float:
        params = [p for p in self.trained_parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(norm):
            raise NonFiniteLossError(
                f"the gradient norm became {norm} at step {self.step + 1}; training stopped and the model keeps "
                f"its state after step {self.step}. Lower lr or set grad_clip > 0"
            )
        return norm

    def _check_update_fits(self) -> None:
        """Refuse an AdamW update whose scalars overflow the weights' float type, before it starts.

        AdamW (Loshchilov & Hutter 2019, Alg. 2) scales the weights by 1 - lr * weight_decay and moves them
        by lr / (1 - beta1^t) * m / (sqrt(v) + eps); torch converts those scalars to the weights' dtype and
        raises mid-update when one overflows (lr = 1e39 in float32), after the moments already changed.
        """
        t = self.step + 1
        for group in self.optimizer.param_groups:
            if not group["params"]:
                continue
            largest = torch.finfo(group["params"][0].dtype).max
            lr, beta1 = group["lr"], group["betas"][0]
            for what, value in (("lr", lr), ("1 - lr * weight_decay", 1 - lr * group["weight_decay"]),
                                ("the step size lr / (1 - beta1^t)", lr / (1 - beta1 ** t))):
                if not (math.isfinite(value) and abs(value) <= largest):
                    raise NonFiniteLossError(
                        f"the update of step {t} would overflow: {what} = {value:.3g} does not fit in "
                        f"{group['params'][0].dtype} (lr {lr:.3g} at this step of the schedule, configured "
                        f"lr={self.config.lr:.3g}); training stopped and the model keeps its "
                        f"state after step {self.step}. Lower lr"
                    )

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise BrokenUpdateError(f"{self._broken}; reload the last checkpoint with "
                                    "trainer.load_checkpoint(run_dir) before training or saving")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "val", batches: Optional[int] = None) -> float:
        """The objective's loss over ``batches`` batches drawn with a fixed seed (same batches, same masks
        every call), averaged over scored tokens as in training. It is the objective of the next step
        (for an objective that changes during training)."""
        generator = torch.Generator().manual_seed(self.config.seed + 1)
        was_training = self.model.training, self.objective.training
        self.model.eval()
        self.objective.eval()
        self.objective.set_progress(self.step, self.config.steps)
        summed, scored = 0.0, 0
        try:
            for _ in range(batches or self.config.eval_batches):
                batch = self.data.get_batch(split, self.config.batch_size, self.model.config.block_size + 1,
                                            generator).to(self.device)
                with autocast(self.device, self.amp_dtype):
                    out = self.objective.loss(self._forward_model, batch, generator)
                summed += float(out.loss) * out.n_tokens
                scored += out.n_tokens
        finally:
            self.model.train(was_training[0])
            self.objective.train(was_training[1])
        return summed / scored if scored else float("nan")

    def _evaluate_and_log(self, start: float, base_elapsed: float) -> dict:
        since = self.history["eval"][-1]["step"] if self.history["eval"] else 0
        recent = [r["loss"] for r in self.history["train"] if r["step"] > since]
        record = {"step": self.step, "val_loss": self.evaluate("val"),
                  "train_loss": sum(recent) / len(recent) if recent else float("nan"),
                  "elapsed": base_elapsed + time.perf_counter() - start, "tokens": self.tokens_seen}
        self.history["eval"].append(record)
        for callback in self.callbacks:
            callback.on_eval(self, record)
        return record

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path=None) -> Path:
        """Save everything needed to resume exactly. Default: out_dir/step-XXXXXX + latest.json.

        Ctrl-C during the save is held back until the checkpoint and its pointer are written.
        """
        if path is None and self.out_dir is None:
            raise ValueError("save_checkpoint needs a path, or build the Trainer with out_dir=...")
        self._check_usable()
        run_dir = Path(path) if path is not None else self.out_dir
        opt_tensors, opt_meta = ckpt.optimizer_tensors(self.optimizer)
        torch_rng, cuda_rng = _global_rng_state() if self._fitting else self._rng_state
        rng = {"rng.torch": torch_rng, "rng.data": self.generator.get_state()}
        if cuda_rng is not None:
            rng["rng.cuda"] = torch.stack(cuda_rng)
        meta = {"model_config": self.model.config.to_dict(), "train_config": self.config.to_dict(),
                "step": self.step, "elapsed": self.elapsed, "tokens_seen": self.tokens_seen,
                "history": self.history, "optimizer": opt_meta, "objective": self.objective.to_dict(),
                "data": self._data_fingerprint()}
        extra = {"tokenizer.json": self.tokenizer.to_json()} if self.tokenizer is not None else None
        tensor_files = {"model.safetensors": ckpt.model_tensors(self.model),
                        "trainer.safetensors": {**opt_tensors, **rng}}
        owned = ckpt.objective_tensors(self.objective, self.model)
        if owned:
            tensor_files["objective.safetensors"] = owned
        with held_interrupts():
            directory = ckpt.write_checkpoint(run_dir / f"step-{self.step:06d}", tensor_files, meta, extra)
            ckpt.point_latest(run_dir, directory)
            ckpt.prune(run_dir, self.config.keep_checkpoints)
        return directory

    def _data_fingerprint(self) -> Optional[dict]:
        """What the data says it is (TokenData.fingerprint: tokenizer and token hashes), or None."""
        fingerprint = getattr(self.data, "fingerprint", None)
        return fingerprint() if callable(fingerprint) else None

    def _check_same_data(self, directory: Path, saved: Optional[dict], allow_new_data: bool) -> None:
        """Refuse to resume on another tokenizer (ids would mean other tokens) or, unless allowed, other text."""
        current = self._data_fingerprint()
        if not saved or not current:
            return

        def describe(f: dict) -> str:
            source = f" from {f['source']!r}" if f.get("source") else ""
            return f"{f['tokens']:,} tokens{source}, {f['tokenizer']} tokenizer with {f['vocab_size']} ids"

        if saved["tokenizer_sha256"] != current["tokenizer_sha256"]:
            raise ckpt.CheckpointError(
                f"{directory} was trained with another tokenizer ({describe(saved)}) than this data's "
                f"({describe(current)}): the same ids would mean other tokens. Encode the text with the run's "
                "tokenizer (workbench.train.checkpoint.load_checkpoint_tokenizer(path); `workbench train --resume` "
                "does this itself)"
            )
        if saved["tokens_sha256"] != current["tokens_sha256"] and not allow_new_data:
            raise ckpt.CheckpointError(
                f"{directory} was trained on other data ({describe(saved)}) than this ({describe(current)}). "
                "Resume with the run's data, or continue on the new data on purpose with allow_new_data=True "
                "(workbench train --allow-new-data)"
            )

    def load_checkpoint(self, path, *, allow_new_data: bool = False) -> None:
        """Restore weights, optimizer, step, history and RNG from a checkpoint of the same model config.

        Everything is read and checked before anything is changed. A checkpoint trained on other data
        is refused unless ``allow_new_data`` (continuing on new text on purpose, e.g. fine-tuning).
        """
        directory, meta = ckpt.read_checkpoint(path)
        stored = ModelConfig.from_dict(meta["model_config"])
        if stored != self.model.config:
            diffs = [f"{k}: checkpoint {v!r} vs model {getattr(self.model.config, k)!r}"
                     for k, v in stored.to_dict().items() if getattr(self.model.config, k) != v]
            raise ckpt.CheckpointError(
                f"{directory} was saved from a model with another config ({'; '.join(diffs)}); build the "
                "model with the checkpoint's config, e.g. workbench.train.load_model(path)"
            )
        ckpt.check_same_objective(directory, meta.get("objective"), self.objective)
        ckpt.check_training_state(meta, directory / "checkpoint.json", self.optimizer)
        self._check_same_data(directory, meta.get("data"), allow_new_data)
        model_state = ckpt.read_tensors(directory, "model.safetensors")
        trainer_state = ckpt.read_tensors(directory, "trainer.safetensors")
        objective_state = (ckpt.read_tensors(directory, "objective.safetensors")
                           if "objective.safetensors" in meta["files"] else {})
        ckpt.check_objective_tensors(self.objective, self.model, objective_state)
        ckpt.load_model_tensors(self.model, model_state)
        ckpt.load_objective_tensors(self.objective, self.model, objective_state)
        ckpt.restore_optimizer(self.optimizer, trainer_state, meta["optimizer"])
        cuda_rng = self._rng_state[1]
        if "rng.cuda" in trainer_state and torch.cuda.is_available():
            cuda_rng = list(trainer_state["rng.cuda"])
        self._rng_state = (trainer_state["rng.torch"], cuda_rng)
        self.generator.set_state(trainer_state["rng.data"])
        self.step = meta["step"]
        self.elapsed = meta.get("elapsed", 0.0)
        self.tokens_seen = meta.get("tokens_seen", 0)
        self.history = meta["history"]
        self._broken = None

    @classmethod
    def resume(cls, path, objective=None, data=None, callbacks=None, out_dir=None, *, allow_new_data: bool = False,
               **config_changes) -> "Trainer":
        """Rebuild model, objective (unless given) and Trainer from a checkpoint and restore their state."""
        from ..models import GPT

        if data is None:
            raise ValueError("Trainer.resume needs the data to continue on: Trainer.resume(path, data=data)")
        directory, meta = ckpt.read_checkpoint(path)
        ckpt.check_training_state(meta, directory / "checkpoint.json")
        if objective is None:
            objective = ckpt.checkpoint_objective(directory, meta)
        model = GPT(ModelConfig.from_dict(meta["model_config"]))
        config = TrainConfig.from_dict({**meta["train_config"], **config_changes})
        if out_dir is None:  # keep saving into the run directory, also when resuming from a step-* folder
            out_dir = Path(path) if (Path(path) / "latest.json").is_file() else directory.parent
        trainer = cls(model, objective, data, config, callbacks=callbacks, out_dir=out_dir)
        trainer.load_checkpoint(path, allow_new_data=allow_new_data)
        return trainer


def _global_rng_state():
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_global_rng_state(state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])
