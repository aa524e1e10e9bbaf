"""A probe task with a known answer: is the story about a girl or a boy?

The built-in stories (``workbench.data.stories.default_story_source``) name a
girl or a boy, with probability 1/2 each, and then say "She"/"He" about
them. So the gender is a latent variable of every story that a model can
only get from the child's name, and a model that has learned it can fill the
pronoun in. Each example is a window of T tokens of generated text,

    ...e end.\\nToday Tom found a red cat. [MASK] was happy. The end.\\nOnc...
                      ^^^ the only evidence          ^ the label: He (1)

where the pronoun that opens the sentence after the one naming the child is
replaced by one [MASK] token, and y = 0 for "She", 1 for "He". The task is a
test of what the model learned, not of what the window spells out:

* The name is the only evidence. The window holds the name, but no other
  word of that story that reveals the gender ("her", "his", "she", "he"):
  stories whose first sentence says "her"/"his" are skipped, and the window
  ends before the story's next gendered word. A model must know which
  names are girls' names.
* The rest of the window is a distractor, not a cue: it may hold the end of
  the previous story and the start of the next, with their own children,
  whose genders are independent of this one's (the source draws each
  story's child afresh). A model that copies the last pronoun it saw is
  at chance.
* The mask does not leak the answer through lengths. "She" and "He" have
  different numbers of characters, so masking their tokens one for one
  would tell the label by the count; instead the tokens by which the two
  pronouns differ are replaced by exactly ONE [MASK], whatever the gender,
  and the text after it is the same in both cases.
* The layout does not depend on the name's length. The window always
  holds a slot as long as the longest name, ending where the name ends;
  whether a story fits and how much context shows on either side depend
  on that slot, not on the name (girls' names here are a little longer
  than boys', so fitting the name itself would favour longer sentences
  for boys). What the window shows after the name is independent of
  the label.

The masked language model answers at the [MASK] with its verbalizer tokens:
class k is the first token by which pronoun k's spelling " She" / " He"
(with the leading space, as the story writes it) differs from the other's.
For a character tokenizer the shared leading space stays visible and the
verbalizer tokens are "S" and "H"; for a tokenizer with whole-word tokens
" She" and " He" they are those tokens. (``verbalizer_ids``.)

Windows are located by parsing the generated text back into the source's
transitions (unique, because each state's texts are prefix-free), so
names, genders and pronouns are read from the source's own states, not
guessed from spelling. Everything is a function of the seed: example i is
the same for every n >= i + 1.
"""
from __future__ import annotations

import re
from typing import NamedTuple, Optional

import numpy as np
import torch

from ..data.stories import StorySource, default_story_source
from ..data.tokenizers import MASK_ID
from ..validation import check_int, check_range

PRONOUNS = (" She", " He")          # label 0: a girl, label 1: a boy (as the stories spell them)
GENDERS = ("girl", "boy")           # the prefixes of the source's states for each label
GENDERED_WORD = re.compile(r"\b(she|he|her|his)\b", re.IGNORECASE)


class GenderExamples(NamedTuple):
    """Probe examples: ``ids`` (n, T) with one [MASK] each, ``labels`` (n,) 0 = She / 1 = He, and the
    [MASK]'s index in each row, ``mask_positions`` (n,)."""

    ids: torch.Tensor
    labels: torch.Tensor
    mask_positions: torch.Tensor

    def __len__(self) -> int:  # the number of examples, not the tuple's 3 fields
        return int(self.labels.shape[0])

    def subset(self, index) -> "GenderExamples":
        return GenderExamples(self.ids[index], self.labels[index], self.mask_positions[index])


class Piece(NamedTuple):
    start: int        # character offset in the text
    text: str         # what the transition wrote
    state: str        # the state it left
    next_state: str   # the state it went to


def parse_pieces(source: StorySource, text: str) -> list[Piece]:
    """The text as the source's transitions, in order (unique: each state's texts are prefix-free).

    A last piece cut off by the end of the text is left out.
    """
    table = {}  # state -> (a regex matching any of its texts, text -> next state)
    for state, moves in source.states.items():
        texts = sorted({t for _, t, _ in moves}, key=len, reverse=True)
        table[state] = (re.compile("|".join(map(re.escape, texts))), {t: n for _, t, n in moves})
    pieces, pos, state = [], 0, source.start
    while pos < len(text):
        pattern, next_of = table[state]
        match = pattern.match(text, pos)
        if match is None:
            if any(t.startswith(text[pos:]) for t in next_of):
                break  # the text ends inside this transition
            raise ValueError(f"this source cannot produce the text: at character {pos} (state {state!r}) it reads "
                             f"{text[pos:pos + 20]!r}; parse only text made by this source's sample()")
        piece = match.group()
        next_state = next_of[piece]
        pieces.append(Piece(pos, piece, state, next_state))
        pos += len(piece)
        state = next_state
    return pieces


