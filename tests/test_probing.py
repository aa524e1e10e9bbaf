"""Probing: the story gender task, linear probes, and classifying with a masked LM."""
import functools
import math
import re

import pytest
import torch
from torch import nn

from helpers import model_state, single_thread, states_equal, tiny_model  # noqa: F401
from workbench.data import ByteTokenizer, CharTokenizer, default_story_source
from workbench.data.tokenizers import MASK_ID
from workbench.models.transformer import ModelOutput
from workbench.probing import (PRONOUNS, features, finetune_generative, finetune_linear_head, generative_classify,
                               linear_probe, parse_pieces, split_examples, story_gender_examples, verbalizer_ids)
from workbench.probing.linear_probe import fit_logistic_regression, logistic_logits

BLOCK = 32
GENDERED = re.compile(r"\b(she|he|her|his)\b", re.IGNORECASE)


def five_sigma(n: int, p: float = 0.5) -> float:
    """Five standard deviations of a proportion of n Bernoulli(p) draws."""
    return 5 * math.sqrt(p * (1 - p) / n)


@functools.lru_cache(maxsize=None)
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer.train(default_story_source().sample(20_000, 0))


@functools.lru_cache(maxsize=None)
def gender_examples(n: int = 1000, seed: int = 0):
    return story_gender_examples(char_tokenizer(), n, BLOCK, seed)


def names_by_gender() -> dict[str, int]:
    """Every name the source can tell, with its label (0 girl, 1 boy), read from the source's own states."""
    return {text.strip(): (0 if next_state.startswith("girl.") else 1)
            for _, text, next_state in default_story_source().states["name"]}


# ---------------------------------------------------------------- the labelled task
def test_each_window_has_one_mask_at_the_stated_position():
    ids, labels, positions = gender_examples()
    n = len(labels)
    assert ids.shape == (n, BLOCK) and ids.dtype == torch.long
    assert labels.shape == positions.shape == (n,) and set(labels.tolist()) == {0, 1}
    assert torch.equal(ids[torch.arange(n), positions], torch.full((n,), MASK_ID))
    assert torch.equal((ids == MASK_ID).sum(1), torch.ones(n, dtype=torch.long))
    assert abs(labels.float().mean().item() - 0.5) < five_sigma(n)  # the source picks each gender w.p. 1/2


def test_labels_match_the_text_and_the_name_is_the_only_cue():
    ids, labels, positions = gender_examples()
    tokenizer = char_tokenizer()
    text = default_story_source().sample(1_000_000, 0)  # the examples' text is a prefix of this one
    names = names_by_gender()
    name_pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    for row, label in zip(ids.tolist(), labels.tolist()):
        window = tokenizer.decode(row)
        before, after = window.split("[MASK]")
        # the masked pronoun really was She (label 0) or He (label 1): putting it back gives the source's text
        restored = before + PRONOUNS[label].strip() + after
        assert restored in text
        # the last name before the mask has the label's gender, and nothing after it says the gender
        last_name = name_pattern.findall(before)[-1]
        assert names[last_name] == label
        end = text.index(restored) + len(restored)
        after_to_word_end = after + re.match(r"\w*", text[end:]).group()  # a window may end inside a word
        assert not GENDERED.search(before[before.rindex(last_name):]) and not GENDERED.search(after_to_word_end)


def test_examples_are_a_function_of_the_seed_and_grow_by_appending():
    again = story_gender_examples(char_tokenizer(), 1000, BLOCK, 0)
    assert all(torch.equal(a, b) for a, b in zip(gender_examples(), again))
    fewer = story_gender_examples(char_tokenizer(), 50, BLOCK, 0)
    assert all(torch.equal(a, b[:50]) for a, b in zip(fewer, gender_examples()))
    assert not torch.equal(story_gender_examples(char_tokenizer(), 50, BLOCK, 1).ids, fewer.ids)


def test_byte_tokenizer_gives_the_same_windows_as_the_char_tokenizer():
    # the stories are ASCII, so both tokenizers spell them one token per character
    char, byte = story_gender_examples(char_tokenizer(), 60, BLOCK, 3), story_gender_examples(ByteTokenizer(), 60,
                                                                                              BLOCK, 3)
    assert [char_tokenizer().decode(r) for r in char.ids.tolist()] == [ByteTokenizer().decode(r)
                                                                       for r in byte.ids.tolist()]
    assert torch.equal(char.labels, byte.labels) and torch.equal(char.mask_positions, byte.mask_positions)


class WordTokenizer:
    """Whole words with their leading space as single tokens, characters otherwise (a BPE-like stub)."""

    words = {" She": 40, " He": 41}

    def encode(self, text):
        return [self.words[text]] if text in self.words else [4 + ord(c) % 30 for c in text]


def test_verbalizers_are_the_first_tokens_where_the_pronouns_differ():
    tokenizer = char_tokenizer()
    assert verbalizer_ids(tokenizer) == tokenizer.encode("SH")  # the shared leading space is skipped
    assert verbalizer_ids(ByteTokenizer()) == ByteTokenizer().encode("SH")
    assert verbalizer_ids(WordTokenizer()) == [40, 41]


