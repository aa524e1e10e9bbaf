"""The one interface every pretraining objective implements.

An objective turns a clean batch of token windows into a loss. It rewrites
the inputs (masks tokens, corrupts spans), chooses the attention mode
(causal, bidirectional, prefix) and picks which positions are scored:
``corrupt(batch, vocab_size, generator)`` returns all of that as a
``Corruption``, and the default ``loss`` runs the model on it and takes the
cross entropy over the scored positions. The Trainer only calls
``objective.loss(model, batch, generator)`` and never looks inside, so a new
objective is one new file and one registry line.

An objective is an ``nn.Module``: whatever it owns beyond the model (ELECTRA's
generator and discriminator head, a classification head) is a submodule,
built in ``setup(model, seed)`` once the model is known. The Trainer
optimizes, clips, moves, checkpoints and resumes those parameters with the
model's; a tensor the objective shares with the model (ELECTRA's token
embeddings) is trained and saved once, as the model's.

Batches are (B, block_size + 1) windows of a token stream: one token more
than the model's context, so next-token objectives can shift by one, and
objectives that do not shift read the first block_size tokens.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tokenizers import MASK_ID, PAD_ID, SPECIAL_TOKENS
from ..registry import Registry

OBJECTIVES = Registry("objective")

IGNORE = -100  # a target that is not scored (the convention of torch's cross_entropy and of BERT's labels)
NUM_SPECIAL = len(SPECIAL_TOKENS)  # ids 0..3 are [PAD] [MASK] [BOS] [EOS] in every tokenizer


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor          # scalar to minimize: the mean over the scored tokens
    n_tokens: int               # tokens scored by the loss; the Trainer weights accumulated micro-batches by it
    metrics: dict = field(default_factory=dict)  # extra numbers to log (floats)


@dataclass
class Corruption:
    """What the model reads and what it must predict, made from a clean batch."""

    inputs: torch.Tensor                     # (B, T) token ids the model reads
    targets: torch.Tensor                    # (B, T) the token to predict at each position, IGNORE where unscored
    attention_mode: str                      # causal | bidirectional | prefix
    prefix_len: Optional[torch.Tensor] = None  # (B,) for attention_mode="prefix"
    original: Optional[torch.Tensor] = None  # (B, T) the clean tokens at the inputs' positions (for pictures)

    @property
    def scored(self) -> torch.Tensor:
        return self.targets != IGNORE


def scored_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> ObjectiveOutput:
    """Mean cross entropy over the scored positions (targets != IGNORE), and their accuracy.

    With no scored position the loss is 0 (with a gradient of zeros) and n_tokens is 0, so such a
    micro-batch adds nothing when the Trainer weights micro-batches by scored tokens.
    """
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
    n_tokens = int((flat_targets != IGNORE).sum())
    summed = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE, reduction="sum")
    loss = summed / max(n_tokens, 1)
    with torch.no_grad():
        scored = flat_targets != IGNORE
        correct = (flat_logits.argmax(-1) == flat_targets) & scored
        accuracy = float(correct.sum()) / max(n_tokens, 1)
    return ObjectiveOutput(loss=loss, n_tokens=n_tokens, metrics={"accuracy": accuracy})


def special_mask(ids: torch.Tensor, vocab_size: Optional[int] = None) -> torch.Tensor:
    """True at special tokens ([PAD] [MASK] [BOS] [EOS], and ids >= vocab_size such as T5's sentinels)."""
    special = ids < NUM_SPECIAL
    if vocab_size is not None:
        special |= ids >= vocab_size
    return special


def random_tokens(shape, vocab_size: int, generator, device) -> torch.Tensor:
    """Uniform random ordinary (non-special) token ids in [NUM_SPECIAL, vocab_size)."""
    if vocab_size <= NUM_SPECIAL:
        raise ValueError(f"vocab_size {vocab_size} leaves no ordinary tokens after the {NUM_SPECIAL} special ones")
    drawn = torch.randint(NUM_SPECIAL, vocab_size, shape, generator=generator, device="cpu")
    return drawn.to(device)


def uniform(shape, generator, device) -> torch.Tensor:
    """torch.rand from ``generator`` (a CPU generator), moved to ``device``: same draws on every device."""
    return torch.rand(shape, generator=generator, device="cpu").to(device)


class Objective(nn.Module):
    """Base class: subclasses set ``name`` and implement ``corrupt`` (or override ``loss``).

    ``options`` are the constructor's keyword arguments (JSON values); with ``name`` they rebuild
    the objective from a checkpoint (``objective_from_dict``).
    """

    name: str = "objective"
    attention_mode: str = "causal"
    extra_vocab: int = 0  # ids the model needs beyond the tokenizer's (T5's sentinels); the model's vocab grows

    def __init__(self, **options):
        super().__init__()
        self.options = options

    # ------------------------------------------------------------------ the interface
    def setup(self, model, seed: int = 0) -> None:
        """Build what the objective owns once the model is known (called by the Trainer). Default: nothing."""

    def set_progress(self, step: int, total_steps: int) -> None:
        """Told before every optimizer step where training stands (an objective may change with it)."""

    def corrupt(self, batch: torch.Tensor, vocab_size: int, generator=None) -> Corruption:
        raise NotImplementedError(f"{type(self).__name__} must implement corrupt() or loss()")

    def tokenizer_vocab(self, model) -> int:
        """The ids of ordinary text: the model's vocabulary without the objective's extra ids."""
        return model.config.vocab_size - self.extra_vocab

    def loss(self, model, batch: torch.Tensor, generator=None) -> ObjectiveOutput:
        c = self.corrupt(batch, self.tokenizer_vocab(_config_holder(model)), generator)
        logits = model(c.inputs, attention_mode=c.attention_mode, prefix_len=c.prefix_len).logits
        return scored_cross_entropy(logits, c.targets)

    def flops_per_token(self, model) -> int:
        """Training FLOPs per token of a batch, with whatever the objective runs besides the model."""
        return _config_holder(model).flops_per_token()

    # ------------------------------------------------------------------ description
    def to_dict(self) -> dict:
        return {"name": self.name, "options": dict(self.options)}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def _config_holder(model):
    """The GPT behind a torch.compile wrapper (which forwards attributes, but not always)."""
    return getattr(model, "_orig_mod", model)


def make_objective(name: str, tokenizer=None, **options) -> Objective:
    """The registered objective ``name`` built with ``options``; a tokenizer is passed to those that take one.

    An unknown option gets one error that lists the options the objective has.
    """
    cls = OBJECTIVES.get(name)
    parameters = inspect.signature(cls.__init__).parameters
    known = [p for p in parameters if p not in ("self", "tokenizer")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"objective {name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
                         f"{', '.join(known) if known else '(none)'}")
    if "tokenizer" in parameters:
        options["tokenizer"] = tokenizer
    return cls(**options)


def option_types(name: str) -> dict:
    """Each option of objective ``name`` with its default value (for parsing command-line strings)."""
    parameters = inspect.signature(OBJECTIVES.get(name).__init__).parameters
    return {p.name: p.default for p in parameters.values() if p.name not in ("self", "tokenizer")}


def objective_from_dict(description, tokenizer=None) -> Objective:
    """Rebuild an objective from ``to_dict()`` (a checkpoint's "objective" entry; a bare name is CLM-era)."""
    if isinstance(description, str):
        return make_objective(description, tokenizer)
    return make_objective(description["name"], tokenizer, **description.get("options", {}))


__all__ = ["OBJECTIVES", "IGNORE", "NUM_SPECIAL", "MASK_ID", "PAD_ID", "ObjectiveOutput", "Corruption",
           "Objective", "scored_cross_entropy", "special_mask", "random_tokens", "uniform", "make_objective",
           "option_types", "objective_from_dict"]
