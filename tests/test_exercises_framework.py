"""The exercise machinery: comparisons, one line per case, never a traceback; the student edition; the registry."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.exercises import Case, Exercise, Mistake, check, compare, exercises, get, run_check
from workbench.exercises.editions import (BEGIN, END, STUB, EditionError, strip_markdown_solutions, strip_solutions,
                                          student_notebook, write_student_edition)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


# ----------------------------------------------------------------------------- compare
def test_compare_names_the_first_differing_entry():
    expected = torch.zeros(2, 3)
    got = expected.clone()
    got[1, 2] = 0.5
    message = compare(expected, got)
    assert "index (1, 2)" in message and "expected 0" in message and "got 0.5" in message and "1 of 6" in message
    assert compare(expected, expected + 1e-7) is None


def test_compare_shapes_types_and_containers():
    assert "expected shape (2, 3)" in compare(torch.zeros(2, 3), torch.zeros(3, 2))
    assert "expected a tensor" in compare(torch.zeros(2), "no")
    assert compare(3, 3) is None and "expected 3, got 4" in compare(3, 4)
    assert compare(0.1 + 0.2, 0.3) is None and "expected 0.3" in compare(0.3, 0.31)
    assert "expected a number" in compare(1.0, "1.0")
    assert "first difference at character 2" in compare("abcd", "abXd")
    assert "item 1" in compare([1, 2, 3], [1, 5, 3]) and "expected 3 items" in compare([1, 2, 3], [1, 2])
    assert "missing keys ['b']" in compare({"a": 1, "b": 2}, {"a": 1})
    assert "key 'a'" in compare({"a": torch.ones(2)}, {"a": torch.zeros(2)})
    assert compare(np.array([1, 2]), torch.tensor([1, 2])) is None
    assert compare(torch.tensor([float("nan"), float("inf")]), torch.tensor([float("nan"), float("inf")])) is None
    assert compare(torch.tensor(float("-inf")), torch.tensor(float("inf"))) is not None
    assert "expected True" in compare(True, 1)


# ----------------------------------------------------------------------------- run_check
def _toy():
    return Exercise(
        id="99.1", title="double it", function_name="double", difficulty="easy", minutes=1,
        reference=lambda x: 2 * x,
        cases=lambda: [Case("a vector", (torch.arange(4.0),)), Case("a matrix", (torch.ones(2, 2),))],
        mistakes=[Mistake("you squared instead of doubling", lambda x: x * x)])


def test_right_answer_passes_every_case(capsys):
    report = run_check(_toy(), lambda x: x + x)
    assert report.passed and report.n_passed == 2 and not report.not_yet
    assert str(report).splitlines()[-1].strip() == "all 2 cases passed"


def test_stub_reports_not_yet_in_one_line():
    def double(x):
        raise NotImplementedError("your code here")

    report = run_check(_toy(), double)
    assert report.not_yet and not report.passed
    lines = str(report).splitlines()
    assert len(lines) == 2 and "not yet" in lines[1] and "`double`" in lines[1]


def test_known_mistake_is_named_and_exceptions_are_one_line():
    report = run_check(_toy(), lambda x: x * x)
    assert not report.passed
    assert [r.status for r in report.results] == ["✘", "✘"]
    assert all("you squared instead of doubling" in r.message for r in report.results)
    other = run_check(_toy(), lambda x: 3 * x)  # a wrong answer that is no known mistake: no explanation
    assert "squared" not in str(other) and "first difference at index 1" in other.results[0].message


def test_learner_exception_is_reported_with_its_line_and_the_check_goes_on():
    def double(x):
        return x.no_such_method()

    report = run_check(_toy(), double)
    assert [r.status for r in report.results] == ["✘", "✘"]
    assert "raised AttributeError" in report.results[0].message and "no_such_method" in report.results[0].message
    assert "Traceback" not in str(report)


def test_forgotten_return_and_in_place_edits():
    assert "forget `return`" in str(run_check(_toy(), lambda x: None))

    def double_in_place(x):
        x.mul_(2)
        return x

    assert run_check(_toy(), double_in_place).passed  # inputs are copied per call: the reference is not spoiled


def test_check_prints_and_displays_nothing_twice(capsys):
    report = check("00.1", lambda logits, targets: torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)))
    out = capsys.readouterr().out
    assert out.startswith("Exercise 00.1 · cross-entropy from logits") and "all 4 cases passed" in out
    assert report._ipython_display_() is None and "00.1: 4/4 passed" in repr(report)
    with pytest.raises(KeyError, match="no exercise '42.1'"):
        get("42.1")


def test_difficulty_is_validated():
    with pytest.raises(ValueError, match="difficulty"):
        Exercise(id="x", title="t", function_name="f", difficulty="tricky", minutes=1, reference=abs, cases=list)


# ----------------------------------------------------------------------------- the registry
@pytest.mark.parametrize("exercise_id", sorted(exercises()))
def test_every_exercise_is_consistent(exercise_id):
    """The reference passes its own cases, the untouched stub is "not yet", and every known mistake fails
    with its explanation in the printed lines (so each can be recognised when a learner makes it).

    Each notebook's own test file (tests/test_exercises_NN.py) adds that the notebook's solution passes and
    that further plausible wrong answers fail with a line that points at the mistake."""
    exercise = get(exercise_id)
    assert exercise.minutes > 0 and exercise.title and len(exercise.cases()) >= 3
    assert run_check(exercise, exercise.reference).passed

    def stub(*args, **kwargs):
        raise NotImplementedError("your code here")

    report = run_check(exercise, stub)
    assert report.not_yet and not report.passed and "not yet" in str(report)
    assert exercise.mistakes, f"{exercise_id} has no known mistake to recognise"
    for mistake in exercise.mistakes:
        report = run_check(exercise, mistake.function)
        assert not report.passed and not report.not_yet, f"{exercise_id}: '{mistake.explanation}' passes"
        assert mistake.explanation in str(report), (mistake.explanation, str(report))


def test_every_notebook_has_three_exercises_and_every_exercise_a_notebook():
    checked = {}
    for path in sorted(NOTEBOOKS.glob("[0-9]*.ipynb")):
        source = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
        ids = re.findall(r'check\("(\d\d\.\d+)"', source)
        assert len(set(ids)) >= 3, f"{path.name} has {len(set(ids))} checked exercises; a lesson needs at least 3"
        assert all(i.startswith(path.name[:2] + ".") for i in ids), (path.name, ids)
        checked.update({i: path.name for i in ids})
    assert set(checked) == set(exercises()), "registered exercises and notebook checks differ"


# ----------------------------------------------------------------------------- the notebooks agree with the registry
def _notebook_cells(exercise_id):
    """(kind, source) of every cell of the notebook that holds ``exercise_id`` ("00.1" -> notebooks/00_*.ipynb)."""
    (path,) = NOTEBOOKS.glob(f"{exercise_id[:2]}_*.ipynb")
    return [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]


def _solution_namespace(cells, upto):
    """The notebook's imports plus its solution cells before index ``upto``, exec'd in order (02.5 calls 02.1-02.4)."""
    namespace = {}
    exec("import math\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n", namespace)
    for kind, source in cells[:upto]:
        if kind == "code" and any(line.strip() == BEGIN for line in source.splitlines()):
            exec(source, namespace)
    return namespace


@pytest.mark.parametrize("exercise_id", sorted(exercises()))
def test_notebook_exercise_cells_match_the_registry(exercise_id):
    """Header (title, difficulty, minutes), hints, a solution between the markers with a docstring, and a check
    cell whose output CI compares: three cells in a row. The notebook's solution passes; its stub is "not yet"."""
    exercise = get(exercise_id)
    cells = _notebook_cells(exercise_id)
    calls = [i for i, (kind, source) in enumerate(cells) if kind == "code" and f'check("{exercise_id}"' in source]
    assert len(calls) == 1, f"expected one check(\"{exercise_id}\", ...) cell, found {len(calls)}"
    index = calls[0]
    (md_kind, markdown), (solution_kind, solution), (_, check_source) = cells[index - 2:index + 1]
    header = f"### Exercise {exercise.id} · {exercise.title} ({exercise.difficulty}, ~{exercise.minutes} min)"
    assert md_kind == "markdown" and markdown.splitlines()[0] == header, (header, markdown[:200])
    assert re.search(r"<details><summary>Hint 1</summary>.+?</details>", markdown, re.S)
    assert solution_kind == "code" and f"def {exercise.function_name}(" in solution
    lines = [line.strip() for line in solution.splitlines()]
    assert lines.count(BEGIN) == 1 and lines.count(END) == 1 and lines.index(BEGIN) < lines.index(END)
    assert '"""' in solution, "the stub needs a docstring that states the contract"
    assert check_source.splitlines()[0] == "# NBVAL_CHECK_OUTPUT"
    assert f'check("{exercise_id}", {exercise.function_name})' in check_source
    namespace = _solution_namespace(cells, index)
    assert run_check(exercise, namespace[exercise.function_name]).passed
    exec(strip_solutions(solution), namespace)
    report = run_check(exercise, namespace[exercise.function_name])
    assert report.not_yet and not report.passed


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_no_cell_outside_an_exercise_calls_a_learners_function(path):
    """The student edition runs to the end: apart from its definition and its check, nothing calls a stub."""
    cells = _notebook_cells(path.name[:2] + ".")
    names = [e.function_name for i, e in exercises().items() if i.startswith(path.name[:2] + ".")]
    for kind, source in cells:
        if kind != "code" or BEGIN in source or re.search(r'check\("', source):
            continue
        for name in names:
            # a call of the bare name (a method or module attribute of the same name, e.g. model.cache_bytes, is not it)
            assert not re.search(rf"(?<![\w.]){name}\(", source), f"a cell calls the learner's {name}: {source[:200]}"