def test_parse_pieces_spells_the_text_back():
    source = default_story_source()
    text = source.sample(3000, 5)
    pieces = parse_pieces(source, text)
    joined = "".join(p.text for p in pieces)
    assert text.startswith(joined) and len(text) - len(joined) < max(len(t) for m in source.states.values()
                                                                     for _, t, _ in m)
    assert all(text[p.start:p.start + len(p.text)] == p.text for p in pieces)
    with pytest.raises(ValueError, match="cannot produce"):
        parse_pieces(source, "Once upon a time, Bob")


def test_split_is_contiguous_and_checks_its_fraction():
    examples = gender_examples()
    train, test = split_examples(examples, test_fraction=0.25)
    assert (len(train), len(test)) == (750, 250)
    assert torch.equal(torch.cat([train.ids, test.ids]), examples.ids)
    for bad in (0, 1, 1.5, 0.0001):
        with pytest.raises(ValueError, match="test_fraction"):
            split_examples(examples, test_fraction=bad)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="block_size=8"):
        story_gender_examples(char_tokenizer(), 5, 8, 0)
    with pytest.raises(ValueError, match="n=0"):
        story_gender_examples(char_tokenizer(), 0, BLOCK, 0)


# ---------------------------------------------------------------- the linear probe
def gaussian_set(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), g


def test_linear_probe_separates_a_linearly_separable_set():
    x, g = gaussian_set(4000, 64, 0)
    direction = torch.randn(64, generator=g)
    score = x @ direction / direction.norm()
    keep = score.abs() > 0.5  # a margin of 1 between the classes
    x, y = x[keep][:2400], (score[keep][:2400] > 0).long()
    assert linear_probe(x[:2000], y[:2000], x[2000:], y[2000:]) == 1.0


def test_linear_probe_is_at_chance_on_random_labels():
    x, g = gaussian_set(3000, 64, 1)
    y = torch.randint(0, 2, (3000,), generator=g)
    accuracy = linear_probe(x[:2000], y[:2000], x[2000:], y[2000:])
    assert abs(accuracy - 0.5) < five_sigma(1000)


def test_logistic_regression_reaches_the_minimum():
    x, g = gaussian_set(500, 8, 2)
    y = (x @ torch.randn(8, 3, generator=g) + torch.randn(500, 3, generator=g)).argmax(1)  # 3 noisy classes
    z, l2 = x.double(), 1e-2
    theta = fit_logistic_regression(z, y, 3, l2).requires_grad_(True)
    objective = (torch.nn.functional.cross_entropy(logistic_logits(z, theta), y)
                 + 0.5 * l2 * (theta[:-1] ** 2).sum() + 0.5 * 1e-10 * l2 * (theta[-1] ** 2).sum())
    gradient, = torch.autograd.grad(objective, theta)
    assert float(gradient.abs().max()) < 1e-8  # a convex objective's stationary point is its minimum


