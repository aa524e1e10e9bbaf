"""One step of byte-pair encoding, written out: count adjacent pairs, merge the most frequent.

BPE as a tokenizer (Sennrich, Haddow and Birch 2016, "Neural Machine Translation of Rare Words with
Subword Units", Algorithm 1) starts from single symbols and repeats one step until the vocabulary is
large enough:

1. count every adjacent pair ``(a, b)`` in the sequence (overlapping occurrences all count: ``a a a``
   holds the pair ``(a, a)`` twice);
2. take the most frequent pair; on a tie, the **smallest** pair ``(a, b)`` (compared as a tuple of ids);
3. replace its occurrences, scanning left to right, by one new id; after a merge both tokens are used
   up, so ``a a a`` becomes ``aa a``, not ``aa aa``.

GPT-2 (Radford et al. 2019, section 2.2) runs this on UTF-8 bytes instead of characters ("byte-level
BPE"), which is what ``BPETokenizer`` trains with the Hugging Face ``tokenizers`` library. That trainer
breaks ties the same way (smallest pair of its internal ids, in which merged tokens come after every
byte), so on a text of one word the merges below reproduce its first merges (``tests/test_tokens_library.py``
checks this against ``BPETokenizer``). The library's trainer differs only in bookkeeping: it counts
pairs inside pre-tokenized words, weighted by how often each word occurs, and never across them.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence


def pair_counts(ids: Sequence[int]) -> Counter:
    """How often each adjacent pair ``(ids[i], ids[i + 1])`` occurs (overlapping occurrences included)."""
    return Counter(zip(ids, ids[1:]))


def most_frequent_pair(ids: Sequence[int]) -> tuple:
    """The most frequent adjacent pair; on a tie the smallest ``(a, b)``. Needs at least two ids."""
    counts = pair_counts(ids)
    if not counts:
        raise ValueError(f"a BPE merge needs at least two ids to find a pair, got {list(ids)}")
    best = max(counts.values())
    return min(pair for pair, count in counts.items() if count == best)


def merge_pair(ids: Sequence[int], pair: tuple, new_id: int) -> list:
    """``ids`` with every occurrence of ``pair`` (left to right, not overlapping) replaced by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_merge_step(ids: Sequence[int], new_id: int) -> tuple:
    """One BPE step: ``(pair, merged_ids)`` where ``pair`` is ``most_frequent_pair(ids)``."""
    pair = most_frequent_pair(ids)
    return pair, merge_pair(ids, pair, new_id)
