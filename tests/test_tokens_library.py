"""The readable helpers behind notebook 01: one BPE merge step (cross-checked against BPETokenizer),
token bytes shown with <0xNN> escapes, and loss units."""
import json
import math

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

from workbench.data import BPETokenizer, ByteTokenizer, CharTokenizer
from workbench.data.bpe_merge import bpe_merge_step, merge_pair, most_frequent_pair, pair_counts
from workbench.data.loss_units import bits_per_char, nats_per_char
from workbench.data.token_bytes import bytes_to_unicode, readable_bytes, readable_pieces, token_bytes


def _library_merges(text: str, n_merges: int) -> list:
    """The first merges BPETokenizer learns on ``text``, as pairs of byte strings."""
    tok = BPETokenizer.train(text, vocab_size=260 + n_merges)
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    merges = json.loads(tok.hf.to_str())["model"]["merges"]
    return [tuple(bytes(to_byte[c] for c in part) for part in merge) for merge in merges]


def _readable_merges(text: str, n_merges: int) -> list:
    ids, pieces, out = list(text.encode("utf-8")), {b: bytes([b]) for b in range(256)}, []
    for new_id in range(256, 256 + n_merges):
        if len(ids) < 2:
            break
        (a, b), ids = bpe_merge_step(ids, new_id)
        pieces[new_id] = pieces[a] + pieces[b]
        out.append((pieces[a], pieces[b]))
    return out


@pytest.mark.parametrize("text", ["xyxyabab", "aaabab", "banana" * 3 + "bandana",
                                  "".join(np.random.default_rng(0).choice(list("abcde"), 300))])
def test_merges_agree_with_the_tokenizers_library_on_one_word(text):
    n = 12
    library = _library_merges(text, n)
    assert library, "the library learned no merges"
    assert _readable_merges(text, len(library)) == library


def test_tie_break_is_the_smallest_pair_and_overlaps_count():
    assert most_frequent_pair([120, 121, 120, 121, 97, 98, 97, 98]) == (97, 98)  # 'xyxyabab': (a, b) < (x, y)
    assert pair_counts([5, 5, 5])[(5, 5)] == 2
    assert most_frequent_pair(list(b"aaabab")) == (97, 97)
    assert merge_pair([5, 5, 5, 5, 5], (5, 5), 9) == [9, 9, 5]
    assert bpe_merge_step([1, 2, 1, 2, 3], 7) == ((1, 2), [7, 7, 3])
    with pytest.raises(ValueError, match="at least two ids"):
        most_frequent_pair([4])


def test_bytes_to_unicode_is_the_byte_level_alphabet():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord(" ")] == "Ġ" and table[ord("a")] == "a"


def test_token_bytes_give_the_text_back_and_show_partial_characters():
    text = "naïve café ☕ and plain words, again and again. " * 20
    tok = BPETokenizer.train("plain words and more plain words. " * 50, vocab_size=300)
    ids = tok.encode(text)
    assert b"".join(token_bytes(tok, i) for i in ids) == text.encode("utf-8")
    pieces = readable_pieces(tok, ids)
    assert "<0xC3>" in pieces and "<0xA9>" in pieces and not any("\ufffd" in p for p in pieces)
    assert readable_pieces(tok, [0, 3]) == ["[PAD]", "[EOS]"]


def test_readable_bytes():
    assert readable_bytes("é".encode()) == "é"
    assert readable_bytes("é".encode()[:1]) == "<0xC3>"
    assert readable_bytes(b"a b\n\xe2\x98") == "a␣b\\n<0xE2><0x98>"


def test_readable_pieces_of_other_tokenizers_are_their_token_strings():
    byte = ByteTokenizer()
    assert readable_pieces(byte, byte.encode("é")) == ["<0xC3>", "<0xA9>"]
    char = CharTokenizer.train("ab c")
    assert readable_pieces(char, char.encode("a c")) == ["a", "␣", "c"]


def test_loss_units():
    assert bits_per_char(math.log(2), 1.0) == pytest.approx(1.0)
    assert bits_per_char(math.log(512), 1.0) == pytest.approx(9.0)
    assert nats_per_char(3.0, 2.0) == pytest.approx(1.5)
    assert bits_per_char(3.0, 2.0) == pytest.approx(1.5 / math.log(2))
    losses, cpt = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])
    assert torch.allclose(bits_per_char(losses, cpt), torch.tensor([1.0, 0.5]) / math.log(2))