def verbalizer_ids(tokenizer) -> list[int]:
    """One token id per class: the first token by which " She" and " He" differ (see the module docstring).

    For a character tokenizer: the ids of "S" and "H".
    """
    shared, rests = _split_pronoun_tokens(tokenizer)
    return [rest[0] for rest in rests]


def _split_pronoun_tokens(tokenizer) -> tuple[list[int], list[list[int]]]:
    """The tokens " She" and " He" share at the start, and each one's remaining tokens."""
    encoded = [list(tokenizer.encode(p)) for p in PRONOUNS]
    shared = 0
    while all(len(e) > shared for e in encoded) and encoded[0][shared] == encoded[1][shared]:
        shared += 1
    rests = [e[shared:] for e in encoded]
    if any(not rest for rest in rests):
        raise ValueError(f"the tokenizer spells {PRONOUNS[0]!r} as {encoded[0]} and {PRONOUNS[1]!r} as {encoded[1]}: "
                         "one is the start of the other, so no single token tells them apart")
    return encoded[0][:shared], rests


class _Candidate(NamedTuple):
    name: Piece
    pronoun: Piece
    label: int
    right_end: int    # character offset where the story's next gendered word begins


def _candidates(pieces: list[Piece]) -> list[_Candidate]:
    """Every story whose first gendered word after the name is the pronoun that opens the next sentence."""
    found = []
    for i, piece in enumerate(pieces):
        if piece.state != "name":
            continue
        gender = piece.next_state.split(".")[0]
        if gender not in GENDERS:
            raise ValueError(f"the source's name state leads to {piece.next_state!r}; expected a state of "
                             f"{' or '.join(GENDERS)}")
        label = GENDERS.index(gender)
        j = i + 1
        while j < len(pieces) and not GENDERED_WORD.search(pieces[j].text):
            j += 1
        if j >= len(pieces) or pieces[j].text != PRONOUNS[label] or pieces[j].state != f"{gender}.next":
            continue  # "her"/"his" or "Then she" came first, or the story ended first
        k = j + 1
        while k < len(pieces) and not GENDERED_WORD.search(pieces[k].text):
            k += 1
        if k >= len(pieces):
            continue  # the text ends before the next gendered word: the window's right edge is unknown
        found.append(_Candidate(piece, pieces[j], label, pieces[k].start))
    return found


def story_gender_examples(tokenizer, n: int, block_size: int, seed: int = 0,
                          source: Optional[StorySource] = None) -> GenderExamples:
    """``n`` windows of ``block_size`` tokens, each with the pronoun after a child's name masked.

    Text comes from ``source.sample(n_chars, seed)`` (the default story source unless given), in
    growing lengths until it holds n usable stories; every usable story in text order becomes one
    example, so the result is a function of the seed, and example i is the same for every n > i.
    Each window's start is drawn (from a generator seeded by (seed, i)) uniformly among the starts
    that keep the name's slot (as long as the longest name) and the [MASK] inside, and the story's
    next gendered word outside.
    """
    check_int("story_gender_examples", "n", n)
    check_int("story_gender_examples", "block_size", block_size, minimum=2)
    check_int("story_gender_examples", "seed", seed, minimum=0)
    source = source or default_story_source()
    shared, _ = _split_pronoun_tokens(tokenizer)
    name_slot = max(len(tokenizer.encode(name)) for _, name, _ in source.states["name"])
    n_chars = 1000 * n + 2000  # about 800 characters of stories give one example at block 32
    while True:
        text = source.sample(n_chars, seed)
        candidates = _candidates(parse_pieces(source, text))
        rows, labels, positions = [], [], []
        for index, candidate in enumerate(candidates):
            window = _window(tokenizer, text, candidate, shared, name_slot, block_size,
                             np.random.default_rng([seed, index]))
            if window is not None:
                rows.append(window[0])
                positions.append(window[1])
                labels.append(candidate.label)
                if len(rows) == n:
                    return GenderExamples(torch.tensor(rows, dtype=torch.long), torch.tensor(labels, dtype=torch.long),
                                          torch.tensor(positions, dtype=torch.long))
        if len(candidates) >= 20 * n + 100:  # 20 times the stories needed, and fewer than n fit
            raise ValueError(f"story_gender_examples: block_size={block_size} tokens holds the name and the masked "
                             f"pronoun of only {len(rows)} of {len(candidates)} stories; use a longer block "
                             "(at 32 characters about a third of the stories fit)")
        # grow the text in proportion to what is missing (with a margin), at least doubling it
        n_chars = max(2 * n_chars, int(1.3 * n_chars * n / max(len(rows), 1)))


