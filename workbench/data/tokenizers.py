"""Tokenizers: how text becomes the integers a model reads.

A language model never sees letters. It sees a sequence of integer *token
ids*, each naming one entry of a fixed *vocabulary*, and it predicts the id
that comes next. A tokenizer is the two-way dictionary between the two:

    encode("hi!")        -> [43, 44, 5]
    decode([43, 44, 5])  -> "hi!"

Three tokenizers are here, from the simplest to the one real models use:

* ``CharTokenizer``: one token per character that occurs in a training
  text. Tiny vocabulary, long sequences, and it cannot encode a character
  it has never seen (``UnknownTokenError`` says so).
* ``ByteTokenizer``: one token per UTF-8 byte. It knows every possible
  text (all 256 byte values are in the vocabulary) at the price of longer
  sequences for anything outside ASCII.
* ``BPETokenizer``: byte-level byte-pair encoding (GPT-2 style), trained
  with the Hugging Face ``tokenizers`` library. It starts from the 256 bytes
  and repeatedly merges the most frequent adjacent pair into a new token,
  so common words become single tokens and sequences get shorter.

Every vocabulary begins with the same four *special tokens*, which never
come out of ``encode`` but which objectives insert themselves:

    id 0  [PAD]   fills the unused end of a short sequence
    id 1  [MASK]  hides a token a masked LM must reconstruct
    id 2  [BOS]   marks the beginning of a sequence
    id 3  [EOS]   marks the end of a sequence

Fixing their ids everywhere means an objective can write ``tok.mask_id`` (or
just ``1``) without knowing which tokenizer it got. Their *strings* are not
recognised inside text: ``encode("[PAD]")`` gives the tokens for the five
characters ``[``, ``P``, ``A``, ``D``, ``]``, never id 0. That keeps
``decode(encode(text)) == text`` true for every text.

A tokenizer saves to one JSON file whose ``"kind"`` field says which class
reads it back; ``load_tokenizer(path)`` dispatches on it.
"""
from __future__ import annotations

import json
import numbers
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Sequence

from workbench.registry import Registry
from workbench.validation import check_int

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[BOS]", "[EOS]")
PAD_ID, MASK_ID, BOS_ID, EOS_ID = range(len(SPECIAL_TOKENS))

FORMAT_VERSION = 1
DEFAULT_BPE_VOCAB_SIZE = 512

TOKENIZERS: Registry[type["Tokenizer"]] = Registry("tokenizer")


class UnknownTokenError(ValueError):
    """``encode`` met text that this tokenizer's vocabulary cannot express."""


class TokenizerFileError(ValueError):
    """A file given to ``load_tokenizer`` is not a saved tokenizer."""