# ----------------------------------------------------------------------------- the student edition
SOLVED = f'''def double(x):
    """Twice x."""
    {BEGIN}
    y = x + x
    return y
    {END}

print("after")'''


def test_strip_solutions_keeps_signature_docstring_and_indentation():
    student = strip_solutions(SOLVED)
    assert student == f'def double(x):\n    """Twice x."""\n    {STUB}\n\nprint("after")'
    namespace = {}
    exec(student, namespace)  # the stub cell still runs (it defines the function)
    with pytest.raises(NotImplementedError):
        namespace["double"](1)


@pytest.mark.parametrize("broken, problem", [
    (f"{BEGIN}\nx = 1\n", "never closed"),
    (f"x = 1\n{END}\n", "without a"),
    (f"{BEGIN}\n{BEGIN}\n{END}\n", "inside another"),
])
def test_unpaired_markers_are_an_error(broken, problem):
    with pytest.raises(EditionError, match=problem):
        strip_solutions(broken, "nb cell 3")


def test_markdown_solutions_are_removed():
    text = "Question?\n<!-- BEGIN SOLUTION -->\nThe answer is 42.\n<!-- END SOLUTION -->\nNext."
    assert strip_markdown_solutions(text) == "Question?\nNext."
    with pytest.raises(EditionError, match="not paired"):
        strip_markdown_solutions("<!-- BEGIN SOLUTION -->")