def _window(tokenizer, text: str, candidate: _Candidate, shared: list[int], name_slot: int, block_size: int, rng):
    """One window (ids, mask index) for the candidate, or None if the name slot and mask do not fit in it.

    The window always holds the ``name_slot`` tokens that end where the name ends (the longest name's
    length: the name and, for a shorter name, what precedes it), so whether a story fits, and how much
    context it shows on either side, do not depend on the name's length; otherwise short (more often
    boys') names would leave room for longer sentences, and the sentence would hint at the gender.
    """
    name_start = candidate.name.start
    pronoun_start = candidate.pronoun.start
    pronoun_end = pronoun_start + len(candidate.pronoun.text)
    before = list(tokenizer.encode(text[max(0, name_start - 4 * block_size):name_start]))
    name = list(tokenizer.encode(candidate.name.text))
    sentence = list(tokenizer.encode(text[name_start + len(candidate.name.text):pronoun_start]))
    after = list(tokenizer.encode(text[pronoun_end:min(candidate.right_end, pronoun_end + 4 * block_size)]))
    tokens = before + name + sentence + shared + [MASK_ID] + after
    slot_at = len(before) + len(name) - name_slot
    mask_at = len(before) + len(name) + len(sentence) + len(shared)
    lowest = max(0, mask_at + 1 - block_size)        # the mask must be inside
    highest = min(slot_at, len(tokens) - block_size)  # the name slot must be inside, and the window full
    if slot_at < 0 or lowest > highest:
        return None
    start = int(rng.integers(lowest, highest + 1))
    return tokens[start:start + block_size], mask_at - start


def split_examples(examples: GenderExamples, test_fraction: float = 0.5) -> tuple[GenderExamples, GenderExamples]:
    """(train, test): the first examples and the last ``test_fraction`` of them.

    The examples are stories in the order the source told them, each drawn independently, so a
    contiguous split is as random as a shuffled one; and neighbouring windows can share distractor
    text (the end of one story is the start of the next one's window), which a contiguous split
    confines to the one boundary. For fully separate text, build the test set from another seed.
    """
    check_range("split_examples", "test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    n_test = int(round(len(examples) * test_fraction))
    if not 0 < n_test < len(examples):
        raise ValueError(f"split_examples: test_fraction={test_fraction!r} of {len(examples)} examples leaves "
                         f"{n_test} for testing and {len(examples) - n_test} for training; both need at least one")
    cut = len(examples) - n_test
    return examples.subset(slice(0, cut)), examples.subset(slice(cut, None))


def child_names(source: Optional[StorySource] = None) -> dict[str, int]:
    """Every child's name the source can tell a story about, with its label (0 girl, 1 boy)."""
    source = source or default_story_source()
    return {text.strip(): GENDERS.index(next_state.split(".")[0]) for _, text, next_state in source.states["name"]}


def example_names(examples: GenderExamples, tokenizer, source: Optional[StorySource] = None) -> list[str]:
    """The child's name of each example: the last name in its window before the [MASK]."""
    names = child_names(source)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b")
    found = []
    for row, position in zip(examples.ids.tolist(), examples.mask_positions.tolist()):
        before = tokenizer.decode(row[:position])
        matches = pattern.findall(before)
        if not matches:
            raise ValueError(f"example_names: no child's name before the [MASK] in {before!r}")
        found.append(matches[-1])
    return found


def split_by_name(examples: GenderExamples, tokenizer, held_out: int = 6, seed: int = 0,
                  source: Optional[StorySource] = None) -> tuple[GenderExamples, GenderExamples, list[str]]:
    """(train, test, held-out names): the test set is every example whose child has one of ``held_out`` names per
    gender drawn with ``seed``; training never sees those names. A probe that still gets the test set right
    generalizes from names to gender, which it can only do through what the representation learned about names
    (an untrained network can read a name's letters, but not which names go with "She")."""
    names = child_names(source)
    check_int("split_by_name", "held_out", held_out)
    rng = np.random.default_rng(seed)
    held: list[str] = []
    for label in (0, 1):
        of_label = sorted(n for n, g in names.items() if g == label)
        if held_out >= len(of_label):
            raise ValueError(f"split_by_name: held_out={held_out} names per gender leaves none of the "
                             f"{len(of_label)} {GENDERS[label]}s' names for training")
        held += [str(name) for name in rng.choice(of_label, size=held_out, replace=False)]
    in_test = torch.tensor([name in held for name in example_names(examples, tokenizer, source)])
    if not bool(in_test.any()) or bool(in_test.all()):
        raise ValueError("split_by_name: the examples do not cover both the held-out and the other names; "
                         "use more examples")
    return examples.subset(~in_test), examples.subset(in_test), sorted(held)


__all__ = ["GenderExamples", "PRONOUNS", "parse_pieces", "split_examples", "story_gender_examples",
           "verbalizer_ids"]