def visible(piece: str) -> str:
    """Make whitespace and control characters visible, for plot labels."""
    shown = {" ": "\u2423", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = []
    for char in piece:
        if char in shown:
            out.append(shown[char])
        elif not char.isprintable():
            out.append(repr(char)[1:-1])
        else:
            out.append(char)
    return "".join(out)


class Tokenizer(ABC):
    """What every tokenizer offers. Subclasses fill in the abstract methods."""

    kind: str = ""

    # -- the vocabulary ---------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct token ids, specials included."""

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def mask_id(self) -> int:
        return MASK_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    # -- text <-> ids -----------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``. Special-token strings are plain text here."""
        if not isinstance(text, str):
            raise ValueError(
                f"{type(self).__name__}.encode expects a str, got {type(text).__name__}; "
                "pass the text itself (decode bytes with .decode('utf-8') first)"
            )
        return self._encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode several texts; BPE overrides this with a parallel version."""
        return [self.encode(text) for text in texts]

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text for a list (or 1-D tensor/array) of ids.

        Special tokens appear as their strings (``"[MASK]"``) unless
        ``skip_special`` is true, in which case they are dropped.
        """
        ids = self._as_id_list(ids)
        if skip_special:
            ids = [i for i in ids if i >= len(SPECIAL_TOKENS)]
        return self._decode(ids)

    def token_strings(self, ids) -> list[str]:
        """One short, visible display string per token (for heatmap labels)."""
        return [visible(self._token_text(i)) for i in self._as_id_list(ids)]

    # -- saving -----------------------------------------------------------
    def to_json(self) -> str:
        """The whole tokenizer as a JSON string (what ``save`` writes)."""
        state = {"kind": self.kind, "format_version": FORMAT_VERSION, **self._state()}
        return json.dumps(state, ensure_ascii=False, sort_keys=True)

    def save(self, path) -> Path:
        """Write the tokenizer to one JSON file; ``load_tokenizer`` reads it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.to_json() == other.to_json()

    __hash__ = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

    # -- shared plumbing ----------------------------------------------------
    def _as_id_list(self, ids) -> list[int]:
        if hasattr(ids, "tolist"):  # torch tensor or numpy array
            if getattr(ids, "ndim", 1) != 1:
                raise ValueError(
                    f"{type(self).__name__} expects a 1-D sequence of ids, got shape "
                    f"{tuple(ids.shape)}; decode one row at a time, e.g. decode(batch[0])"
                )
            ids = ids.tolist()
        try:
            not_ids = [i for i in ids if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
        except TypeError:  # not iterable
            raise ValueError(f"{type(self).__name__} expects a list of integer token ids, got {ids!r}") from None
        if not_ids:  # int(4.9) would silently read id 4
            raise ValueError(
                f"{type(self).__name__} expects integer token ids, got {not_ids[:5]!r}; "
                "pass ids as ints (round or cast them yourself if that is what you mean)"
            )
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"token ids {bad[:5]} are outside this vocabulary of {self.vocab_size} "
                f"(valid ids are 0..{self.vocab_size - 1}); were these ids made by a "
                "different tokenizer?"
            )
        return ids

    @abstractmethod
    def _encode(self, text: str) -> list[int]:
        """Ids for a str (already type-checked)."""

    @abstractmethod
    def _decode(self, ids: list[int]) -> str:
        """Text for ids (already range-checked)."""

    @abstractmethod
    def _token_text(self, token_id: int) -> str:
        """The raw text of one token."""

    @abstractmethod
    def _state(self) -> dict:
        """What ``to_json`` must store to rebuild this tokenizer."""

    @classmethod
    @abstractmethod
    def _from_state(cls, state: dict) -> "Tokenizer":
        """Rebuild a tokenizer from what ``_state`` stored."""


@TOKENIZERS.register("char")
class CharTokenizer(Tokenizer):
    """One token per character seen in the training text."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError(
                "CharTokenizer needs distinct single characters; build one with "
                "CharTokenizer.train(text)"
            )
        self.chars = chars
        self._id_of = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """Vocabulary = the special tokens + every distinct character, sorted."""
        if not isinstance(text, str) or not text:
            raise ValueError(
                "CharTokenizer.train needs a non-empty str: its characters become the "
                "vocabulary"
            )
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.chars)

    def _encode(self, text: str) -> list[int]:
        try:
            return [self._id_of[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self._id_of})
            shown = ", ".join(repr(c) for c in unknown[:8])
            more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
            raise UnknownTokenError(
                f"{len(unknown)} character(s) are not in this CharTokenizer's vocabulary: "
                f"{shown}{more}. Build the tokenizer from a text that contains them "
                "(CharTokenizer.train(all_text)), or use ByteTokenizer(), which knows "
                "every byte."
            ) from None

    def _decode(self, ids: list[int]) -> str:
        return "".join(self._token_text(i) for i in ids)

    def _token_text(self, token_id: int) -> str:
        if token_id < len(SPECIAL_TOKENS):
            return SPECIAL_TOKENS[token_id]
        return self.chars[token_id - len(SPECIAL_TOKENS)]

    def _state(self) -> dict:
        return {"chars": self.chars}

    @classmethod
    def _from_state(cls, state: dict) -> "CharTokenizer":
        return cls(state["chars"])


@TOKENIZERS.register("byte")
class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte: ids 4..259 are the byte values 0..255."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + 256

    def _encode(self, text: str) -> list[int]:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise UnknownTokenError(
                f"the text is not valid Unicode ({err.reason} at position {err.start}); "
                "remove the lone surrogate characters before encoding"
            ) from None
        return [b + len(SPECIAL_TOKENS) for b in data]

    def _decode(self, ids: list[int]) -> str:
        # Bytes are collected in runs and decoded together, because one
        # character may span several bytes; a special token ends a run.
        out, run = [], bytearray()
        for i in ids:
            if i < len(SPECIAL_TOKENS):
                out.append(run.decode("utf-8", errors="replace"))
                out.append(SPECIAL_TOKENS[i])
                run = bytearray()
            else:
                run.append(i - len(SPECIAL_TOKENS))
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def _token_text(self, token_id: int) -> str:
        if token_id < len(SPECIAL_TOKENS):
            return SPECIAL_TOKENS[token_id]
        byte = token_id - len(SPECIAL_TOKENS)
        if 32 <= byte < 127 or byte in (9, 10, 13):
            return chr(byte)
        return f"<0x{byte:02X}>"  # part of a multi-byte character, or a control byte

    def _state(self) -> dict:
        return {}

    @classmethod
    def _from_state(cls, state: dict) -> "ByteTokenizer":
        return cls()


