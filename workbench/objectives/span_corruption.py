"""T5 span corruption (Raffel et al. 2020, sec. 3.1.4), in a decoder-only prefix-LM layout.

A source x of L tokens gets a random noise mask: N = round(L * noise_density)
noise tokens (clamped to [1, L - 1]) in S = max(1, round(N / mean_span_length))
spans. The noise lengths and the non-noise lengths are each a uniformly random
composition into S positive parts, and the spans alternate starting with
non-noise (so the source always ends in noise): every mask with these counts
is equally likely (T5's ``random_spans_noise_mask``, as in Hugging Face's
run_t5_mlm_flax.py). Each noise span becomes one sentinel in the corrupted
input, and the target lists every span after its sentinel:

    x      = a b c d e f g h          noise spans: {c d}, {g h}
    input  = a b <s0> e f <s1>
    target = <s0> c d <s1> g h [EOS]

Sentinels are ids beyond the tokenizer's vocabulary V, counting down as in
T5: sentinel k = V + n_sentinels - 1 - k. The model's vocabulary must hold
them, so the objective's ``extra_vocab`` is n_sentinels: build the model with
vocab_size = tokenizer.vocab_size + n_sentinels. S is also capped by
n_sentinels (one sentinel per span) and by L - N (each non-noise part >= 1).

Decoder-only layout: the model reads input ++ target as one sequence with
attention_mode="prefix" and prefix_len = len(input): the corrupted input is
read bidirectionally, the target causally, and the loss is next-token cross
entropy on the target tokens only,

    L(theta) = -(1 / |target|) * sum_k log p_theta(target_k | input, target_<k).

Lengths: N and S depend only on L, so len(input) + len(target) = L + 2S + 1.
The source length L is the largest one whose sequence fits the window of
block_size + 1 tokens (the model reads block_size of them and predicts the
next). L + 2S + 1 grows by 1 or 3 when L grows by 1, so the fit is exact or
one or two [PAD] tokens short; those pad the end, and the positions that
would predict them are not scored (IGNORE).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from ..data.tokenizers import EOS_ID
from ..validation import check_int, check_range
from .base import IGNORE, NUM_SPECIAL, OBJECTIVES, PAD_ID, Corruption, Objective, _config_holder


def noise_counts(length: int, noise_density: float, mean_span_length: float,
                 max_spans: Optional[int] = None) -> tuple[int, int]:
    """(noise tokens N, noise spans S) for a source of ``length`` tokens (length >= 2).

    N = round(length * noise_density) clamped to [1, length - 1];
    S = max(1, round(N / mean_span_length)), capped by ``max_spans`` and by the
    non-noise count length - N (every part of both segmentations is >= 1).
    Python's round, like numpy's in the reference, rounds halves to even.
    """
    if length < 2:
        raise ValueError(f"span corruption needs a source of at least 2 tokens (one noise, one kept), got {length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = min(max(1, round(num_noise / mean_span_length)), length - num_noise)
    if max_spans is not None:
        num_spans = min(num_spans, max_spans)
    return num_noise, num_spans


def _random_compositions(rows: int, total: int, parts: int, generator) -> torch.Tensor:
    """(rows, parts): ``total`` split into ``parts`` positive integers per row, every split equally likely.

    A split is a choice of parts - 1 distinct cut points among the total - 1 gaps; the first parts - 1
    entries of a random permutation (the argsort of iid uniforms) are a uniformly random such choice.
    """
    order = torch.rand(rows, total - 1, generator=generator, device="cpu").argsort(dim=1)
    cuts = order[:, :parts - 1].sort(dim=1).values + 1
    edges = torch.cat([torch.zeros(rows, 1, dtype=torch.long), cuts, torch.full((rows, 1), total)], dim=1)
    return edges.diff(dim=1)


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float, generator=None,
                            max_spans: Optional[int] = None, rows: Optional[int] = None) -> torch.Tensor:
    """A (length,) bool mask, True at noise: ``noise_counts`` tokens in spans, starting with non-noise.

    With ``rows`` it is (rows, length), one independent mask per row (same counts). Draws on CPU from
    ``generator`` (torch's global RNG if None).
    """
    num_noise, num_spans = noise_counts(length, noise_density, mean_span_length, max_spans)
    n = 1 if rows is None else rows
    noise_lengths = _random_compositions(n, num_noise, num_spans, generator)
    kept_lengths = _random_compositions(n, length - num_noise, num_spans, generator)
    lengths = torch.stack([kept_lengths, noise_lengths], dim=2).reshape(n, 2 * num_spans)  # kept_0 noise_0 ...
    segment_ends = lengths.cumsum(dim=1)
    positions = torch.arange(length).expand(n, length).contiguous()
    segment = torch.searchsorted(segment_ends, positions, right=True)  # which segment each position lies in
    mask = segment % 2 == 1                                               # odd segments are noise
    return mask[0] if rows is None else mask


def corrupt_spans(ids: torch.Tensor, noise_mask: torch.Tensor,
                  sentinel_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) for a source and its noise mask; noise span k is replaced by ``sentinel_ids[k]``.

    input: the source with each noise span replaced by its sentinel.
    target: sentinel_0 span_0 sentinel_1 span_1 ... [EOS].
    ``ids`` and ``noise_mask`` are 1-D, or (rows, length) with the same noise and span counts in every
    row (as ``random_spans_noise_mask(..., rows=...)`` draws them); the outputs have the same layout.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    noise_mask = torch.as_tensor(noise_mask, dtype=torch.bool, device=ids.device)
    if ids.dim() not in (1, 2) or noise_mask.shape != ids.shape:
        raise ValueError(f"corrupt_spans: ids and noise_mask must be 1-D or (rows, length) of one shape, got "
                         f"{tuple(ids.shape)} and {tuple(noise_mask.shape)}")
    squeeze = ids.dim() == 1
    ids, noise_mask = (ids[None], noise_mask[None]) if squeeze else (ids, noise_mask)
    rows, length = ids.shape
    sentinels = torch.as_tensor(list(sentinel_ids), dtype=torch.long, device=ids.device)
    if bool(torch.isin(ids, sentinels).any()):
        raise ValueError("corrupt_spans: the source contains sentinel ids; sentinels must be ids the text never "
                         "uses (above the tokenizer's vocabulary)")
    previous = torch.cat([torch.zeros_like(noise_mask[:, :1]), noise_mask[:, :-1]], dim=1)
    span_start = noise_mask & ~previous                               # first token of each noise span
    noise_per_row, spans_per_row = noise_mask.sum(dim=1), span_start.sum(dim=1)
    if rows > 1 and bool(((noise_per_row != noise_per_row[0]) | (spans_per_row != spans_per_row[0])).any()):
        raise ValueError("corrupt_spans: every row must have the same number of noise tokens and of spans")
    num_noise, num_spans = int(noise_per_row[0]), int(spans_per_row[0])
    if num_spans > len(sentinels):
        raise ValueError(f"corrupt_spans: the mask has {num_spans} noise spans but only {len(sentinels)} "
                         "sentinel ids were given")
    if num_spans == 0:
        inputs, targets = ids.clone(), torch.full((rows, 1), EOS_ID, device=ids.device)
        return (inputs[0], targets[0]) if squeeze else (inputs, targets)
    span_index = (span_start.cumsum(dim=1) - 1).clamp(min=0)         # which span a noise token belongs to
    with_sentinels = torch.where(span_start, sentinels[span_index], ids)
    inputs = with_sentinels[~noise_mask | span_start].view(rows, length - num_noise + num_spans)

    noise_tokens = ids[noise_mask].view(rows, num_noise)
    starts = span_start[noise_mask].view(rows, num_noise)            # among the noise tokens: a span starts here
    token_slot = torch.arange(num_noise, device=ids.device) + starts.cumsum(dim=1)  # after the sentinels so far
    start_index = starts.nonzero()[:, 1].view(rows, num_spans)       # row-major, so row by row
    sentinel_slot = start_index + torch.arange(num_spans, device=ids.device)
    targets = torch.full((rows, num_noise + num_spans + 1), EOS_ID, dtype=torch.long, device=ids.device)
    targets.scatter_(1, token_slot, noise_tokens)
    targets.scatter_(1, sentinel_slot, sentinels[:num_spans].expand(rows, num_spans))
    return (inputs[0], targets[0]) if squeeze else (inputs, targets)


def decorrupt(inputs: torch.Tensor, targets: torch.Tensor, sentinel_ids: Sequence[int]) -> torch.Tensor:
    """The source ``corrupt_spans`` started from: each sentinel in ``inputs`` replaced by its span in ``targets``."""
    sentinels = {int(s) for s in sentinel_ids}
    target_list = torch.as_tensor(targets).tolist()
    if not target_list or target_list[-1] != EOS_ID:
        raise ValueError("decorrupt: the target must end with [EOS]")
    body = target_list[:-1]
    if body and body[0] not in sentinels:
        raise ValueError("decorrupt: the target must start with a sentinel (sentinel span sentinel span ... [EOS])")
    spans: dict[int, list[int]] = {}
    current = None
    for token in body:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    original: list[int] = []
    for token in torch.as_tensor(inputs).tolist():
        if token in sentinels:
            if token not in spans:
                raise ValueError(f"decorrupt: sentinel {token} is in the input but not in the target")
            original.extend(spans[token])
        else:
            original.append(token)
    return torch.tensor(original, dtype=torch.long)


@functools.lru_cache(maxsize=None)
def source_length(block_size: int, noise_density: float, mean_span_length: float, n_sentinels: int) -> int:
    """The largest source length L whose input ++ target (L + 2S + 1 tokens) fits block_size + 1."""
    for length in range(block_size, 1, -1):
        _, num_spans = noise_counts(length, noise_density, mean_span_length, n_sentinels)
        if length + 2 * num_spans <= block_size:
            return length
    raise ValueError(f"t5_span: block_size={block_size} is too small for span corruption: a source of 2 tokens "
                     "and its one sentinel span need input ++ target of 5 tokens (block_size >= 4)")


@OBJECTIVES.register("t5_span")
class T5SpanCorruption(Objective):
    name = "t5_span"
    attention_mode = "prefix"

    def __init__(self, noise_density: float = 0.15, mean_span_length: float = 3.0, n_sentinels: int = 16,
                 tokenizer=None):
        owner = "T5SpanCorruption"
        check_range(owner, "noise_density", noise_density, 0.0, 1.0, low_open=True, high_open=True)
        check_range(owner, "mean_span_length", mean_span_length, 1.0, float("inf"))
        check_int(owner, "n_sentinels", n_sentinels)
        super().__init__(noise_density=noise_density, mean_span_length=mean_span_length, n_sentinels=n_sentinels)
        self.noise_density = noise_density
        self.mean_span_length = mean_span_length
        self.n_sentinels = n_sentinels
        self.extra_vocab = n_sentinels
        self.tokenizer_vocab_size = tokenizer.vocab_size if tokenizer is not None else None

    def sentinel_ids(self, vocab_size: int) -> list[int]:
        """Sentinel k = vocab_size + n_sentinels - 1 - k (counting down from the model's last id, as T5)."""
        return [vocab_size + self.n_sentinels - 1 - k for k in range(self.n_sentinels)]

    def _no_room(self, detail: str) -> ValueError:
        return ValueError(
            f"t5_span: {detail}: the model's vocabulary has no room for the {self.n_sentinels} sentinels; build "
            f"the model with vocab_size = tokenizer.vocab_size + n_sentinels (objective.extra_vocab = "
            f"{self.extra_vocab})"
        )

    def setup(self, model, seed: int = 0) -> None:
        model_vocab = _config_holder(model).config.vocab_size
        if self.tokenizer_vocab_size is not None and model_vocab < self.tokenizer_vocab_size + self.n_sentinels:
            raise self._no_room(f"the model has vocab_size={model_vocab} and the tokenizer "
                                f"{self.tokenizer_vocab_size} ids")
        if model_vocab - self.n_sentinels <= NUM_SPECIAL:
            raise self._no_room(f"the model has vocab_size={model_vocab}")

    def corrupt(self, batch: torch.Tensor, vocab_size: int, generator=None) -> Corruption:
        if vocab_size <= NUM_SPECIAL:
            raise self._no_room(f"only {vocab_size} ids are left for text")
        largest = int(batch.max())
        if largest >= vocab_size:
            raise self._no_room(f"the batch has token id {largest}, but ids {vocab_size}.."
                                f"{vocab_size + self.n_sentinels - 1} are the sentinels")
        B, window = batch.shape
        length = source_length(window - 1, self.noise_density, self.mean_span_length, self.n_sentinels)
        masks = random_spans_noise_mask(length, self.noise_density, self.mean_span_length, generator,
                                        max_spans=self.n_sentinels, rows=B).to(batch.device)
        corrupted, target = corrupt_spans(batch[:, :length], masks, self.sentinel_ids(vocab_size))
        prefix, used = corrupted.shape[1], corrupted.shape[1] + target.shape[1]  # the same in every row
        sequences = torch.full((B, window), PAD_ID, dtype=torch.long, device=batch.device)
        sequences[:, :prefix], sequences[:, prefix:used] = corrupted, target
        targets = sequences[:, 1:].clone()
        targets[:, :prefix - 1] = IGNORE                # predictions of the corrupted input: not scored
        targets[:, used - 1:] = IGNORE                  # predictions of the padding: not scored
        return Corruption(inputs=sequences[:, :-1], targets=targets, attention_mode="prefix",
                          prefix_len=torch.full((B,), prefix, dtype=torch.long, device=batch.device))


__all__ = ["T5SpanCorruption", "noise_counts", "random_spans_noise_mask", "corrupt_spans", "decorrupt",
           "source_length"]
