"""Tests for run.py's logic. Nothing here creates a venv or installs anything."""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_run_py():
    spec = importlib.util.spec_from_file_location("workbench_run_py", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_py = _load_run_py()

PYPROJECT = b'[project]\nname = "x"\ndependencies = ["torch>=2.4"]\n'
CONSTRAINTS = b"torch==2.13.0\n"


# ---------------------------------------------------------------- the stamp


def test_stamp_is_deterministic_hex():
    a = run_py.compute_stamp(PYPROJECT, CONSTRAINTS)
    assert a == run_py.compute_stamp(PYPROJECT, CONSTRAINTS)
    assert re.fullmatch(r"[0-9a-f]{64}", a)


def test_stamp_changes_with_pyproject():
    before = run_py.compute_stamp(PYPROJECT, CONSTRAINTS)
    after = run_py.compute_stamp(PYPROJECT.replace(b">=2.4", b">=2.5"), CONSTRAINTS)
    assert before != after


def test_stamp_changes_with_constraints():
    before = run_py.compute_stamp(PYPROJECT, CONSTRAINTS)
    after = run_py.compute_stamp(PYPROJECT, CONSTRAINTS + b"numpy==2.4.6\n")
    assert before != after


def test_stamp_changes_with_location():
    assert run_py.compute_stamp(PYPROJECT, CONSTRAINTS, "/a") != run_py.compute_stamp(
        PYPROJECT, CONSTRAINTS, "/b"
    )


def test_stamp_does_not_confuse_which_file_holds_what():
    assert run_py.compute_stamp(b"ab", b"c") != run_py.compute_stamp(b"a", b"bc")


def _project(tmp_path, pyproject=PYPROJECT, constraints=CONSTRAINTS):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pyproject.toml").write_bytes(pyproject)
    (tmp_path / "constraints.txt").write_bytes(constraints)
    return tmp_path


def test_stamp_for_follows_the_files(tmp_path):
    root = _project(tmp_path)
    first = run_py.stamp_for(root)
    (root / "pyproject.toml").write_bytes(PYPROJECT)  # rewritten, same content
    assert run_py.stamp_for(root) == first
    (root / "constraints.txt").write_bytes(CONSTRAINTS + b"tqdm==4.70.1\n")
    second = run_py.stamp_for(root)
    assert second != first
    (root / "pyproject.toml").write_bytes(PYPROJECT + b"# comment\n")
    assert run_py.stamp_for(root) not in (first, second)


def test_needs_install():
    stamp = run_py.compute_stamp(PYPROJECT, CONSTRAINTS)
    assert run_py.needs_install(None, stamp)
    assert run_py.needs_install("", stamp)
    assert run_py.needs_install(run_py.compute_stamp(PYPROJECT, b""), stamp)
    assert not run_py.needs_install(stamp, stamp)
    assert not run_py.needs_install(stamp + "\n", stamp)


def test_stamp_roundtrip(tmp_path):
    assert run_py.read_stamp(tmp_path) is None
    run_py.write_stamp(tmp_path, "abc")
    assert (tmp_path / ".workbench-stamp").exists()
    assert not run_py.needs_install(run_py.read_stamp(tmp_path), "abc")


# ------------------------------------------- setup, with subprocess faked out


class FakeSubprocess:
    def __init__(self, rc=0):
        self.rc = rc
        self.calls = []

    def call(self, argv, **kwargs):
        self.calls.append(list(argv))
        return self.rc


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    root = _project(tmp_path / "repo")
    venv = tmp_path / "venv"
    venv.mkdir()
    monkeypatch.setattr(run_py, "_venv_python_works", lambda v: True)
    fake = FakeSubprocess()
    monkeypatch.setattr(run_py, "subprocess", fake)
    return root, venv, fake


def test_setup_installs_then_skips(fake_env, capsys):
    root, venv, fake = fake_env
    run_py.setup(root=root, venv=venv)
    assert len(fake.calls) == 1
    argv = fake.calls[0]
    assert argv[1:] == ["-m", "pip", "install", "-c", "constraints.txt", "-e", ".[dev]"]
    assert run_py.read_stamp(venv).strip() == run_py.stamp_for(root)

    run_py.setup(root=root, venv=venv)  # nothing changed: no pip
    assert len(fake.calls) == 1

    (root / "constraints.txt").write_bytes(CONSTRAINTS + b"plotly==7.1.0\n")
    run_py.setup(root=root, venv=venv)  # constraints changed: reinstall
    assert len(fake.calls) == 2
    assert "[run.py] installing" in capsys.readouterr().out


def test_failed_pip_exits_nonzero_and_records_nothing(fake_env):
    root, venv, fake = fake_env
    fake.rc = 1
    with pytest.raises(SystemExit) as exc:
        run_py.setup(root=root, venv=venv)
    assert exc.value.code == 1
    assert run_py.read_stamp(venv) is None


def test_venv_location_can_be_overridden(tmp_path):
    assert run_py.venv_dir(env={}, root=tmp_path) == tmp_path / ".venv"
    custom = tmp_path / "elsewhere"
    assert run_py.venv_dir(env={"WORKBENCH_VENV": str(custom)}, root=tmp_path) == custom


# ------------------------------------------------------- the pytest command


def _argv(*user_args, cwd=None):
    return run_py.pytest_argv("PY", list(user_args), ROOT, cwd)


def test_default_pytest_argv():
    argv = _argv()
    assert argv[:3] == ["PY", "-m", "pytest"]
    assert argv[argv.index("-n") + 1] == "2"
    assert argv[argv.index("--dist") + 1] == "loadfile"
    assert "--nbval-lax" in argv
    sanitize = argv[argv.index("--nbval-sanitize-with") + 1]
    assert Path(sanitize) == ROOT / "notebooks" / "sanitize.cfg"
    assert argv[-2:] == ["tests", "notebooks"]


def test_filters_keep_default_paths():
    argv = _argv("-k", "tokenizer", "-x")
    assert argv[-5:] == ["-k", "tokenizer", "-x", "tests", "notebooks"]
    # an option value that happens to be a directory name is not a path
    assert _argv("-k", "tests")[-2:] == ["tests", "notebooks"]
    assert _argv("--ignore", "tests/test_run_py.py")[-2:] == ["tests", "notebooks"]


def test_user_paths_replace_defaults():
    argv = _argv("tests/test_run_py.py", "-q")
    assert "tests/test_run_py.py" in argv
    assert "notebooks" not in argv and argv[-1] == "-q"
    assert "--nbval-lax" in argv and "loadfile" in argv
    argv = _argv("tests/test_run_py.py::test_default_pytest_argv")
    assert argv[-1] == "tests/test_run_py.py::test_default_pytest_argv"
    assert _argv("notebooks")[-1] == "notebooks" and "tests" not in _argv("notebooks")
    # a path that does not exist is still the user's choice: pytest reports it
    assert _argv("tests/test_nope.py")[-1] == "tests/test_nope.py"


def test_user_paths_from_another_directory_become_absolute(tmp_path):
    (tmp_path / "test_mine.py").write_text("")
    argv = _argv("test_mine.py", cwd=tmp_path)
    assert argv[-1] == str(tmp_path / "test_mine.py")
    assert "tests" not in argv


@pytest.mark.parametrize("user", [["-n", "0"], ["-n0"], ["--numprocesses=4"], ["--pdb"],
                                  ["-p", "no:xdist"], ["--dist", "load"]])
def test_user_can_take_over_distribution(user):
    argv = _argv(*user)
    assert "loadfile" not in argv
    assert argv.count("-n") == user.count("-n")
    assert "--nbval-lax" in argv


def test_pytest_env():
    base = {"PATH": "/bin", "OMP_NUM_THREADS": "8"}
    env = run_py.pytest_env(base)
    assert base == {"PATH": "/bin", "OMP_NUM_THREADS": "8"}  # not mutated
    expected = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "WORKBENCH_PRESET": "ci",
        "PYTHONHASHSEED": "0",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "PATH": "/bin",
    }
    assert {k: env[k] for k in expected} == expected
    assert run_py.pytest_env({"WORKBENCH_PRESET": "cpu"})["WORKBENCH_PRESET"] == "cpu"


