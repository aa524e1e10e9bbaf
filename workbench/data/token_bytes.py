"""Readable token pieces: the bytes a token stands for, with partial UTF-8 characters as ``<0xC3>``.

A byte-level BPE token (GPT-2, Radford et al. 2019, section 2.2) is a run of UTF-8 bytes, not
necessarily whole characters: ``é`` is the two bytes ``C3 A9``, and a tokenizer that never merged them
holds it as two tokens. Decoding such a token alone gives the replacement character U+FFFD, which
hides what it holds. Here each token becomes its bytes, and the bytes that do not form a whole
character are shown as ``<0xC3>`` escapes (the same spelling ``ByteTokenizer.token_strings`` uses).

The ``tokenizers`` library stores byte-level tokens as strings in GPT-2's byte-to-unicode alphabet
(``bytes_to_unicode`` in GPT-2's ``encoder.py``): printable bytes stand for themselves, the others are
shifted to U+0100 and above (a space is ``Ġ``); :func:`bytes_to_unicode` rebuilds that table.
"""
from __future__ import annotations

from functools import lru_cache

from .tokenizers import SPECIAL_TOKENS, BPETokenizer, Tokenizer, visible


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict:
    """GPT-2's map from each byte value 0..255 to the printable character that stands for it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shift)
            shift += 1
    return table


def readable_bytes(data: bytes) -> str:
    """``data`` as text, with whitespace made visible and bytes that are no whole character as ``<0xNN>``."""
    out = []
    for char in data.decode("utf-8", errors="surrogateescape"):  # a stray byte b becomes U+DC00 + b
        if 0xDC80 <= ord(char) <= 0xDCFF:
            out.append(f"<0x{ord(char) - 0xDC00:02X}>")
        else:
            out.append(visible(char))
    return "".join(out)


def token_bytes(tokenizer: BPETokenizer, token_id: int) -> bytes:
    """The UTF-8 bytes one byte-level BPE token stands for (a special token: its name)."""
    if token_id < len(SPECIAL_TOKENS):
        return SPECIAL_TOKENS[token_id].encode()
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    return bytes(to_byte[char] for char in tokenizer.hf.id_to_token(int(token_id)))


def readable_pieces(tokenizer: Tokenizer, ids) -> list:
    """One display string per token; a BPE token holding part of a character shows it as ``<0xNN>``."""
    if isinstance(tokenizer, BPETokenizer):
        return [readable_bytes(token_bytes(tokenizer, i)) for i in tokenizer._as_id_list(ids)]
    return tokenizer.token_strings(ids)
