"""Synthetic stories whose entropy rate is known exactly.

How low can a language model's loss go? For real text nobody knows. For a
text we generate ourselves we can know, if we build the generator carefully.
That number is the *loss floor*: no model, however large, can average less
than it per character, and a good model trained long enough gets close.

The generator is a *probabilistic finite-state source*. It sits in one of a
few named states; from state ``s`` it picks one of that state's transitions
``(p, text, next_state)`` with probability ``p``, writes ``text`` and moves
to ``next_state``. For example, after a girl's name the state remembers
"girl", so the next sentence says "She" and not "He": a model has to carry
that context across a sentence to predict it.

**The entropy rate.** Let ``pi`` be the stationary distribution of the
state chain (how often, in the long run, the source is in each state).
Per step, the source makes a choice with entropy
``H(s) = -sum_t p_t log p_t`` and writes ``L(s) = sum_t p_t len(text_t)``
characters on average. Over a long run of ``n`` steps it has made choices
worth about ``n * sum_s pi(s) H(s)`` nats and written about
``n * sum_s pi(s) L(s)`` characters (the ergodic theorem), so the entropy
per character is the ratio::

    h = sum_s pi(s) H(s) / sum_s pi(s) L(s)        (nats per character)

**Why this is exact.** The ratio counts the entropy of the *sequence of
choices*, while a model predicts the *text*. The two are equal when the text
determines the choices, which we enforce: the texts leaving any one state are
*prefix-free* (none is the start of another), so reading the text from the
start state there is always exactly one transition that fits. Text and path
are then two spellings of the same thing, and ``log_prob(text)`` computes
the true probability of a text by parsing it back into its path.

The chain must also be *irreducible* (every state reachable from ``start``
and ``start`` reachable from every state), so ``pi`` is unique and the long
run averages above exist. ``StorySource`` checks all of this when built.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from workbench.validation import check_int

Transition = tuple[float, str, str]  # (probability, emitted text, next state)


class StorySource:
    """A probabilistic finite-state text source with a known entropy rate."""

    def __init__(self, states: Mapping[str, Sequence[Transition]], start: str):
        self.states = {name: [tuple(t) for t in moves] for name, moves in dict(states).items()}
        self.start = start
        self._validate()
        self.names = list(self.states)
        self._index = {name: i for i, name in enumerate(self.names)}
        # Per state: cumulative probabilities for sampling.
        self._cumulative = {
            name: np.cumsum([p for p, _, _ in moves]) for name, moves in self.states.items()
        }

    # -- construction checks ------------------------------------------------
    def _validate(self) -> None:
        if not self.states:
            raise ValueError("StorySource needs at least one state; pass {name: [(p, text, next), ...]}")
        if self.start not in self.states:
            raise ValueError(
                f"StorySource start state {self.start!r} is not one of the states "
                f"{sorted(self.states)}; pass start= one of them"
            )
        for name, moves in self.states.items():
            if not moves:
                raise ValueError(f"state {name!r} has no transitions; give it at least one (p, text, next)")
            for move in moves:
                if len(move) != 3:
                    raise ValueError(
                        f"state {name!r} has transition {move!r}; each must be a triple "
                        "(probability, text, next_state)"
                    )
                p, text, nxt = move
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
                    raise ValueError(
                        f"state {name!r}: transition {move!r} has probability {p!r}; "
                        "probabilities must be numbers > 0 (drop transitions that never happen)"
                    )
                if not isinstance(text, str) or not text:
                    raise ValueError(
                        f"state {name!r}: transition {move!r} emits {text!r}; every transition "
                        "must emit a non-empty str (merge empty ones into their neighbours)"
                    )
                if nxt not in self.states:
                    raise ValueError(
                        f"state {name!r}: transition {move!r} goes to unknown state {nxt!r}; "
                        f"next states must be among {sorted(self.states)}"
                    )
            total = sum(p for p, _, _ in moves)
            if abs(total - 1.0) > 1e-9:
                raise ValueError(
                    f"the probabilities of state {name!r} sum to {total!r}, not 1; "
                    "rescale them so they sum to 1"
                )
            texts = sorted(text for _, text, _ in moves)
            for a, b in zip(texts, texts[1:]):  # sorted: a prefix sorts right before its extensions
                if b.startswith(a):
                    raise ValueError(
                        f"state {name!r} emits both {a!r} and {b!r}; the texts leaving a state "
                        "must be prefix-free (none may start another), otherwise the text "
                        "would not determine the path. Reword one of them."
                    )
        reach_from_start = self._reachable(self.start, reverse=False)
        reach_to_start = self._reachable(self.start, reverse=True)
        stuck = [s for s in self.states if s not in reach_from_start or s not in reach_to_start]
        if stuck:
            raise ValueError(
                f"states {stuck} are not reachable from {self.start!r} or cannot lead back to "
                "it; the chain must be irreducible (add transitions, or remove those states)"
            )

    def _reachable(self, origin: str, reverse: bool) -> set[str]:
        edges = {s: set() for s in self.states}
        for s, moves in self.states.items():
            for _, _, nxt in moves:
                if reverse:
                    edges[nxt].add(s)
                else:
                    edges[s].add(nxt)
        seen, frontier = {origin}, [origin]
        while frontier:
            for nxt in edges[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        return seen

    # -- exact quantities ---------------------------------------------------
    def transition_matrix(self) -> np.ndarray:
        """``P[i, j]`` = probability of moving from state i to state j."""
        P = np.zeros((len(self.names), len(self.names)))
        for name, moves in self.states.items():
            for p, _, nxt in moves:
                P[self._index[name], self._index[nxt]] += p
        return P

    def stationary(self) -> np.ndarray:
        """The stationary distribution ``pi`` (``pi P = pi``, ``sum pi = 1``).

        ``pi (P - I) = 0`` has one redundant equation; we swap one of them
        for the normalisation ``sum pi = 1`` and solve the square system.
        """
        n = len(self.names)
        A = (self.transition_matrix() - np.eye(n)).T
        A[-1, :] = 1.0
        b = np.zeros(n)
        b[-1] = 1.0
        return np.linalg.solve(A, b)

    def entropy_rate_per_char(self) -> float:
        """Entropy rate in nats per character (the loss floor of a char model)."""
        pi = self.stationary()
        choice_entropy = np.array(
            [-sum(p * math.log(p) for p, _, _ in self.states[s]) for s in self.names]
        )
        chars_written = np.array([sum(p * len(t) for p, t, _ in self.states[s]) for s in self.names])
        return float(pi @ choice_entropy / (pi @ chars_written))

    def bits_per_char(self) -> float:
        """The entropy rate in bits per character."""
        return self.entropy_rate_per_char() / math.log(2)

    # -- sampling and scoring -----------------------------------------------
    def sample(self, n_chars: int, seed: int = 0) -> str:
        """``n_chars`` characters of text, starting at ``start``.

        Walks the chain until at least ``n_chars`` characters are written,
        then cuts the text to exactly ``n_chars``. The same seed always gives
        the same text.
        """
        check_int("StorySource.sample", "n_chars", n_chars)
        check_int("StorySource.sample", "seed", seed, minimum=0)
        rng = np.random.default_rng(seed)
        pieces, written, state = [], 0, self.start
        while written < n_chars:
            for u in rng.random(4096):  # uniforms drawn in blocks: fewer Python calls
                moves = self.states[state]
                k = min(int(np.searchsorted(self._cumulative[state], u, side="right")), len(moves) - 1)
                _, text, state = moves[k]
                pieces.append(text)
                written += len(text)
                if written >= n_chars:
                    break
        return "".join(pieces)[:n_chars]

    def log_prob(self, text: str) -> float:
        """Natural log of the probability that the output starts with ``text``.

        The text is parsed back into its path (unique, by prefix-freeness)
        and the log probabilities of its transitions are summed. A cut at the
        end (as ``sample`` makes) is allowed: the last, partial piece counts
        with the probability of the transitions it could be the start of.
        ``-log_prob(text) / len(text)`` estimates ``entropy_rate_per_char()``.
        """
        if not isinstance(text, str):
            raise ValueError(f"StorySource.log_prob expects a str, got {type(text).__name__}")
        total, pos, state = 0.0, 0, self.start
        while pos < len(text):
            rest = text[pos:]
            match = next(((p, t, n) for p, t, n in self.states[state] if rest.startswith(t)), None)
            if match is not None:
                p, piece, state = match
                total += math.log(p)
                pos += len(piece)
                continue
            partial = sum(p for p, t, _ in self.states[state] if t.startswith(rest))
            if partial > 0:  # the text stops in the middle of a transition
                return total + math.log(partial)
            options = ", ".join(repr(t) for _, t, _ in self.states[state][:6])
            raise ValueError(
                f"this source cannot produce the text: at character {pos} (state {state!r}) "
                f"it reads {rest[:20]!r}, but the state emits only {options}. Score only text "
                "made by this source's sample()"
            )
        return total

    def window_log_prob(self, text: str) -> float:
        """Natural log of the probability that a window of the stationary stream reads ``text``.

        ``log_prob`` scores text from the start of a story; a training window starts anywhere, in the
        middle of a piece too. Here the hidden state is (state, transition, character within its text):
        the source writes the character there and moves to the next character of the same text, or,
        after the text's last one, to the first character of a transition of the next state. In the
        long run the stream is at (s, j, c) a fraction pi(s) p_j / sum_s pi(s) L(s) of the time, and the
        forward algorithm sums over every hidden path that writes ``text`` (Rabiner 1989, eq. 19-21).
        Returns -inf for text the source never writes. ``-window_log_prob(x[:n]) / n`` tends to the
        entropy rate; ``window_log_prob(a + b) - window_log_prob(a)`` is the exact log-probability of
        ``b`` following ``a`` (how generated continuations are scored).
        """
        return self._forward(text)[0]

    def writable_prefix(self, text: str) -> int:
        """How many leading characters of ``text`` a window of the stream can read (all of them: len(text))."""
        return self._forward(text)[1]

    def _forward(self, text: str) -> tuple[float, int]:
        """(window_log_prob(text), the length of the longest prefix with a probability above 0)."""
        if not isinstance(text, str):
            raise ValueError(f"StorySource.window_log_prob expects a str, got {type(text).__name__}")
        if not text:
            return 0.0, 0
        chars, start, within, ends_in, firsts, first_weight, initial = self._character_chain()
        alpha = initial * (chars == text[0])
        total = 0.0
        for position, ch in enumerate(text[1:], start=1):
            scale = alpha.sum()
            if scale == 0:
                return float("-inf"), position - 1
            total += math.log(scale)
            alpha = alpha / scale
            moved = np.zeros_like(alpha)
            moved[within + 1] = alpha[within]                       # the next character of the same text
            arriving = np.bincount(ends_in, weights=alpha[start], minlength=len(self.names))  # texts ending now
            moved[firsts] += arriving[first_weight[0]] * first_weight[1]  # the first character of a next text
            alpha = moved * (chars == ch)
        scale = alpha.sum()
        return (total + math.log(scale), len(text)) if scale > 0 else (float("-inf"), len(text) - 1)

    def _character_chain(self):
        """The character-level hidden chain behind ``window_log_prob`` (built once)."""
        if getattr(self, "_chain", None) is None:
            chars, start_of, owner, piece_end, next_state, firsts, first_state, first_p, weight = ([] for _ in range(9))
            pi = self.stationary()
            for s_index, name in enumerate(self.names):
                for p, piece, nxt in self.states[name]:
                    firsts.append(len(chars))
                    first_state.append(s_index)
                    first_p.append(p)
                    for c, ch in enumerate(piece):
                        chars.append(ch)
                        weight.append(pi[s_index] * p)
                        piece_end.append(c == len(piece) - 1)
                    next_state.append(self._index[nxt])
            piece_end = np.array(piece_end)
            index = np.arange(len(chars))
            chars = np.array(chars)
            weight = np.array(weight)
            self._chain = (chars, index[piece_end], index[~piece_end], np.array(next_state), np.array(firsts),
                           (np.array(first_state), np.array(first_p)), weight / weight.sum())
        return self._chain

    def __repr__(self) -> str:
        n_moves = sum(len(m) for m in self.states.values())
        return (
            f"StorySource({len(self.states)} states, {n_moves} transitions, "
            f"start={self.start!r}, entropy rate {self.entropy_rate_per_char():.3f} nats/char "
            f"= {self.bits_per_char():.3f} bits/char)"
        )


def _uniform(texts: Sequence[str], next_state: str, weight: float = 1.0) -> list[Transition]:
    """``weight`` split equally over ``texts``, all leading to ``next_state``."""
    return [(weight / len(texts), text, next_state) for text in texts]


def default_story_source() -> StorySource:
    """A small children's-story world: 16 states, 0.403 nats (0.581 bits) per character.

    A story opens, names a girl or a boy, and tells a few sentences about
    them. The state remembers who the story is about, so later sentences
    must use the right words ("She"/"He", "her"/"his") many characters after
    the name: a model that ignores that context pays for it in loss. "The
    end." closes a story and a new one begins. Made-up example::

        Once upon a time, Mia found a big red kite near the tree. She was
        happy. She gave it to her dog. The end.
    """
    girls = [" Mia", " Lily", " Anna", " Sara", " Zoe", " Emma",
             " Ivy", " Ruby", " Nora", " Kate", " Ella", " Rose"]
    boys = [" Tom", " Ben", " Max", " Sam", " Leo", " Jack",
            " Finn", " Owen", " Luke", " Noah", " Dan", " Eli"]
    verbs = [" found", " lost", " saw", " liked", " wanted", " made",
             " hid", " took", " fed", " drew", " kept", " hugged"]
    adjectives = [" big", " red", " little", " funny", " new", " soft", " blue", " tiny", " green", " pink"]
    nouns = [" ball", " cat", " kite", " hat", " box", " dog", " cake", " book", " frog", " bird", " toy", " boat",
             " fish", " drum", " sock", " cup", " bus", " duck", " bear", " pig", " hen", " bell", " map", " car"]
    prepositions = [" in the", " near the", " under the", " by the", " on the", " behind the"]
    spots = [" park.", " tree.", " bed.", " sea.", " lake.", " house.",
             " hill.", " shop.", " barn.", " road.", " pond.", " door."]
    feelings = [" happy.", " sad.", " glad.", " tired.", " scared.",
                " proud.", " brave.", " sleepy.", " cold.", " hungry."]

    states: dict[str, list[Transition]] = {
        "open": [(0.4, "Once upon a time,", "name"), (0.3, "One day,", "name"), (0.3, "Today", "name")],
        "name": _uniform(girls, "girl.verb", 0.5) + _uniform(boys, "boy.verb", 0.5),
    }
    # Every later state exists twice, once per child, so it knows the pronoun.
    for who, pronoun, possessive in (("girl", "she", "her"), ("boy", "he", "his")):
        He = pronoun.capitalize()
        states[f"{who}.verb"] = (_uniform(verbs, f"{who}.det", 0.7)
                                 + [(0.2, " was", f"{who}.feel"), (0.1, " gave it to", f"{who}.det")])
        states[f"{who}.det"] = _uniform([" a", " the", " one", " that", f" {possessive}"], f"{who}.thing")
        # Adjectives loop back here ("a big red ball"); a noun ends the thing.
        states[f"{who}.thing"] = (_uniform(adjectives, f"{who}.thing", 0.3)
                                  + _uniform(nouns, f"{who}.place", 0.7))
        states[f"{who}.place"] = (_uniform(prepositions, f"{who}.spot", 0.6)
                                  + [(0.1, " at home.", f"{who}.next"), (0.3, ".", f"{who}.next")])
        states[f"{who}.spot"] = _uniform(spots, f"{who}.next")
        states[f"{who}.next"] = [
            (0.55, f" {He}", f"{who}.verb"),
            (0.3, f" Then {pronoun}", f"{who}.verb"),
            (0.15, " The end.\n", "open"),
        ]
        states[f"{who}.feel"] = _uniform(feelings, f"{who}.next")
    return StorySource(states, start="open")
