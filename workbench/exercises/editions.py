"""Student edition: the repository's notebooks (the teacher edition) with the solutions taken out.

In the teacher edition a solution sits between two marker lines inside a code cell::

    def cross_entropy(logits, targets):
        \"\"\"Mean of -log softmax(logits)[target] over all positions.\"\"\"
        # BEGIN SOLUTION
        log_probs = logits.log_softmax(-1)
        return -log_probs.gather(-1, targets[..., None]).mean()
        # END SOLUTION

The student edition keeps the ``def`` line, the docstring and everything else, and replaces the
lines between the markers (markers included) by one ``raise NotImplementedError(...)`` at the
markers' indentation, so the cell still runs and ``check`` answers "not yet". Markdown between
``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` (a worked answer) is removed. Hints stay.
Outputs are cleared in every cell that held a solution or calls ``check(``, so no answer leaks
through an output; all other outputs (figures, tables) are kept. The ``# NBVAL_...`` comments that
steer CI are dropped, and a note at the top says how the exercises work.

``write_student_edition(out_dir)`` writes every notebook; it refuses to overwrite a student's
existing notebook unless ``overwrite=True`` (their work would be lost).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Optional

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
MD_BEGIN, MD_END = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
STUB = 'raise NotImplementedError("your code here: write it, then run the check below")'
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CHECK_CALL = re.compile(r"\bcheck\(")
NBVAL_COMMENT = re.compile(r"^# NBVAL_[A-Z_]+[ \t]*\n?", re.M)
NOTE = ("> **Student edition.** Each exercise's function raises `NotImplementedError` until you write it; "
        "its check cell then says *not yet*. Write the body, run the function's cell, then run the check: "
        "it prints one line per test case. Hints open when you click them.\n")


class EditionError(ValueError):
    """A notebook's solution markers are not paired, or the output folder would lose someone's work."""


def strip_solutions(source: str, where: str = "") -> str:
    """Replace each BEGIN/END SOLUTION block of a code cell's source by a NotImplementedError stub."""
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.splitlines(keepends=True), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise EditionError(f"{where} line {number}: {BEGIN} inside another solution block")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            continue
        if stripped == END:
            if not inside:
                raise EditionError(f"{where} line {number}: {END} without a {BEGIN} before it")
            inside = False
            out.append(f"{indent}{STUB}\n")
            continue
        if not inside:
            out.append(line)
    if inside:
        raise EditionError(f"{where}: {BEGIN} is never closed by {END}")
    text = "".join(out)
    return text if source.endswith("\n") else text.rstrip("\n")


def strip_markdown_solutions(source: str, where: str = "") -> str:
    """Remove worked answers between <!-- BEGIN SOLUTION --> and <!-- END SOLUTION --> from markdown."""
    if source.count(MD_BEGIN) != source.count(MD_END):
        raise EditionError(f"{where}: {MD_BEGIN} and {MD_END} are not paired")
    return re.sub(re.escape(MD_BEGIN) + r".*?" + re.escape(MD_END) + r"\n?", "", source, flags=re.S)


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def student_notebook(notebook: dict, name: str = "notebook") -> tuple:
    """The student edition of one notebook (a new dict) and the number of solutions it replaced."""
    notebook = json.loads(json.dumps(notebook))
    replaced = 0
    for index, cell in enumerate(notebook["cells"]):
        source = _source(cell)
        where = f"{name} cell {index}"
        if cell["cell_type"] == "markdown":
            cell["source"] = strip_markdown_solutions(source, where)
            continue
        if cell["cell_type"] != "code":
            continue
        has_solution = any(line.strip() == BEGIN for line in source.splitlines())
        if has_solution:
            source = strip_solutions(source, where)
            replaced += sum(line.strip() == STUB for line in source.splitlines())
        if has_solution or CHECK_CALL.search(source):
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["source"] = NBVAL_COMMENT.sub("", source)
    note = {"cell_type": "markdown", "metadata": {}, "source": NOTE}
    if notebook.get("nbformat_minor", 0) >= 5:
        note["id"] = "student-edition-note"
    notebook["cells"].insert(1, note)
    return notebook, replaced


def write_student_edition(out_dir, notebooks: Optional[Iterable] = None, overwrite: bool = False) -> dict:
    """Write the student edition of ``notebooks`` (default: every notebook of the repository) into ``out_dir``.

    Returns {notebook file name: solutions replaced}. Everything is checked before anything is written.
    """
    paths = sorted(Path(p) for p in notebooks) if notebooks is not None else sorted(NOTEBOOKS.glob("*.ipynb"))
    if not paths:
        raise EditionError(f"no notebooks found{'' if notebooks is not None else f' in {NOTEBOOKS}'}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EditionError(f"{out} is a file; name a folder for the student edition")
    for path in paths:
        if out.resolve() == path.parent.resolve():
            raise EditionError(f"{out} holds the teacher edition itself; name another folder")
    editions, existing = {}, []
    for path in paths:
        try:
            notebook = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise EditionError(f"cannot read {path}: {error}") from None
        editions[path.name] = student_notebook(notebook, path.name)
        if (out / path.name).exists():
            existing.append(path.name)
    if existing and not overwrite:
        raise EditionError(f"{out} already holds {', '.join(existing)}: a student's work there would be lost. "
                           "Pick an empty folder, or replace them on purpose with --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for name, (notebook, _) in editions.items():
        target = out / name
        temporary = target.with_suffix(".ipynb.tmp")
        temporary.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        temporary.replace(target)
    return {name: replaced for name, (_, replaced) in editions.items()}
