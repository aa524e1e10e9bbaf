#!/usr/bin/env python3
"""LM Workbench launcher: one command sets everything up, then runs it.

    python3 run.py lab [jupyter args]   set up, then open JupyterLab on notebooks/
                                        (e.g. --no-browser --ip 0.0.0.0 --allow-root)
    python3 run.py tour [args]          set up, then run `workbench tour` (headless)
    python3 run.py test [pytest args]   set up, then run the unit tests and every
                                        notebook under nbval with the `ci` preset,
                                        then the student edition and the browser tests (tests/live)
    python3 run.py bench [args]         set up, then run `workbench bench`
    python3 run.py warm [--preset P]    set up, then run every notebook once so that all they
                                        train is in the training cache (no waiting in class)
    python3 run.py student DIR          set up, then write the student edition of the
                                        notebooks (solutions replaced by stubs) into DIR
    python3 run.py publish [notebooks]  set up (plus kaleido), then execute the notebooks
                                        under the `cpu` preset and save their outputs
                                        with static figures (needs Chrome or Chromium)
    python3 run.py setup [--force]      only create/update the virtual environment

"Set up" means: create a virtual environment in .venv (or in $WORKBENCH_VENV)
if it is missing, and `pip install -c constraints.txt -e ".[dev]"` into it.
Nothing is installed or registered outside that environment (no global
Jupyter kernel). A stamp file, .venv/.workbench-stamp, records a hash of
pyproject.toml and constraints.txt, so later calls skip pip entirely unless
one of those files changed.

This file uses only the standard library and runs on Python 3.10+.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
STAMP_NAME = ".workbench-stamp"
STAMP_FORMAT = "1"  # bump to force every existing venv to reinstall once
MIN_PYTHON = (3, 10)

# Environment for `run.py test`. Forced values: the test run must be quiet,
# offline and reproducible whatever the caller's shell has.
TEST_ENV_FORCED = {
    "HF_HUB_OFFLINE": "1",  # a hub miss fails in ~3 s instead of ~27 s of retries
    "HF_DATASETS_OFFLINE": "1",
    "TQDM_DISABLE": "1",  # progress bars are noise in CI logs and notebook outputs
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "PYTHONHASHSEED": "0",
    "MPLBACKEND": "Agg",
    # Tests run in 2 pytest-xdist workers (each notebook also gets its own
    # kernel, which inherits this). On a 2-core machine two processes with
    # 2 intra-op threads each oversubscribe the CPU and a torch step can slow
    # down 10-40x; one thread per process degrades gracefully.
    "OMP_NUM_THREADS": "1",
}
# Defaults for `run.py test`: the caller may override them
# (e.g. `WORKBENCH_PRESET=cpu python3 run.py test`).
TEST_ENV_DEFAULTS = {"WORKBENCH_PRESET": "ci"}

TEST_WORKERS = "2"
DEFAULT_TEST_PATHS = ("tests", "notebooks")
# Phase 2 of `run.py test`: the student edition run top to bottom, and the tests that drive
# JupyterLab in a browser (after phase 1, so they reuse the training cache that phase 1's notebooks
# filled; the two files side by side, each in one worker).
LIVE_TEST_PATH = "tests/live"
CACHE_ENV = "WORKBENCH_CACHE"  # root of the token and training caches (workbench/train/cache.py)
CHROMIUM_HINT = ("browser tests (tests/live) skipped: Chromium not found; "
                 "install Debian's chromium: apt-get install chromium")
SANITIZE_FILE = Path("notebooks") / "sanitize.cfg"
# A hung notebook cell should fail CI, not stall it for nbval's default 2000 s. This is a
# hang guard, not a speed test: notebooks/conftest.py also waits up to this long for a
# finished cell's outputs (nbval's fixed 5 s output gap is gone).
CELL_TIMEOUT_S = "600"

# pytest options that take their value as the *next* argument; used so that
# e.g. `-k tests` or `--ignore tests/x.py` is not mistaken for a test path.
PYTEST_OPTIONS_WITH_VALUE = frozenset(
    """
    -k -m -p -o -c -n -W -r --deselect --ignore --ignore-glob --rootdir
    --confcutdir --basetemp --maxfail --durations --durations-min --tb
    --junitxml --junit-xml --junit-prefix --override-ini --capture
    --import-mode --log-level --log-file --log-file-level --log-format
    --log-date-format --log-cli-level --log-cli-format --log-cli-date-format
    --log-file-format --log-file-date-format --log-disable --show-capture
    --config-file --report-log --dist --numprocesses
    --maxprocesses --max-worker-restart --tx --rsyncdir --rsyncignore
    --nbval-sanitize-with --sanitize-with --nbval-kernel-name
    --nbval-cell-timeout --nbval-kernel-startup-timeout --cov-report
    """.split()
)
# User options that replace our `-n 2 --dist loadfile` (the user takes over
# distribution, or asked for something xdist cannot do such as --pdb).
_XDIST_OVERRIDES = ("-n", "--numprocesses", "--dist", "-d", "--pdb", "--trace")


def log(message: str) -> None:
    print(f"[run.py] {message}", flush=True)


# --------------------------------------------------------------------------
# Where things are


def venv_dir(env=None, root: Path = ROOT) -> Path:
    """The virtual environment: $WORKBENCH_VENV if set, else <repo>/.venv."""
    env = os.environ if env is None else env
    custom = env.get("WORKBENCH_VENV")
    if custom:
        return Path(custom).expanduser().resolve()
    return root / ".venv"


def venv_bin(venv: Path, name: str) -> Path:
    """An executable inside the venv (bin/ on POSIX, Scripts\\*.exe on Windows)."""
    if os.name == "nt":
        return venv / "Scripts" / f"{name}.exe"
    return venv / "bin" / name


def venv_python(venv: Path) -> Path:
    return venv_bin(venv, "python")


# --------------------------------------------------------------------------
# The stamp: skip pip when nothing relevant changed (pure functions)


def compute_stamp(pyproject: bytes, constraints: bytes, location: str = "") -> str:
    """Hash of the files that decide what gets installed.

    `location` is the project root: an editable install points at one
    checkout, so a venv reused from another place must reinstall.
    Each part is length-prefixed so moving text from one file to the other
    cannot produce the same hash.
    """
    h = hashlib.sha256()
    h.update(f"workbench-stamp-v{STAMP_FORMAT}\n".encode())
    for name, data in (
        (b"pyproject.toml", pyproject),
        (b"constraints.txt", constraints),
        (b"location", location.encode()),
    ):
        h.update(name + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def needs_install(recorded: str | None, expected: str) -> bool:
    """True when there is no stamp or it differs from the expected one."""
    return recorded is None or recorded.strip() != expected


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def stamp_for(root: Path = ROOT) -> str:
    return compute_stamp(
        _read_bytes(root / "pyproject.toml"),
        _read_bytes(root / "constraints.txt"),
        str(root.resolve()),
    )


def read_stamp(venv: Path) -> str | None:
    try:
        return (venv / STAMP_NAME).read_text()
    except OSError:
        return None


def write_stamp(venv: Path, stamp: str) -> None:
    tmp = venv / (STAMP_NAME + ".tmp")
    tmp.write_text(stamp + "\n")
    os.replace(tmp, venv / STAMP_NAME)


# --------------------------------------------------------------------------
# Setup


def _fail(message: str, code: int = 1) -> None:
    log(message)
    raise SystemExit(code)


def create_venv(venv: Path) -> None:
    if venv.exists() and any(venv.iterdir()):
        if not (venv / "pyvenv.cfg").exists():
            _fail(
                f"{venv} exists but is not a virtual environment; "
                "move it away or point WORKBENCH_VENV elsewhere."
            )
        log(f"{venv} has no working Python; recreating it")
        import shutil

        shutil.rmtree(venv)
    log(f"creating virtual environment in {_show(venv)}")
    # --clear is not needed: the directory is empty or absent here.
    rc = subprocess.call([sys.executable, "-m", "venv", str(venv)])
    if rc != 0 or not venv_python(venv).exists():
        hint = ""
        if sys.platform.startswith("linux"):
            ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
            hint = (
                f" On Debian/Ubuntu the venv module is packaged separately: "
                f"`sudo apt install python{ver}-venv`, then run this again."
            )
        _fail(f"could not create the virtual environment (exit {rc}).{hint}", rc or 1)


def _venv_python_works(venv: Path) -> bool:
    py = venv_python(venv)
    if not py.exists():
        return False
    try:
        return subprocess.call([str(py), "-c", "pass"]) == 0
    except OSError:
        return False


def pip_install_argv(python: Path, root: Path = ROOT) -> list[str]:
    argv = [str(python), "-m", "pip", "install"]
    if (root / "constraints.txt").exists():
        argv += ["-c", "constraints.txt"]
    return argv + ["-e", ".[dev]"]


def setup(
    root: Path = ROOT, venv: Path | None = None, force: bool = False, verbose: bool = False
) -> Path:
    """Make sure the venv exists and has the project installed; return its python."""
    venv = venv_dir(root=root) if venv is None else venv
    if not _venv_python_works(venv):
        create_venv(venv)
    expected = stamp_for(root)
    if not force and not needs_install(read_stamp(venv), expected):
        if verbose:
            log(f"environment is up to date: {_show(venv)}")
        return venv_python(venv)

    (venv / STAMP_NAME).unlink(missing_ok=True)
    argv = pip_install_argv(venv_python(venv), root)
    log(
        "installing LM Workbench and its dependencies "
        "(first time: a few minutes; torch is large)"
    )
    log("$ " + " ".join(_show(a) for a in argv))
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")  # upgrade nothing, nag about nothing
    rc = subprocess.call(argv, cwd=root, env=env)
    if rc != 0:
        _fail(
            f"pip install failed (exit {rc}); the error is in pip's output above. "
            "Nothing was recorded, so the next run will retry the install.",
            rc,
        )
    write_stamp(venv, expected)
    log(f"environment ready: {_show(venv)}")
    return venv_python(venv)


def _show(path) -> str:
    """A path relative to the current directory when that is shorter."""
    s = str(path)
    try:
        rel = os.path.relpath(s)
    except ValueError:  # another drive on Windows
        return s
    return rel if len(rel) < len(s) and not rel.startswith("..") else s


# --------------------------------------------------------------------------
# `test`: the pytest command line and environment (pure functions)


def _looks_like_path(arg: str, cwd: Path) -> bool:
    if arg.startswith("-"):
        return False
    base = arg.split("::", 1)[0]
    if (cwd / base).exists():
        return True
    # Not there, but clearly meant as one: let pytest report "not found".
    return "::" in arg or "/" in base or os.sep in base or base.endswith((".py", ".ipynb"))


def split_paths(args: list[str], cwd: Path) -> tuple[list[int], bool]:
    """Indexes of the test-path arguments in `args` and whether any exist."""
    indexes = []
    skip_next = False
    for i, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if arg in PYTEST_OPTIONS_WITH_VALUE:
            skip_next = True
            continue
        if _looks_like_path(arg, cwd):
            indexes.append(i)
    return indexes, bool(indexes)


def _user_controls_xdist(args: list[str]) -> bool:
    for i, arg in enumerate(args):
        if arg.split("=", 1)[0] in _XDIST_OVERRIDES:
            return True
        if arg.startswith("-n") and not arg.startswith("--"):  # -n0, -nauto
            return True
        if arg == "-pno:xdist" or (arg == "-p" and args[i + 1 : i + 2] == ["no:xdist"]):
            return True
    return False


def pytest_argv(
    python,
    user_args: list[str] | None = None,
    root: Path = ROOT,
    cwd: Path | None = None,
) -> list[str]:
    """The command `run.py test` runs (from the repo root).

    Default paths are `tests notebooks`; if the user names paths, those are
    used instead (made absolute when given relative to another directory).
    """
    user_args = list(user_args or [])
    cwd = root if cwd is None else Path(cwd)
    argv = [str(python), "-m", "pytest"]
    if not _user_controls_xdist(user_args):
        # loadfile: one notebook's cells must all run in the same worker
        # (and the same kernel), in order; the default `load` splits them.
        argv += ["-n", TEST_WORKERS, "--dist", "loadfile"]
    argv += [
        # Every cell must run without error; only cells marked
        # `# NBVAL_CHECK_OUTPUT` have outputs compared, because notebooks are
        # committed with outputs from the larger `cpu` preset.
        "--nbval-lax",
        # Run notebooks in this venv's Python whatever kernel name the
        # notebook metadata carries (no globally registered kernel needed).
        "--nbval-current-env",
        f"--nbval-cell-timeout={CELL_TIMEOUT_S}",
        "--nbval-sanitize-with",
        str(root / SANITIZE_FILE),
    ]
    indexes, has_paths = split_paths(user_args, cwd)
    if cwd.resolve() != root.resolve():
        for i in indexes:
            user_args[i] = str(cwd / user_args[i])
    if not has_paths:  # the browser tests run afterwards, on their own (live_pytest_argv)
        argv += ["--ignore", str(root / LIVE_TEST_PATH)]
    argv += user_args
    if not has_paths:
        argv += list(DEFAULT_TEST_PATHS)
    return argv


def live_pytest_argv(python, user_args: list[str] | None = None, root: Path = ROOT) -> list[str]:
    """Phase 2: the student edition and the browser tests, side by side in 2 workers, one file each (loadfile:
    the browser tests share one JupyterLab and one browser, so all of them run in the same worker)."""
    user_args = list(user_args or [])
    argv = [str(python), "-m", "pytest"]
    if not _user_controls_xdist(user_args):
        argv += ["-n", TEST_WORKERS, "--dist", "loadfile"]
    return argv + user_args + [LIVE_TEST_PATH]


def phase_commands(python, user_args: list[str] | None = None, root: Path = ROOT,
                cwd: Path | None = None) -> list[list[str]]:
    """The pytest commands `run.py test` runs, in order.

    Without paths: phase 1 (unit tests + notebooks, 2 xdist workers, tests/live left out), then
    phase 2 (tests/live, 2 workers, a file each). With paths named by the caller: just those, in one phase.
    """
    user_args = list(user_args or [])
    cwd = root if cwd is None else Path(cwd)
    phases = [pytest_argv(python, user_args, root, cwd)]
    if not split_paths(user_args, cwd)[1]:
        phases.append(live_pytest_argv(python, user_args, root))
    return phases


def find_chromium(env=None) -> str | None:
    """The Chromium the browser tests use (same search as tests/live), or None."""
    import shutil

    env = os.environ if env is None else env
    for candidate in (env.get("WORKBENCH_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def phases_exit_code(codes: list[int], user_args: list[str] | None = None) -> int:
    """One exit code for the phases: the first failure's, else 0.

    Exit 5 (no tests collected) is a failure, except in phase 2 when the caller's own filters
    (`-k`, `-m`, ...) matched nothing under tests/live.
    """
    for i, code in enumerate(codes):
        if code == 5 and i == 1 and user_args:
            continue
        if code != 0:
            return code
    return 0


def pytest_env(base=None) -> dict:
    """The environment for the pytest child (a copy; `base` is not changed)."""
    env = dict(os.environ if base is None else base)
    env.update(TEST_ENV_FORCED)
    for key, value in TEST_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


# --------------------------------------------------------------------------
# Running things inside the venv


def run_child(argv: list[str], cwd: Path = ROOT, env=None) -> int:
    """Run a command, wait for it, return its exit code.

    Ctrl-C in a terminal reaches the child as well (same process group), so
    we keep waiting and let the child decide (pytest prints its summary).
    SIGTERM sent to run.py alone (`timeout`, a CI runner) is passed on, so
    the child never outlives us.
    """
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env)
    except OSError as e:
        _fail(f"could not start {argv[0]}: {e}")
    import signal

    def forward(signum, frame):
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                rc = proc.wait()
                return 128 - rc if rc < 0 else rc  # killed by signal N: 128+N, like a shell
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def replace_with(argv: list[str], cwd: Path | None = None, env=None) -> int:
    """Become the command (POSIX exec): signals and the exit code are its own.

    Used for long-running interactive commands (JupyterLab, the tour), where
    a wrapper process would only get in the way of Ctrl-C and `kill`.
    """
    if os.name == "nt":  # exec on Windows spawns and exits; keep a parent
        return run_child(argv, cwd=cwd, env=env)
    if cwd is not None:
        os.chdir(cwd)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(argv[0], argv, dict(os.environ) if env is None else env)
    except OSError as e:
        _fail(f"could not start {argv[0]}: {e}")
    return 1  # not reached


def cmd_setup(args: list[str]) -> int:
    unknown = [a for a in args if a != "--force"]
    if unknown:
        _fail(f"setup takes only --force, not {' '.join(unknown)}", 2)
    setup(force="--force" in args, verbose=True)
    return 0


def cmd_lab(args: list[str]) -> int:
    python = setup()
    argv = [str(python), "-m", "jupyterlab"]
    if not any(a.startswith(("--notebook-dir", "--ServerApp.root_dir")) for a in args):
        argv.append(f"--ServerApp.root_dir={ROOT / 'notebooks'}")
    argv += args
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in args:
        log("running as root: JupyterLab will refuse unless you add --allow-root")
    env = dict(os.environ)
    # Prefer this venv's kernels and settings over any user-level ones.
    env.setdefault("JUPYTER_PREFER_ENV_PATH", "1")
    log("starting JupyterLab on notebooks/ (Ctrl-C to stop)")
    return replace_with(argv, env=env)


def _workbench(subcommand: str, args: list[str]) -> int:
    setup()
    script = venv_bin(venv_dir(), "workbench")
    log(f"$ workbench {subcommand} {' '.join(args)}".rstrip())
    return replace_with([str(script), subcommand, *args])


def cmd_tour(args: list[str]) -> int:
    return _workbench("tour", args)


def cmd_bench(args: list[str]) -> int:
    return _workbench("bench", args)


def cmd_warm(args: list[str]) -> int:
    return _workbench("warm", args)


def cmd_student(args: list[str]) -> int:
    return _workbench("student-edition", args)


def cmd_publish(args: list[str]) -> int:
    python = setup()
    if subprocess.call([str(python), "-c", "import kaleido"], stderr=subprocess.DEVNULL) != 0:
        log("installing the `publish` extra (kaleido renders figures to PNG)")
        rc = subprocess.call([str(python), "-m", "pip", "install", "-q", "-c", "constraints.txt", "-e",
                              ".[dev,publish]"], cwd=ROOT)
        if rc != 0:
            _fail(f"pip install of the publish extra failed (exit {rc}); see pip's output above", rc)
    log("$ python -m workbench.publish " + " ".join(args))
    return replace_with([str(python), "-m", "workbench.publish", *args], cwd=ROOT)


def cmd_test(args: list[str]) -> int:
    import shutil
    import tempfile

    python = setup()
    phases = phase_commands(python, args, ROOT, Path.cwd())
    env = pytest_env()
    own_cache = None
    if not os.environ.get(CACHE_ENV):
        # A fresh cache for this run: phase 2 reuses what phase 1's notebooks trained, and no
        # run ever reuses a stale cache from an earlier one.
        own_cache = tempfile.mkdtemp(prefix="workbench-test-cache-")
        env[CACHE_ENV] = own_cache
    log(
        f"running tests with WORKBENCH_PRESET={env['WORKBENCH_PRESET']}, "
        f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, {CACHE_ENV}={env[CACHE_ENV]}, offline"
    )
    codes = []
    try:
        for i, argv in enumerate(phases, start=1):
            if len(phases) > 1:
                what = "unit tests and notebooks" if i == 1 else "student edition and browser tests"
                log(f"phase {i} of {len(phases)}: {what}")
                if i == 2 and find_chromium(env) is None:
                    log(CHROMIUM_HINT)
            log("$ " + " ".join(_show(a) for a in argv))
            rc = run_child(argv, cwd=ROOT, env=env)
            if rc == 5:
                log("pytest collected no tests (exit 5): check the paths and -k/-m filters")
            codes.append(rc)
            if rc == 2 or rc >= 128:  # interrupted (Ctrl-C, a signal) or a usage error: stop here
                break
    finally:
        if own_cache is not None:
            shutil.rmtree(own_cache, ignore_errors=True)
    rc = phases_exit_code(codes, args)
    if len(phases) > 1:
        log("exit codes: " + ", ".join(f"phase {i} {c}" for i, c in enumerate(codes, start=1)) + f" -> {rc}")
    return rc


COMMANDS = {
    "setup": cmd_setup,
    "lab": cmd_lab,
    "tour": cmd_tour,
    "test": cmd_test,
    "bench": cmd_bench,
    "warm": cmd_warm,
    "student": cmd_student,
    "publish": cmd_publish,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if sys.version_info < MIN_PYTHON:
        _fail(
            "LM Workbench needs Python %d.%d or newer; this is %s."
            % (MIN_PYTHON + (sys.version.split()[0],))
        )
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(
            f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)} "
            "(python3 run.py --help explains them)",
            2,
        )
    return COMMANDS[command](rest)


if __name__ == "__main__":
    raise SystemExit(main())