def test_default_run_has_two_phases_browser_tests_last():
    phase1, phase2 = run_py.phase_commands("PY", [], ROOT)
    assert phase1 == _argv()
    assert phase1[phase1.index("--ignore") + 1] == str(ROOT / "tests" / "live")
    assert phase1[-2:] == ["tests", "notebooks"] and "-n" in phase1
    assert phase2[:3] == ["PY", "-m", "pytest"] and phase2[-1] == "tests/live"
    # the student edition and the browser tests side by side, each file whole in one worker
    assert phase2[phase2.index("-n") + 1] == "2" and phase2[phase2.index("--dist") + 1] == "loadfile"
    assert "--nbval-lax" not in phase2


def test_filters_apply_to_both_phases():
    phase1, phase2 = run_py.phase_commands("PY", ["-k", "widget", "-x"], ROOT)
    assert phase1[-5:] == ["-k", "widget", "-x", "tests", "notebooks"]
    assert phase2[-4:] == ["-k", "widget", "-x", "tests/live"]
    # a user who takes over distribution keeps it in phase 2 too (no conflicting -n 2)
    phase2 = run_py.phase_commands("PY", ["-n", "0"], ROOT)[1]
    assert "loadfile" not in phase2 and phase2[-3:] == ["-n", "0", "tests/live"]


