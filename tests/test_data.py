"""Tests for workbench.data: tokenizers, story source, corpora, token data."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import forbid_network
from workbench.data import (
    SPECIAL_TOKENS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    DataUnavailableError,
    StorySource,
    TokenData,
    TokenizerFileError,
    UnknownTokenError,
    default_cache_dir,
    default_story_source,
    load_text,
    load_tokenizer,
    tokenizer_from_name,
)
from workbench.data import corpora
from workbench.data.tokenizers import split_into_chunks

TRICKY = "Hello, wörld!\n\tÜnïcode 😀 — 中文 [MASK] [PAD]\n\n  end"


@pytest.fixture(scope="module")
def story_text() -> str:
    return default_story_source().sample(20_000, seed=0)


@pytest.fixture(scope="module")
def tokenizers(story_text):
    return {
        "char": CharTokenizer.train(story_text + TRICKY),
        "byte": ByteTokenizer(),
        "bpe": BPETokenizer.train(story_text + TRICKY, 300),
    }


KINDS = ["char", "byte", "bpe"]


# -- tokenizers ---------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_have_fixed_ids(tokenizers, kind):
    tok = tokenizers[kind]
    assert (tok.pad_id, tok.mask_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.decode([0, 1, 2, 3]) == "".join(SPECIAL_TOKENS)
    assert tok.decode([2] + tok.encode("Mia") + [3], skip_special=True) == "Mia"
    assert tok.token_strings([0, 1, 2, 3]) == list(SPECIAL_TOKENS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", [TRICKY, "Once upon a time, Mia\nsaw a cat.\n", "a", ""])
def test_round_trip(tokenizers, kind, text):
    tok = tokenizers[kind]
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 4 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text


@pytest.mark.parametrize("kind", KINDS)
def test_special_strings_in_text_are_plain_text(tokenizers, kind):
    tok = tokenizers[kind]
    ids = tok.encode("[MASK][EOS]")
    assert not set(ids) & {0, 1, 2, 3}
    assert tok.decode(ids) == "[MASK][EOS]"


@pytest.mark.parametrize("kind", KINDS)
def test_decode_rejects_bad_ids(tokenizers, kind):
    tok = tokenizers[kind]
    with pytest.raises(ValueError, match="outside this vocabulary"):
        tok.decode([5, tok.vocab_size])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="expects a str"):
        tok.encode(b"bytes")
    for floats in ([4.9, 5.2], torch.tensor([4.9, 5.0]), [5, True]):  # int() would silently read 4 and 5
        with pytest.raises(ValueError, match=r"expects integer token ids, got \[(4\.9|True)"):
            tok.decode(floats)
    with pytest.raises(ValueError, match="expects a list of integer token ids, got 5"):
        tok.decode(5)
    assert tok.decode(np.array([5, 6])) == tok.decode([5, 6]) == tok.decode(torch.tensor([5, 6]))


def test_char_vocabulary_is_specials_then_sorted_chars():
    tok = CharTokenizer.train("cabbage")
    assert tok.vocab_size == 4 + 5
    assert tok.encode("abceg") == [4, 5, 6, 7, 8]


def test_char_unknown_characters_error_names_them_and_the_fix():
    tok = CharTokenizer.train("abc")
    with pytest.raises(UnknownTokenError) as info:
        tok.encode("abxyz!")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'x'" in message and "'z'" in message and "'!'" in message and "'a'" not in message
    assert "ByteTokenizer" in message and "train" in message


def test_byte_tokenizer_vocabulary_and_broken_utf8():
    tok = ByteTokenizer()
    assert tok.vocab_size == 260
    assert tok.encode("A") == [ord("A") + 4]
    assert tok.encode("é") == [0xC3 + 4, 0xA9 + 4]
    assert tok.decode([0xC3 + 4]) == "\ufffd"  # half a character: replaced, not an error
    assert tok.token_strings(tok.encode("é a\n")) == ["<0xC3>", "<0xA9>", "\u2423", "a", "\\n"]


def test_bpe_compresses_and_validates_vocab_size(story_text, tokenizers):
    bpe = tokenizers["bpe"]
    assert 260 < bpe.vocab_size <= 300
    assert len(bpe.encode(story_text)) < 0.6 * len(story_text.encode("utf-8"))
    with pytest.raises(ValueError, match=">= 261"):
        BPETokenizer.train(story_text, 260)


def test_bpe_token_strings_show_spaces(tokenizers):
    bpe = tokenizers["bpe"]
    strings = bpe.token_strings(bpe.encode(" Mia saw\n"))
    assert "".join(strings) == "\u2423Mia\u2423saw\\n"


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_an_equal_tokenizer(tokenizers, kind, tmp_path):
    tok = tokenizers[kind]
    path = tok.save(tmp_path / "sub" / "tok.json")
    assert json.loads(path.read_text(encoding="utf-8"))["kind"] == kind
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded == tok
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode(TRICKY) == tok.encode(TRICKY)
    assert loaded.encode("[PAD]") == tok.encode("[PAD]")  # still plain text after loading


def test_load_tokenizer_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(TokenizerFileError, match="is empty"):
        load_tokenizer(tmp_path / "empty.json")
    (tmp_path / "other.json").write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(TokenizerFileError, match="not an LM Workbench tokenizer file"):
        load_tokenizer(tmp_path / "other.json")
    (tmp_path / "junk.json").write_text("not json at all")
    with pytest.raises(TokenizerFileError, match="not an LM Workbench tokenizer file"):
        load_tokenizer(tmp_path / "junk.json")
    (tmp_path / "damaged.json").write_text('{"kind": "char"}')
    with pytest.raises(TokenizerFileError, match="damaged"):
        load_tokenizer(tmp_path / "damaged.json")
    with pytest.raises(TokenizerFileError, match="directory"):
        load_tokenizer(tmp_path)


def test_tokenizer_from_name(story_text):
    assert isinstance(tokenizer_from_name("char", story_text), CharTokenizer)
    assert tokenizer_from_name("byte").vocab_size == 260
    bpe = tokenizer_from_name("bpe:280", story_text)
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size == 280
    for bad, needle in [("word", "unknown tokenizer"), ("byte:3", "unknown tokenizer"),
                        ("bpe:lots", "not a number"), (None, "must be a str")]:
        with pytest.raises(ValueError, match=needle):
            tokenizer_from_name(bad, story_text)
    with pytest.raises(ValueError, match="pass text="):
        tokenizer_from_name("char")


# -- the story source -----------------------------------------------------------

def coin(a="a", b="b"):
    return {"s": [(0.5, a, "s"), (0.5, b, "s")]}


@pytest.mark.parametrize("states, start, needle", [
    ({"s": [(0.5, "a", "s"), (0.4, "b", "s")]}, "s", "sum to"),
    ({"s": [(1.5, "a", "s"), (-0.5, "b", "s")]}, "s", "must be numbers > 0"),
    (coin(" a", " an"), "s", "prefix-free"),
    (coin("x", "x"), "s", "prefix-free"),
    (coin("a", ""), "s", "non-empty"),
    ({"s": [(1.0, "a", "t")]}, "s", "unknown state 't'"),
    ({"s": [(1.0, "a", "s")], "t": [(1.0, "b", "s")]}, "s", "irreducible"),
    ({"s": [(1.0, "a", "t")], "t": [(1.0, "b", "t")]}, "s", "irreducible"),
    (coin(), "nowhere", "start state 'nowhere'"),
    ({"s": [(1.0, "a")]}, "s", "triple"),
])
def test_story_source_validation(states, start, needle):
    with pytest.raises(ValueError, match=needle):
        StorySource(states, start)


def test_entropy_rate_of_hand_computable_sources():
    assert StorySource(coin(), "s").entropy_rate_per_char() == pytest.approx(math.log(2))
    # One fair choice per step, 1.5 characters per step on average.
    assert StorySource(coin("a", "bb"), "s").entropy_rate_per_char() == pytest.approx(math.log(2) / 1.5)
    # Two states visited alternately; only "s" makes a choice.
    two = StorySource({"s": [(0.5, "a", "t"), (0.5, "b", "t")], "t": [(1.0, "xyz", "s")]}, "s")
    assert two.stationary() == pytest.approx([0.5, 0.5])
    assert two.entropy_rate_per_char() == pytest.approx(math.log(2) / 4)
    assert two.bits_per_char() == pytest.approx(0.25)


def test_default_source_stationary_and_range():
    source = default_story_source()
    pi = source.stationary()
    assert pi.dtype == np.float64 and pi.sum() == pytest.approx(1.0) and (pi > 0).all()
    assert pi @ source.transition_matrix() == pytest.approx(pi)
    assert 0.35 < source.entropy_rate_per_char() < 1.0
    assert "nats/char" in repr(source)


def test_entropy_rate_matches_empirical_nll():
    source = default_story_source()
    text = source.sample(200_000, seed=1)
    empirical = -source.log_prob(text) / len(text)
    assert empirical == pytest.approx(source.entropy_rate_per_char(), rel=0.02)


def test_log_prob_exact_values_and_errors():
    source = default_story_source()
    assert source.log_prob("") == 0.0
    assert source.log_prob("Once upon") == pytest.approx(math.log(0.4))  # cut inside a transition
    assert source.log_prob("On") == pytest.approx(math.log(0.7))  # "Once upon a time," or "One day,"
    assert source.log_prob("Today Mia") == pytest.approx(math.log(0.3 * 0.5 / 12))
    with pytest.raises(ValueError, match="cannot produce"):
        source.log_prob("Today Mia was happy. He")  # wrong pronoun for Mia
    with pytest.raises(ValueError, match="cannot produce"):
        source.log_prob("Yesterday")


def test_sampling_is_deterministic_and_exact_length():
    source = default_story_source()
    a, b, c = source.sample(5000, seed=7), source.sample(5000, seed=7), source.sample(5000, seed=8)
    assert a == b and a != c and len(a) == 5000
    assert math.isfinite(source.log_prob(a))
    with pytest.raises(ValueError, match="n_chars"):
        source.sample(0)


def test_stories_keep_the_pronoun_of_their_child():
    import re

    source = default_story_source()
    girls = {t.strip() for p, t, nxt in source.states["name"] if nxt == "girl.verb"}
    stories = source.sample(50_000, seed=2).split("The end.\n")[:-1]
    assert len(stories) > 100
    for story in stories:
        name = re.match(r"(?:Once upon a time,|One day,|Today) (\w+)", story).group(1)
        words = set(re.findall(r"\w+", story.lower()))
        wrong = {"he", "his"} if name in girls else {"she", "her"}
        assert not words & wrong, story


# -- corpora --------------------------------------------------------------------

def test_load_text_stories():
    text = load_text("stories", n_chars=3000, seed=4)
    assert text == default_story_source().sample(3000, seed=4)
    assert len(load_text("stories")) == 200_000


def test_load_text_pydoc():
    text = load_text("pydoc")
    assert len(text) > 300_000 and "Python" in text
    assert load_text("pydoc", n_chars=1000) == text[:1000]


def test_load_text_files(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Grüße\nhello\n", encoding="utf-8")
    assert load_text(f"file:{path}") == "Grüße\nhello\n"
    assert load_text(str(path)) == "Grüße\nhello\n"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_text(f"file:{tmp_path / 'nope.txt'}")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_text(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text(" \n\t")
    with pytest.raises(ValueError, match="is empty"):
        load_text(f"file:{tmp_path / 'empty.txt'}")
    (tmp_path / "latin1.txt").write_bytes("Grüße".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8.*iconv"):
        load_text(f"file:{tmp_path / 'latin1.txt'}")
    with pytest.raises(ValueError, match="directory"):
        load_text(f"file:{tmp_path}")


@pytest.mark.parametrize("spec", ["wikipedia", "", "file:", 42, "hf:"])
def test_load_text_bad_specs(spec):
    with pytest.raises(ValueError) as info:
        load_text(spec)
    assert "'stories'" in str(info.value) or "names no" in str(info.value)


def test_hub_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = forbid_network(monkeypatch)
    with pytest.raises(DataUnavailableError) as info:
        load_text("hf:nobody-here/no-such-dataset-xyz")
    assert attempts == []  # not one connection tried, so no retries to wait for
    message = str(info.value)
    assert "'stories'" in message and "'pydoc'" in message and "file:PATH" in message
    assert "HF_HUB_OFFLINE" in message


def _forbid_load(*args, **kwargs):
    raise AssertionError("load_dataset must not be called")


def test_hub_offline_env_set_late_never_calls_the_hub(monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", _forbid_load)
    with pytest.raises(DataUnavailableError, match="HF_HUB_OFFLINE"):
        load_text("hf:roneneldan/TinyStories")


def test_hub_unreachable_fails_without_retrying(monkeypatch):
    import datasets

    monkeypatch.setattr(corpora, "hub_offline", lambda: False)
    monkeypatch.setattr(corpora, "hub_reachable", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", _forbid_load)
    with pytest.raises(DataUnavailableError, match="cannot be reached"):
        load_text("hf:roneneldan/TinyStories")


def test_hub_errors_and_success_path(monkeypatch):
    import datasets

    monkeypatch.setattr(corpora, "hub_offline", lambda: False)
    monkeypatch.setattr(corpora, "hub_reachable", lambda: True)
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        if name == "down":
            raise ConnectionError("connection refused")
        if name == "tabular":
            return datasets.Dataset.from_dict({"x": [1, 2]})
        return datasets.Dataset.from_dict({"text": ["first row", "second row", "third row"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_text("hf:some/stories:small") == "first row\nsecond row\nthird row"
    assert calls[-1] == ("some/stories", "small", "train")
    assert load_text("hf:some/stories", n_chars=12) == "first row\nse"
    assert calls[-1] == ("some/stories", None, "train")
    with pytest.raises(DataUnavailableError, match="connection refused"):
        load_text("hf:down")
    with pytest.raises(ValueError, match="no 'text' column"):
        load_text("hf:tabular")


# -- token data -----------------------------------------------------------------

def test_token_data_split_sizes(story_text, tokenizers, tmp_path):
    text = story_text[:1000]
    data = TokenData.from_text(text, tokenizers["char"], val_fraction=0.1, cache_dir=tmp_path)
    assert (len(data.train), len(data.val), data.n_tokens) == (900, 100, 1000)
    assert data.train.dtype == torch.long and data.train.ndim == 1
    assert torch.cat([data.train, data.val]).tolist() == tokenizers["char"].encode(text)
    assert data.chars_per_token == 1.0
    assert data.vocab_size == tokenizers["char"].vocab_size and data.tokenizer is tokenizers["char"]
    byte_data = TokenData.from_text("é" * 100, ByteTokenizer(), cache_dir=tmp_path)
    assert byte_data.chars_per_token == 0.5
    with pytest.raises(ValueError, match="val_fraction"):
        TokenData.from_text(text, tokenizers["char"], val_fraction=1.0, cache_dir=tmp_path)


def test_chunked_bpe_tokenization_is_exact():
    # pydoc has indented code and blank lines; add trailing spaces before newlines.
    text = load_text("pydoc", n_chars=60_000).replace(".\n", ".  \n") + TRICKY
    chunks = split_into_chunks(text, 3000)
    assert len(chunks) > 10 and "".join(chunks) == text
    bpe = BPETokenizer.train(text, 600)
    assert [i for chunk in chunks for i in bpe.encode(chunk)] == bpe.encode(text)
    # The reason: BPE never merges across pre-tokens, and the chunks' pre-tokens
    # are exactly the whole text's, whatever merges a tokenizer has learned.
    pieces = bpe.hf.pre_tokenizer.pre_tokenize_str
    assert [p for chunk in chunks for p, _ in pieces(chunk)] == [p for p, _ in pieces(text)]


def test_token_data_bpe_matches_whole_text_encoding(story_text, tokenizers, tmp_path, monkeypatch):
    from workbench.data import token_data

    monkeypatch.setattr(token_data, "CHUNK_CHARS", 1000)  # many chunks
    data = TokenData.from_text(story_text, tokenizers["bpe"], cache_dir=tmp_path)
    assert torch.cat([data.train, data.val]).tolist() == tokenizers["bpe"].encode(story_text)
    assert data.chars_per_token == pytest.approx(len(story_text) / data.n_tokens)


def test_second_call_is_a_cache_hit(story_text, tmp_path):
    tok = CharTokenizer.train(story_text)
    calls = []
    original = tok.encode
    tok.encode = lambda text: calls.append(text) or original(text)
    first = TokenData.from_text(story_text, tok, cache_dir=tmp_path)
    n_calls = len(calls)
    files = sorted(tmp_path.glob("*.arrow"))
    assert n_calls > 0 and len(files) == 1
    second = TokenData.from_text(story_text, tok, cache_dir=tmp_path)
    assert len(calls) == n_calls  # nothing re-tokenized
    assert sorted(tmp_path.glob("*.arrow")) == files
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    TokenData.from_text(story_text[:5000], tok, cache_dir=tmp_path)  # another text: a miss
    assert len(calls) > n_calls and len(list(tmp_path.glob("*.arrow"))) == 2


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tokens"
    monkeypatch.delenv("WORKBENCH_CACHE")
    assert default_cache_dir().parts[-2:] == ("lm-workbench", "tokens")


def test_get_batch_windows_and_determinism(story_text, tokenizers, tmp_path):
    data = TokenData.from_text(story_text, tokenizers["char"], cache_dir=tmp_path)
    batch = data.get_batch("train", 8, 33, torch.Generator().manual_seed(0))
    again = data.get_batch("train", 8, 33, torch.Generator().manual_seed(0))
    other = data.get_batch("train", 8, 33, torch.Generator().manual_seed(1))
    assert batch.shape == (8, 33) and batch.dtype == torch.long
    assert torch.equal(batch, again) and not torch.equal(batch, other)
    train_text = tokenizers["char"].decode(data.train)
    val_text = tokenizers["char"].decode(data.val)
    for row in batch:  # each row is a contiguous window of the training split
        assert tokenizers["char"].decode(row) in train_text
    for row in data.get_batch("val", 4, 17, torch.Generator().manual_seed(0)):
        assert tokenizers["char"].decode(row) in val_text
    with pytest.raises(ValueError, match="split"):
        data.get_batch("test", 8, 33)
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        data.get_batch("train", 8, 33, generator=0)


def test_too_short_corpus_gives_one_clear_error(tmp_path):
    tok = CharTokenizer.train("abcdefghij")
    data = TokenData.from_text("abcdefghij" * 10, tok, val_fraction=0.1, cache_dir=tmp_path)
    data.check_block(10)
    with pytest.raises(ValueError, match="validation split has 10 tokens, fewer than one block of 11; "
                                         "use a longer text, a smaller block_size or a larger val_fraction"):
        data.get_batch("train", 2, 11)
    skewed = TokenData.from_text("abcdefghij" * 10, tok, val_fraction=0.95, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="training split has 5 tokens.*smaller val_fraction"):
        skewed.check_block(6)


def test_from_spec(tmp_path):
    data = TokenData.from_spec("stories", "bpe:300", n_chars=5000, cache_dir=tmp_path)
    assert isinstance(data.tokenizer, BPETokenizer) and data.n_chars == 5000
    assert data.chars_per_token > 1.5
    byte = TokenData.from_spec("stories", ByteTokenizer(), n_chars=2000, cache_dir=tmp_path)
    assert byte.n_tokens == 2000