def _notebook(cells):
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": t, "metadata": {}, "source": s, **({"outputs": o, "execution_count": 1} if t == "code" else {})}
        for t, s, o in cells]}


def test_student_notebook_clears_answers_and_keeps_the_rest():
    figure = [{"output_type": "display_data", "data": {"text/plain": "a figure"}, "metadata": {}}]
    teacher = _notebook([("markdown", "# Title", None),
                         ("code", ["import x\n", "x.plot()"], figure),
                         ("code", SOLVED, [{"output_type": "stream", "name": "stdout", "text": "after"}]),
                         ("code", '# NBVAL_CHECK_OUTPUT\ncheck("99.1", double)',
                          [{"output_type": "stream", "name": "stdout", "text": "all 2 cases passed"}])])
    student, replaced = student_notebook(teacher, "toy")
    cells = student["cells"]
    assert replaced == 1 and "Student edition" in "".join(cells[1]["source"])
    assert cells[2]["outputs"] == figure                     # ordinary outputs stay
    assert STUB in cells[3]["source"] and "y = x + x" not in cells[3]["source"] and cells[3]["outputs"] == []
    assert cells[4]["source"] == 'check("99.1", double)' and cells[4]["outputs"] == []
    assert "all 2 cases passed" not in json.dumps(student)
    assert teacher["cells"][2]["outputs"]                    # the teacher's notebook is untouched


def test_write_student_edition_refuses_to_destroy_work(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "00_x.ipynb").write_text(json.dumps(_notebook([("code", SOLVED, [])])))
    out = tmp_path / "class"
    assert write_student_edition(out, [teacher / "00_x.ipynb"]) == {"00_x.ipynb": 1}
    (out / "00_x.ipynb").write_text("a student's work")
    with pytest.raises(EditionError, match="would be lost.*--overwrite"):
        write_student_edition(out, [teacher / "00_x.ipynb"])
    assert (out / "00_x.ipynb").read_text() == "a student's work"
    write_student_edition(out, [teacher / "00_x.ipynb"], overwrite=True)
    assert STUB in json.loads((out / "00_x.ipynb").read_text())["cells"][0]["source"]
    with pytest.raises(EditionError, match="teacher edition itself"):
        write_student_edition(teacher, [teacher / "00_x.ipynb"])
    (tmp_path / "file").write_text("")
    with pytest.raises(EditionError, match="is a file"):
        write_student_edition(tmp_path / "file", [teacher / "00_x.ipynb"])
    (teacher / "bad.ipynb").write_text("{not json")
    with pytest.raises(EditionError, match="cannot read"):
        write_student_edition(tmp_path / "other", [teacher / "bad.ipynb"])
    assert not (tmp_path / "other").exists()


def test_repository_notebooks_make_a_student_edition_without_solutions(tmp_path):
    written = write_student_edition(tmp_path)
    assert set(written) == {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    for name, replaced in written.items():
        text = (tmp_path / name).read_text()
        assert BEGIN not in text and END not in text and "NBVAL_" not in text
        assert replaced >= 3, f"{name}: {replaced} solutions replaced; every notebook has at least 3 exercises"
