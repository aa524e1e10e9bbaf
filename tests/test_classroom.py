"""`workbench warm`: each notebook runs once in a fresh kernel under the preset asked for, nothing is written back."""
import json
import os

import pytest

from workbench.classroom import notebook_paths, warm_cache


def _notebook(path, source):
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": "a", "metadata": {}, "execution_count": None, "outputs": [], "source": source}]}))
    return path


def test_warm_runs_each_notebook_under_the_preset_and_writes_nothing_back(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WORKBENCH_PRESET", "cpu")
    marker = tmp_path / "seen"
    notebook = _notebook(tmp_path / "00_x.ipynb",
                         f"import os, pathlib\npathlib.Path({str(marker)!r}).write_text(os.environ['WORKBENCH_PRESET'])")
    before = notebook.read_text()
    timings = warm_cache("ci", [notebook])
    assert [name for name, _ in timings] == ["00_x.ipynb"] and timings[0][1] > 0
    assert marker.read_text() == "ci"                    # the kernel saw the preset asked for
    assert os.environ["WORKBENCH_PRESET"] == "cpu"       # and the caller's environment is back
    assert notebook.read_text() == before


def test_warm_refuses_a_switched_off_cache_and_missing_notebooks(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such notebook"):
        notebook_paths([tmp_path / "missing.ipynb"])
    monkeypatch.setenv("WORKBENCH_TRAINING_CACHE", "off")
    with pytest.raises(ValueError, match="switched off"):
        warm_cache("ci", [_notebook(tmp_path / "00_x.ipynb", "1")])
