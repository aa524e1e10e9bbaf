"""Exercises of notebook 01 (tokens and data): the solutions pass and further mistakes fail with a line that
points at them; the references are the library's. What every exercise shares (stub "not yet", known mistakes
named, the notebook's cells agree with the registry) is tested once for all in test_exercises_framework.py."""
import math
from collections import Counter

import pytest

from workbench.exercises import get, run_check

IDS = ["01.1", "01.2", "01.3"]


# the reference solutions, copied from the notebook's solution cells
def byte_ids(text):
    return [byte + 4 for byte in text.encode("utf-8")]


def bpe_merge_step(ids, new_id):
    counts = Counter(zip(ids, ids[1:]))
    best = max(counts.values())
    pair = min(p for p, c in counts.items() if c == best)
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return pair, merged


def bits_per_char(nats_per_token, chars_per_token):
    return nats_per_token / chars_per_token / math.log(2)


SOLUTIONS = {"01.1": byte_ids, "01.2": bpe_merge_step, "01.3": bits_per_char}


def _merge_left_to_right(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _non_overlapping_counts(ids, new_id):
    """Counts a pair only where it could be merged (skipping after each match): (a, a) in 'aaa' counts once."""
    counts, i = Counter(), 0
    while i + 1 < len(ids):
        counts[(ids[i], ids[i + 1])] += 1
        i += 2 if ids[i] == ids[i + 1] else 1
    best = max(counts.values())
    pair = min(p for p, c in counts.items() if c == best)
    return pair, _merge_left_to_right(ids, pair, new_id)


# further plausible wrong answers (not registered as Mistakes) and a word their failing line must contain
FURTHER_WRONG = {
    "01.1": (lambda text: [b + 4 for b in text.encode("utf-16-le")], "é is the two UTF-8 bytes"),
    "01.2": (_non_overlapping_counts, "overlapping pairs count"),
    "01.3": (lambda loss, cpt: loss / (cpt * math.log(10)), "1 / ln 2 bits"),
}


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_solution_passes(exercise_id):
    report = run_check(get(exercise_id), SOLUTIONS[exercise_id])
    assert report.passed, str(report)
    assert 3 <= len(report.results) <= 6


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_further_wrong_answer_fails_where_the_case_points_at_it(exercise_id):
    function, pointer = FURTHER_WRONG[exercise_id]
    report = run_check(get(exercise_id), function)
    assert not report.passed and not report.not_yet
    failing = [line for line in report.lines() if "✘" in line]
    assert any(pointer in line for line in failing), f"no failing line says {pointer!r}:\n{report}"


def test_the_registered_references_are_the_librarys():
    from workbench.data import ByteTokenizer
    from workbench.data.bpe_merge import bpe_merge_step as library_merge
    from workbench.data.loss_units import bits_per_char as library_bits

    assert get("01.2").reference is library_merge and get("01.3").reference is library_bits
    assert get("01.1").reference("café ☕") == ByteTokenizer().encode("café ☕")


def test_check_prints_one_line_per_case_and_never_raises(capsys):
    from workbench.exercises import check

    report = check("01.2", lambda ids, new_id: 1 / 0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert not report.passed and len(lines) == len(report.results) + 2
    assert all("ZeroDivisionError" in line for line in lines[1:-1])


# --------------------------------------------------------------------------- notebook vs registry