def test_named_paths_run_in_one_phase():
    phases = run_py.phase_commands("PY", ["tests/test_run_py.py", "-q"], ROOT)
    assert len(phases) == 1 and phases[0] == _argv("tests/test_run_py.py", "-q")
    assert "--ignore" not in phases[0]
    only_live = run_py.phase_commands("PY", ["tests/live"], ROOT)
    assert len(only_live) == 1 and only_live[0][-1] == "tests/live"


@pytest.mark.parametrize("codes, user_args, expected", [
    ([0, 0], [], 0), ([1, 0], [], 1), ([0, 1], [], 1), ([5, 0], [], 5), ([5, 0], ["-k", "x"], 5),
    ([0, 5], [], 5), ([0, 5], ["-k", "tokenizer"], 0), ([2], [], 2), ([0], ["tests"], 0),
])
def test_exit_code_is_nonzero_if_either_phase_fails(codes, user_args, expected):
    assert run_py.phases_exit_code(codes, user_args) == expected


def test_cmd_test_runs_both_phases_with_one_fresh_cache(monkeypatch, tmp_path):
    calls = []

    def fake_child(argv, cwd=None, env=None):
        calls.append((argv, env[run_py.CACHE_ENV], Path(env[run_py.CACHE_ENV]).is_dir()))
        return 0 if len(calls) == 1 else 1

    monkeypatch.setattr(run_py, "setup", lambda: "PY")
    monkeypatch.setattr(run_py, "run_child", fake_child)
    monkeypatch.setattr(run_py, "find_chromium", lambda env=None: None)
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(run_py.CACHE_ENV, raising=False)
    assert run_py.cmd_test([]) == 1  # phase 2 failed
    assert len(calls) == 2 and calls[0][1] == calls[1][1] and calls[0][2]
    assert not Path(calls[0][1]).exists()  # the run's own cache is removed afterwards
    calls.clear()
    monkeypatch.setenv(run_py.CACHE_ENV, str(tmp_path))
    assert run_py.cmd_test(["tests/test_run_py.py"]) == 0
    assert len(calls) == 1 and calls[0][1] == str(tmp_path) and tmp_path.is_dir()


def test_chromium_hint_is_printed_when_chromium_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(run_py, "setup", lambda: "PY")
    monkeypatch.setattr(run_py, "run_child", lambda argv, cwd=None, env=None: 0)
    monkeypatch.setattr(run_py, "find_chromium", lambda env=None: None)
    monkeypatch.chdir(ROOT)
    assert run_py.cmd_test([]) == 0
    out = capsys.readouterr().out
    assert out.count("apt-get install chromium") == 1
    monkeypatch.setattr(run_py, "find_chromium", lambda env=None: "/usr/bin/chromium")
    run_py.cmd_test([])
    assert "apt-get install chromium" not in capsys.readouterr().out


# ------------------------------------------------- things run.py relies on


def test_run_py_uses_only_the_standard_library():
    tree = ast.parse((ROOT / "run.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    assert names - set(sys.stdlib_module_names) == set()


def test_sanitize_file_parses_and_compiles():
    text = (ROOT / "notebooks" / "sanitize.cfg").read_text()
    # the same parse nbval uses (nbval.plugin.get_sanitize_patterns)
    pairs = re.findall("^regex: (.*)$\n^replace: (.*)$", text, flags=re.MULTILINE)
    assert len(pairs) >= 10
    assert len(pairs) == text.count("\nregex: ")  # every regex has its replace line
    for regex, _ in pairs:
        re.compile(regex)


def test_flags_exist_in_installed_plugins():
    """The options run.py passes are known to this pytest/xdist/nbval."""
    help_text = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout
    flags = {a.split("=")[0] for a in _argv() if a.startswith("--")} | {"-n"}
    missing = {f for f in flags if not re.search(rf"(^|[\s,]){re.escape(f)}[\s=,]", help_text, re.M)}
    assert not missing, f"pytest --help does not list {missing}"
    assert "loadfile" in help_text
