"""Exercises of notebook 01 (tokens and data): byte ids, one BPE merge, loss per character.

Each exercise compares the learner's function with the library's own computation:

* 01.1 ``byte_ids``: ``ByteTokenizer.encode`` (UTF-8 bytes, shifted by the four special tokens);
* 01.2 ``bpe_merge_step``: ``workbench.data.bpe_merge.bpe_merge_step`` (Sennrich et al. 2016, Algorithm 1,
  with the tie-break of the ``tokenizers`` trainer that ``BPETokenizer`` uses);
* 01.3 ``bits_per_char``: ``workbench.data.loss_units.bits_per_char`` (what the notebook prints for its runs).
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from workbench.data import ByteTokenizer
from workbench.data.bpe_merge import bpe_merge_step, merge_pair, most_frequent_pair
from workbench.data.loss_units import bits_per_char

from . import register
from .checking import Case, Exercise, Mistake


# --------------------------------------------------------------------------- 01.1 byte ids
def _byte_ids_reference(text: str) -> list:
    return ByteTokenizer().encode(text)


def _byte_ids_cases():
    return [
        Case("'hi!' (ASCII: one byte per character)", ("hi!",)),
        Case("'café' (é is the two UTF-8 bytes C3 A9)", ("café",)),
        Case("'naïve ☕' (☕ is three UTF-8 bytes)", ("naïve ☕",)),
        Case("the empty text", ("",)),
        Case("'[PAD]\\n' (special-token names are plain text here; a newline is byte 10)", ("[PAD]\n",)),
    ]


register(Exercise(
    id="01.1", title="byte-tokenizer ids", function_name="byte_ids", difficulty="easy", minutes=5,
    reference=_byte_ids_reference, cases=_byte_ids_cases,
    mistakes=[
        Mistake("these are the raw byte values: ids 0-3 are the special tokens, so byte b has id b + 4",
                lambda text: list(text.encode("utf-8"))),
        Mistake("you numbered characters (ord(c) + 4), not UTF-8 bytes: é is two bytes and ☕ three",
                lambda text: [ord(c) + 4 for c in text]),
        Mistake("you shifted by 3: there are four special tokens (ids 0, 1, 2, 3), so byte b has id b + 4",
                lambda text: [b + 3 for b in text.encode("utf-8")]),
    ],
))


# --------------------------------------------------------------------------- 01.2 one BPE merge
def _bpe_merge_cases():
    g = torch.Generator().manual_seed(1)
    random_ids = [int(i) for i in torch.randint(4, 9, (40,), generator=g)]
    return [
        Case("'banana' as byte ids (a n and n a both occur twice)", (list(b"banana"), 256)),
        Case("a tie, 'xyxyabab': (x, y) and (a, b) occur twice each; the smaller pair wins",
             (list(b"xyxyabab"), 256)),
        Case("overlapping pairs, 'aaaaa': (a, a) merges left to right, giving [aa, aa, a]", (list(b"aaaaa"), 256)),
        Case("overlapping pairs count, 'aaabab': (a, a) occurs twice and ties with (a, b); the smaller wins",
             (list(b"aaabab"), 256)),
        Case("40 random ids from 4..8, new id 300", (random_ids, 300)),
        Case("ids made by earlier merges: [260, 261, 260, 261, 5], new id 262", ([260, 261, 260, 261, 5], 262)),
    ]


def _first_seen_tie(ids, new_id):
    pair = Counter(zip(ids, ids[1:])).most_common(1)[0][0]
    return pair, merge_pair(ids, pair, new_id)


def _largest_tie(ids, new_id):
    counts = Counter(zip(ids, ids[1:]))
    pair = max(counts, key=lambda p: (counts[p], p))
    return pair, merge_pair(ids, pair, new_id)


def _merge_without_skipping(ids, new_id):
    pair = most_frequent_pair(ids)
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        elif i > 0 and (ids[i - 1], ids[i]) == pair:
            continue
        else:
            out.append(ids[i])
    return pair, out


register(Exercise(
    id="01.2", title="one BPE merge step", function_name="bpe_merge_step", difficulty="medium", minutes=15,
    reference=bpe_merge_step, cases=_bpe_merge_cases,
    mistakes=[
        Mistake("on a tie you kept the pair seen first; the rule (and the tokenizers library) takes the "
                "smallest pair (a, b)", _first_seen_tie),
        Mistake("on a tie you kept the largest pair; take the smallest pair (a, b)", _largest_tie),
        Mistake("after a merge, skip both tokens and continue after them: in 'aaa' the pair (a, a) merges "
                "once, left to right, giving [aa, a]", _merge_without_skipping),
    ],
))


# --------------------------------------------------------------------------- 01.3 bits per character
def _bits_per_char_cases():
    g = torch.Generator().manual_seed(3)
    return [
        Case("1 nat/token, 1 char/token (a character tokenizer): 1 / ln 2 bits", (1.0, 1.0)),
        Case("3.716 nats/token at 2.92 chars/token (a BPE run)", (3.716, 2.92)),
        Case("ln 512 nats/token (uniform over 512 tokens) at 1 char/token: exactly 9 bits", (math.log(512), 1.0)),
        Case("tensors: 5 runs at once, elementwise",
             (torch.rand(5, generator=g) * 4 + 0.5, torch.rand(5, generator=g) * 3 + 1.0)),
        Case("a loss of 0 is 0 bits", (0.0, 2.5)),
    ]


register(Exercise(
    id="01.3", title="nats per token to bits per character", function_name="bits_per_char", difficulty="easy",
    minutes=5, reference=bits_per_char, cases=_bits_per_char_cases,
    mistakes=[
        Mistake("you multiplied by characters per token: each token holds several characters, so divide "
                "the loss per token by the characters per token",
                lambda loss, cpt: loss * cpt / math.log(2)),
        Mistake("this is nats per character: divide by ln 2 to get bits (1 bit = ln 2 ≈ 0.693 nats)",
                lambda loss, cpt: loss / cpt),
        Mistake("you multiplied by ln 2: bits = nats / ln 2, since 1 bit = ln 2 ≈ 0.693 nats",
                lambda loss, cpt: loss / cpt * math.log(2)),
    ],
))
