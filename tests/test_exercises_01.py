"""Exercises of notebook 01 (tokens and data): solutions pass, stubs answer "not yet", mistakes fail with
their explanation, and the notebook's exercise cells match the registry."""
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from workbench.exercises import get, run_check
from workbench.exercises.editions import BEGIN, END, strip_solutions

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_tokens_and_data.ipynb"
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


def _raises(*args, **kwargs):
    raise NotImplementedError("your code here: write it, then run the check below")


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
def _cells():
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _exercise_cells(exercise_id):
    """(markdown, solution, check) cells of one exercise: the check cell and the two cells before it."""
    cells = _cells()
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code" and f'check("{exercise_id}"' in _source(cell):
            return cells[index - 2], cells[index - 1], cell
    raise AssertionError(f"the notebook has no check(\"{exercise_id}\", ...) cell")


def test_notebook_checks_exactly_the_registered_exercises():
    called = set(re.findall(r'check\("(01\.\d+)"', "".join(_source(c) for c in _cells() if c["cell_type"] == "code")))
    assert called == set(IDS)


@pytest.mark.parametrize("exercise_id", IDS)
def test_notebook_exercise_matches_registry(exercise_id):
    exercise = get(exercise_id)
    markdown, solution, check_cell = _exercise_cells(exercise_id)
    header = f"### Exercise {exercise.id} · {exercise.title} ({exercise.difficulty}, ~{exercise.minutes} min)"
    assert markdown["cell_type"] == "markdown" and header in _source(markdown).splitlines()
    assert "<details><summary>Hint 1</summary>" in _source(markdown)
    assert _source(check_cell).splitlines()[0] == "# NBVAL_CHECK_OUTPUT"
    code = _source(solution)
    assert solution["cell_type"] == "code" and f"def {exercise.function_name}(" in code
    lines = [line.strip() for line in code.splitlines()]
    assert lines.count(BEGIN) == 1 and lines.count(END) == 1 and lines.index(BEGIN) < lines.index(END)


@pytest.mark.parametrize("exercise_id", IDS)
def test_notebook_solution_passes_and_its_student_stub_is_not_yet(exercise_id):
    import math as math_module

    exercise = get(exercise_id)
    _, solution, _ = _exercise_cells(exercise_id)
    for source, passes in [(_source(solution), True), (strip_solutions(_source(solution)), False)]:
        namespace = {"math": math_module}  # the notebook imports math in its first cell
        exec(compile(source, f"notebook {exercise_id}", "exec"), namespace)
        report = run_check(exercise, namespace[exercise.function_name])
        if passes:
            assert report.passed, str(report)
        else:
            assert report.not_yet and not report.passed
