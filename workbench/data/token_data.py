"""A tokenized corpus, and random training windows cut from it.

Pretraining data, at its simplest (this is nanoGPT's recipe), is one very
long row of token ids. The first 90% is for training, the last 10% for
validation. A batch is a handful of windows starting at random places::

    ids:    ... 17 42  9 61  3 28 55 ...
                 [---- window ----]
    input:       17 42  9 61  3          (the first `block_size` tokens)
    target:         42  9 61  3 28       (the same, shifted by one)

so callers ask ``get_batch`` for windows of ``block_size + 1`` tokens and
split each into input and target.

Tokenizing a big text takes a while, so it goes through the Hugging Face
``datasets`` library: the text is cut into chunks, the chunks are tokenized
with ``Dataset.map``, and the result is stored in an Arrow file named by a
hash of the text and the tokenizer. Asking again for the same text and
tokenizer reads that file instead of tokenizing (a *cache hit*). The cache
lives in ``~/.cache/lm-workbench/tokens``, or ``$WORKBENCH_CACHE/tokens``.

Cutting into chunks must not change the result; ``split_into_chunks`` (in
``tokenizers.py``) cuts only where no tokenizer ever merges across.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from workbench.data.corpora import load_text
from workbench.data.tokenizers import Tokenizer, split_into_chunks, tokenizer_from_name
from workbench.validation import check_choice, check_int, check_range

CHUNK_CHARS = 64 * 1024
CACHE_FORMAT = "token-data-v1"  # change to invalidate old cache files


def cache_root() -> Path:
    """Where the workbench caches things: ``$WORKBENCH_CACHE`` if set, else ``~/.cache/lm-workbench``.

    Tokenized data goes to ``tokens/`` below it, finished training runs to ``training/``
    (``workbench/train/cache.py``)."""
    root = os.environ.get("WORKBENCH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lm-workbench"


def default_cache_dir() -> Path:
    """``$WORKBENCH_CACHE/tokens`` if that is set, else ``~/.cache/lm-workbench/tokens``."""
    return cache_root() / "tokens"


def tokenize(text: str, tokenizer: Tokenizer, cache_dir=None) -> torch.Tensor:
    """All of ``text`` as one 1-D ``torch.long`` tensor of ids, cached on disk."""
    import datasets

    datasets.disable_progress_bars()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(
        "\0".join([CACHE_FORMAT, str(CHUNK_CHARS), tokenizer.to_json(), text]).encode("utf-8")
    ).hexdigest()[:32]

    chunks = datasets.Dataset.from_dict({"text": split_into_chunks(text, CHUNK_CHARS)})
    tokens = chunks.map(
        lambda batch: {"ids": tokenizer.encode_batch(batch["text"])},
        batched=True,
        remove_columns=["text"],
        features=datasets.Features({"ids": datasets.Sequence(datasets.Value("int32"))}),
        cache_file_name=str(cache_dir / f"{key}.arrow"),
        load_from_cache_file=True,  # the file exists: read it, do not tokenize
        new_fingerprint=key,
    )
    ids = np.concatenate(list(tokens.with_format("numpy")["ids"]))
    return torch.from_numpy(ids.astype(np.int64))


class TokenData:
    """Token ids split into ``train`` and ``val``, with random-window batches."""

    def __init__(self, ids: torch.Tensor, tokenizer: Tokenizer, *,
                 val_fraction: float = 0.1, n_chars: int | None = None, source: str | None = None):
        check_range("TokenData", "val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(
                f"TokenData needs a workbench Tokenizer, got {type(tokenizer).__name__}; "
                "make one with tokenizer_from_name('char', text)"
            )
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError(f"TokenData needs a non-empty 1-D tensor of ids, got shape {tuple(ids.shape)}")
        n_train = int(len(ids) * (1.0 - val_fraction))
        self._train, self._val = ids[:n_train], ids[n_train:]
        self._tokenizer = tokenizer
        self.val_fraction = val_fraction
        self.n_chars = n_chars if n_chars is not None else len(tokenizer.decode(ids))
        self.source = source  # where the text came from (a load_text spec), for messages and checkpoints
        self._fingerprint: dict | None = None

    @classmethod
    def from_text(cls, text: str, tokenizer: Tokenizer, *, val_fraction: float = 0.1,
                  cache_dir=None, source: str | None = None) -> "TokenData":
        """Tokenize ``text`` (through the on-disk cache) and split it."""
        if not isinstance(text, str) or not text:
            raise ValueError("TokenData.from_text needs a non-empty str; load one with load_text(...)")
        check_range("TokenData", "val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(
                f"TokenData.from_text needs a workbench Tokenizer, got {type(tokenizer).__name__}; "
                "make one with tokenizer_from_name('char', text)"
            )
        ids = tokenize(text, tokenizer, cache_dir)
        return cls(ids, tokenizer, val_fraction=val_fraction, n_chars=len(text), source=source)

    @classmethod
    def from_spec(cls, spec: str, tokenizer: str | Tokenizer = "char", *, n_chars: int | None = None,
                  seed: int = 0, val_fraction: float = 0.1, cache_dir=None) -> "TokenData":
        """``load_text(spec)`` + ``tokenizer_from_name(tokenizer)`` + ``from_text``."""
        text = load_text(spec, n_chars=n_chars, seed=seed)
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = tokenizer_from_name(tokenizer, text)
        return cls.from_text(text, tokenizer, val_fraction=val_fraction, cache_dir=cache_dir, source=spec)

    # -- what the data is -------------------------------------------------
    @property
    def train(self) -> torch.Tensor:
        return self._train

    @property
    def val(self) -> torch.Tensor:
        return self._val

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.vocab_size

    @property
    def n_tokens(self) -> int:
        return len(self._train) + len(self._val)

    @property
    def chars_per_token(self) -> float:
        """Characters per token: loss per char = loss per token / chars_per_token."""
        return self.n_chars / self.n_tokens

    def fingerprint(self) -> dict:
        """What this data is, for checkpoints: the tokenizer and the token ids (with the split), hashed.

        Two TokenData with equal fingerprints give a model the same training and validation tokens,
        which is what resuming a run needs.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{len(self._train)}/{len(self._val)}".encode())
            digest.update(self._train.numpy().tobytes())
            digest.update(self._val.numpy().tobytes())
            self._fingerprint = {
                "source": self.source, "tokens": self.n_tokens, "tokens_sha256": digest.hexdigest(),
                "tokenizer": self._tokenizer.kind, "vocab_size": self.vocab_size,
                "tokenizer_sha256": hashlib.sha256(self._tokenizer.to_json().encode("utf-8")).hexdigest(),
            }
        return dict(self._fingerprint)

    # -- batches ----------------------------------------------------------
    def check_block(self, length: int) -> None:
        """Raise one clear error unless both splits hold a window of ``length``."""
        check_int("TokenData", "length", length)
        for name, split, fix in (("training", self._train, "a smaller val_fraction"),
                                 ("validation", self._val, "a larger val_fraction")):
            if len(split) < length:
                raise ValueError(
                    f"the {name} split has {len(split)} tokens, fewer than one block of {length}; "
                    f"use a longer text, a smaller block_size or {fix}"
                )

    def get_batch(self, split: str, batch_size: int, length: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """``batch_size`` random windows of ``length`` tokens, shape (batch_size, length).

        Start positions come from ``torch.randint(..., generator=generator)``,
        so the same generator state gives the same batch. The batch is on the
        CPU; move it to the model's device yourself.
        """
        check_choice("TokenData.get_batch", "split", split, ("train", "val"))
        check_int("TokenData.get_batch", "batch_size", batch_size)
        self.check_block(length)
        if generator is not None and (not isinstance(generator, torch.Generator)
                                      or generator.device.type != "cpu"):
            raise ValueError(
                "TokenData.get_batch needs a CPU torch.Generator (or None), e.g. "
                "torch.Generator().manual_seed(0); batches are cut on the CPU"
            )
        data = self._train if split == "train" else self._val
        starts = torch.randint(len(data) - length + 1, (batch_size,), generator=generator)
        return data[starts[:, None] + torch.arange(length)]

    def __repr__(self) -> str:
        return (
            f"TokenData({self.n_tokens:,} tokens: train {len(self._train):,}, val {len(self._val):,}; "
            f"{self._tokenizer!r}, {self.chars_per_token:.2f} chars/token)"
        )
