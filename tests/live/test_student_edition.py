"""The student edition runs top to bottom: every exercise check says "not yet", nothing crashes.

Runs after the notebooks (``python3 run.py test`` phase 2), so with the training cache that phase 1
filled, each notebook's training cells load instead of training again.
"""
import json
import os
import re
from pathlib import Path

import pytest

from workbench.exercises import exercises
from workbench.exercises.editions import write_student_edition

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9]*.ipynb"))


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student-edition")
    write_student_edition(out)
    return out


@pytest.mark.parametrize("teacher", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_edition_runs_and_every_check_says_not_yet(edition, teacher, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("WORKBENCH_PRESET", os.environ.get("WORKBENCH_PRESET", "ci"))
    path = edition / teacher.name
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(teacher.parent)}}).execute()  # raises on any cell error
    expected = sorted(i for i in exercises() if i.startswith(teacher.name[:2] + "."))
    reported = {}
    for cell in notebook.cells:
        match = re.search(r'check\("(\d\d\.\d+)"', cell.source) if cell.cell_type == "code" else None
        if match:
            text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
            reported[match.group(1)] = text
    assert sorted(reported) == expected
    for exercise_id, text in reported.items():
        assert f"Exercise {exercise_id}" in text and "not yet" in text, (exercise_id, text)
        assert "Traceback" not in text and "passed" not in text, (exercise_id, text)
    assert json.dumps(notebook).count("NotImplementedError") >= len(expected)