# ---------------------------------------------------------------- features
def test_features_read_the_hidden_state_at_the_position_or_their_mean():
    model = tiny_model().train()
    ids = torch.randint(4, 32, (5, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([0, 3, 15, 7, 7])
    with torch.no_grad():
        states = model.eval()(ids, attention_mode="bidirectional", return_hidden_states=True).hidden_states
    model.train()
    at_mask = features(model, ids, "bidirectional", position=positions, batch_size=2)
    assert torch.equal(at_mask, states[-1][torch.arange(5), positions])
    assert torch.allclose(features(model, ids, "bidirectional"), states[-1].mean(1), atol=1e-6)
    assert torch.equal(features(model, ids, "bidirectional", positions, layer=0), states[0][torch.arange(5), positions])
    assert model.training and not at_mask.requires_grad  # mode restored, nothing to backpropagate
    with pytest.raises(ValueError, match="layer=3"):
        features(model, ids, "bidirectional", layer=3)


# ---------------------------------------------------------------- classifying with the [MASK] head
class LogitStub(nn.Module):
    """A "model" whose logits come from a function of the ids: the answer is known by construction."""

    def __init__(self, vocab_size, logits_of):
        super().__init__()
        self.config = tiny_model().config.__class__(vocab_size=vocab_size, block_size=BLOCK, n_layer=1, n_head=1,
                                                    d_model=8)
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the stub a device
        self.logits_of = logits_of
        self.modes = []

    def forward(self, ids, attention_mode="causal", **_):
        self.modes.append(attention_mode)
        return ModelOutput(logits=self.logits_of(ids))


def test_generative_classify_reads_only_the_verbalizer_logits_at_the_mask():
    s_id, h_id, other = 10, 11, 12
    positions = torch.tensor([2, 5, 0])

    def logits_of(ids):
        logits = torch.zeros(*ids.shape, 20)
        logits[..., h_id] = 4.0  # everywhere H is preferred...
        rows = torch.arange(ids.shape[0])
        logits[rows, positions[:ids.shape[0]], h_id] = 1.0  # ...except at the mask, where S beats H
        logits[rows, positions[:ids.shape[0]], s_id] = 2.0
        logits[rows, positions[:ids.shape[0]], other] = 9.0  # and a non-verbalizer token beats both
        return logits

    stub = LogitStub(20, logits_of)
    ids = torch.zeros(3, 8, dtype=torch.long)
    predicted, log_probs = generative_classify(stub, ids, positions, [s_id, h_id], "bidirectional")
    assert predicted.tolist() == [0, 0, 0]
    full = logits_of(ids)[torch.arange(3), positions].log_softmax(-1)
    assert torch.allclose(log_probs, full[:, [s_id, h_id]])
    assert stub.modes == ["bidirectional"]
    flipped, _ = generative_classify(stub, ids, positions, [h_id, s_id], "bidirectional")
    assert flipped.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="verbalizer_ids"):
        generative_classify(stub, ids, positions, [s_id, s_id], "bidirectional")


def gender_reader():
    """A stub that knows the answer: logits from the last child's name before the mask in the decoded window."""
    tokenizer, names = char_tokenizer(), names_by_gender()
    s_id, h_id = verbalizer_ids(tokenizer)
    name_pattern = re.compile(r"\b(" + "|".join(names) + r")\b")

    def logits_of(ids):
        logits = torch.zeros(*ids.shape, tokenizer.vocab_size)
        for i, row in enumerate(ids.tolist()):
            before = tokenizer.decode(row).split("[MASK]")[0]
            girl = names[name_pattern.findall(before)[-1]] == 0
            logits[i, :, s_id if girl else h_id] = 1.0
        return logits

    return LogitStub(tokenizer.vocab_size, logits_of)


def test_a_model_that_knows_the_names_solves_the_task():
    ids, labels, positions = gender_examples()
    knows, _ = generative_classify(gender_reader(), ids, positions, verbalizer_ids(char_tokenizer()))
    assert torch.equal(knows, labels)


def test_nothing_after_the_name_tells_the_gender():
    """A linear probe on all the window shows after the name is at chance.

    It reads the sentence after the name and the text after the [MASK] (bags of characters) and
    their lengths. A leak such as masking only the pronoun's first character ("[MASK]he" vs
    "[MASK]e"), a "her"/"his" left after the mask, or sentences whose length depends on the gender
    would make it far better than chance.
    """
    ids, labels, _ = gender_examples()
    tokenizer, vocab = char_tokenizer(), char_tokenizer().vocab_size
    name_pattern = re.compile(r"\b(" + "|".join(names_by_gender()) + r")\b")
    rows = []
    for row in ids.tolist():
        before, after = tokenizer.decode(row).split("[MASK]")
        sentence = before[list(name_pattern.finditer(before))[-1].end():]
        counts = torch.zeros(2 * vocab + 2 * BLOCK)
        for offset, part in ((0, sentence), (vocab, after)):
            for token in tokenizer.encode(part):
                counts[offset + token] += 1
        counts[2 * vocab + len(sentence)] = counts[2 * vocab + BLOCK + len(after)] = 1  # one-hot lengths
        rows.append(counts)
    x = torch.stack(rows)
    accuracy = linear_probe(x[:600], labels[:600], x[600:], labels[600:])
    majority = max(labels[600:].float().mean().item(), 1 - labels[600:].float().mean().item())
    assert accuracy < majority + five_sigma(400)


# ---------------------------------------------------------------- fine-tuning
def neighbour_task(n, seed):
    """Random windows with a [MASK] at position 4, then token 20 (label 0) or 21 (label 1)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 32, (n, 16), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    positions = torch.full((n,), 4)
    ids[:, 4] = MASK_ID
    ids[:, 5] = 20 + labels
    return ids, labels, positions


def test_finetuning_learns_an_easy_task_on_a_copy():
    model = tiny_model(seed=1)
    before = model_state(model)
    train, test = neighbour_task(512, 0), neighbour_task(200, 1)
    verbalizer = [10, 11]
    zero_shot, _ = generative_classify(model, test[0], test[2], verbalizer)
    untrained = (zero_shot == test[1]).double().mean().item()
    assert finetune_generative(model, train, test, verbalizer, steps=0) == untrained  # starts from zero-shot
    tuned = finetune_generative(model, train, test, verbalizer, steps=40, lr=3e-3)
    head = finetune_linear_head(model, train, test, steps=40, lr=3e-3)
    chance_bound = 0.5 + five_sigma(200)
    assert tuned > max(untrained, chance_bound) and head > chance_bound
    assert tuned >= 0.95 and head >= 0.95
    assert states_equal(model_state(model), before) and not model.training  # the caller's model is untouched
    # a function of its arguments: the seed (head init, batches, dropout) decides a short run's result
    short = [finetune_linear_head(model, train, test, steps=8, lr=3e-3, seed=seed) for seed in (3, 3, 0)]
    assert short[0] == short[1] != short[2]