@TOKENIZERS.register("bpe")
class BPETokenizer(Tokenizer):
    """Byte-level BPE, a thin wrapper around a ``tokenizers.Tokenizer``."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        # Treat "[PAD]" etc. inside text as ordinary characters, like the
        # char and byte tokenizers do.
        self.hf.encode_special_tokens = True

    @classmethod
    def train(cls, text_or_iterator, vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> "BPETokenizer":
        """Learn merges from a text (or an iterator of texts) up to ``vocab_size``.

        The vocabulary is 4 specials + 256 bytes + learned merges, so
        ``vocab_size`` must exceed 260. A short text may run out of pairs to
        merge; the result is then smaller than asked (see ``.vocab_size``).
        """
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        check_int("BPETokenizer", "vocab_size", vocab_size, minimum=len(SPECIAL_TOKENS) + 257)
        if isinstance(text_or_iterator, str):
            if not text_or_iterator:
                raise ValueError("BPETokenizer.train needs a non-empty text to learn merges from")
            texts = split_into_chunks(text_or_iterator)  # pieces for parallel training
        else:
            texts = text_or_iterator
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),  # registered first: ids 0..3
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def _encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("BPETokenizer.encode_batch expects a list of str")
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def _token_text(self, token_id: int) -> str:
        # A token may hold half of a multi-byte character; that shows as U+FFFD.
        return self.hf.decode([token_id], skip_special_tokens=False)

    def _state(self) -> dict:
        return {"hf_tokenizer": json.loads(self.hf.to_str())}

    @classmethod
    def _from_state(cls, state: dict) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(json.dumps(state["hf_tokenizer"])))


_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")  # after "x\n", before "y"


def split_into_chunks(text: str, chunk_chars: int = 64 * 1024) -> list[str]:
    """Cut ``text`` into pieces of about ``chunk_chars`` that tokenize independently.

    Tokenizing the pieces one by one gives exactly the ids of the whole text,
    for every tokenizer here. Char and byte tokenizers would allow any cut.
    Byte-level BPE first splits text into words and whitespace runs (its
    "pre-tokens") and never merges across them, so we cut only just after a
    newline that sits between two non-space characters ("...end.\\nOnce"):
    the whole text has a pre-token boundary there too. Each cut is the first
    such place at or after ``chunk_chars``; ``"".join`` gives the text back.
    """
    chunks, start = [], 0
    while start < len(text):
        cut = _SAFE_CUT.search(text, start + chunk_chars)
        end = cut.start() if cut else len(text)
        chunks.append(text[start:end])
        start = end
    return chunks


def load_tokenizer(path) -> Tokenizer:
    """Read a tokenizer written by ``Tokenizer.save``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no tokenizer file at '{path}'; check the path, or save one first with "
            "tokenizer.save(path)"
        )
    if path.is_dir():
        raise TokenizerFileError(
            f"'{path}' is a directory; pass the tokenizer's .json file inside it"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise TokenizerFileError(
            f"the tokenizer file '{path}' is empty; save the tokenizer again with "
            "tokenizer.save(path)"
        )
    not_ours = (
        f"'{path}' is not an LM Workbench tokenizer file (expected JSON with a 'kind' of "
        f"{', '.join(map(repr, TOKENIZERS.names()))}); pass a file written by "
        "tokenizer.save(path)"
    )
    try:
        state = json.loads(text)
    except json.JSONDecodeError:
        raise TokenizerFileError(not_ours) from None
    if not isinstance(state, dict) or state.get("kind") not in TOKENIZERS:
        raise TokenizerFileError(not_ours)
    try:
        return TOKENIZERS.get(state["kind"])._from_state(state)
    except Exception as err:
        raise TokenizerFileError(
            f"the {state['kind']!r} tokenizer file '{path}' is damaged ({err!r}); "
            "save the tokenizer again with tokenizer.save(path)"
        ) from None


def tokenizer_from_name(name: str, text: str | None = None) -> Tokenizer:
    """Build a tokenizer from a short name, for dropdowns and the CLI.

    ``"char"`` (needs ``text``), ``"byte"``, ``"bpe"`` (vocabulary of
    512, needs ``text``) or ``"bpe:<vocab_size>"`` such as ``"bpe:1024"``.
    """
    forms = "'char', 'byte', 'bpe' or 'bpe:<vocab_size>' (e.g. 'bpe:512')"
    if not isinstance(name, str):
        raise ValueError(f"tokenizer name must be a str, one of {forms}; got {name!r}")
    kind, _, size = name.partition(":")
    if kind not in TOKENIZERS or (size and kind != "bpe"):
        raise ValueError(f"unknown tokenizer {name!r}; use {forms}")
    if kind == "byte":
        return ByteTokenizer()
    if not text:
        raise ValueError(
            f"the {kind!r} tokenizer is learned from a text; pass text=... "
            "(or use 'byte', which needs none)"
        )
    if kind == "char":
        return CharTokenizer.train(text)
    if size and not size.isdigit():
        raise ValueError(f"in tokenizer {name!r} the vocabulary size {size!r} is not a number; use {forms}")
    return BPETokenizer.train(text, int(size) if size else DEFAULT_BPE_VOCAB_SIZE)
