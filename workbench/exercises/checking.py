"""Exercise checks: run a learner's function against the library's reference, one line per case.

An :class:`Exercise` names a reference implementation (from the library), a list of test cases
(shapes, edge cases, random inputs; built lazily and deterministically) and known mistakes:
plausible wrong answers, written as code, such as a mask that is off by one or a missing
``1/sqrt(d)``. :func:`check` runs the learner's function on every case and prints

    Exercise 00.1 · cross-entropy from logits  (easy, ~5 min)
      ✔ case 1, 3 positions, vocabulary 5: passed
      ✘ case 2, 2 x 4 positions: first difference at index (0, 1): expected 2.1357, got 2.3191
        (this is what happens when you forget to subtract the log of the softmax's denominator)
      …
      1 of 4 cases passed

and never raises: a function that still raises ``NotImplementedError`` (the stub of the student
edition) gets one "not yet" line, any other exception one line with its type, message and the line
of the learner's code that raised it. When the learner's output equals a known mistake's output on
a failing case, the line says which mistake that is.

The comparison (:func:`compare`) handles tensors, arrays, numbers, strings, lists, tuples and dicts,
and names the first position that differs.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

PASS, FAIL, NOT_YET = "✔", "✘", "…"


@dataclass
class Case:
    """One input to try: ``label`` says what it is (shown to the learner); ``args`` are passed as-is."""

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass
class Mistake:
    """A plausible wrong answer, as code, and the sentence that explains it to the learner."""

    explanation: str
    function: Callable


@dataclass
class Exercise:
    """A learner's task: write ``function_name`` so that it agrees with ``reference`` on every case."""

    id: str                                # "00.1": notebook number, exercise number
    title: str
    function_name: str                     # the name of the stub in the notebook
    difficulty: str                        # "easy" | "medium" | "hard"
    minutes: int                           # expected minutes for a learner
    reference: Callable
    cases: Callable[[], Sequence[Case]]    # built on demand, deterministic
    mistakes: Sequence[Mistake] = ()
    rtol: float = 1e-4
    atol: float = 1e-5

    def __post_init__(self):
        if self.difficulty not in ("easy", "medium", "hard"):
            raise ValueError(f"Exercise {self.id}: difficulty must be easy, medium or hard, not {self.difficulty!r}")


@dataclass
class CaseResult:
    label: str
    status: str          # PASS, FAIL or NOT_YET
    message: str = ""    # what differs, or what was raised


@dataclass
class CheckReport:
    """What :func:`check` found. Displays as nothing in Jupyter (check() already printed the lines)."""

    exercise: Exercise
    results: list

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.status == PASS for r in self.results)

    @property
    def not_yet(self) -> bool:
        return any(r.status == NOT_YET for r in self.results)

    @property
    def n_passed(self) -> int:
        return sum(r.status == PASS for r in self.results)

    def lines(self) -> list:
        e = self.exercise
        out = [f"Exercise {e.id} · {e.title}  ({e.difficulty}, ~{e.minutes} min)"]
        if self.not_yet:
            out.append(f"  {NOT_YET} not yet: {self.results[0].message}")
            return out
        for i, r in enumerate(self.results, 1):
            line = f"  {r.status} case {i}, {r.label}: " + ("passed" if r.status == PASS else r.message)
            out.append(line)
        n = len(self.results)
        out.append(f"  all {n} cases passed" if self.passed else f"  {self.n_passed} of {n} cases passed")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def __repr__(self) -> str:
        state = "not yet" if self.not_yet else f"{self.n_passed}/{len(self.results)} passed"
        return f"<CheckReport {self.exercise.id}: {state}>"

    def _ipython_display_(self) -> None:  # the lines were printed by check(); show nothing twice
        pass


# --------------------------------------------------------------------------- comparison
def _to_array(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value)


def _fmt(x) -> str:
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g}"
    if isinstance(x, np.ndarray) and x.shape == ():
        return _fmt(x.item())
    return repr(x.item() if isinstance(x, np.generic) else x)


def _is_arraylike(x) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def compare(expected, got, rtol: float = 1e-4, atol: float = 1e-5, where: str = "") -> Optional[str]:
    """None if ``got`` equals ``expected`` (numbers to rtol/atol), else one sentence naming the first difference."""
    at = f" at {where}" if where else ""
    if _is_arraylike(expected):
        if not (_is_arraylike(got) or isinstance(got, (list, tuple, int, float))):
            return f"expected a tensor of shape {tuple(expected.shape)}{at}, got {type(got).__name__}"
        e, g = _to_array(expected), _to_array(got)
        if e.shape != g.shape:
            return f"expected shape {tuple(e.shape)}{at}, got shape {tuple(g.shape)}"
        if e.dtype.kind in "biu" or g.dtype.kind == "b":
            bad = np.argwhere(e != g)
        else:
            if g.dtype.kind not in "biuf":
                return f"expected numbers{at}, got values of type {g.dtype}"
            g = g.astype(np.float64)
            e = e.astype(np.float64)
            same_nonfinite = (np.isnan(e) & np.isnan(g)) | (np.isinf(e) & (e == g))
            close = np.isclose(g, e, rtol=rtol, atol=atol) | same_nonfinite
            bad = np.argwhere(~close)
        if len(bad) == 0:
            return None
        index = tuple(int(i) for i in bad[0])
        if not index:  # a single number
            return f"expected {_fmt(e[index])}{at}, got {_fmt(g[index])}"
        shown = index if len(index) != 1 else index[0]
        where_index = f"index {shown}" + (f" of {where}" if where else "")
        message = f"first difference at {where_index}: expected {_fmt(e[index])}, got {_fmt(g[index])}"
        if e.size > 1:
            message += f" ({len(bad)} of {e.size} entries differ)"
        return message
    if isinstance(expected, bool) or expected is None:
        return None if got == expected and type(got) is type(expected) else \
            f"expected {expected!r}{at}, got {got!r}"
    if isinstance(expected, (int, float, np.number)):
        if _is_arraylike(got) and _to_array(got).size == 1:
            got = _to_array(got).item()
        if not isinstance(got, (int, float, np.number)) or isinstance(got, bool):
            return f"expected a number{at}, got {type(got).__name__} {got!r}"
        if isinstance(expected, (int, np.integer)) and float(got) != float(expected):
            return f"expected {expected}{at}, got {got}"
        if not math.isclose(float(got), float(expected), rel_tol=rtol, abs_tol=atol):
            return f"expected {_fmt(float(expected))}{at}, got {_fmt(float(got))}"
        return None
    if isinstance(expected, str):
        if not isinstance(got, str):
            return f"expected the string {expected!r}{at}, got {type(got).__name__} {got!r}"
        if got == expected:
            return None
        i = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
        return (f"expected {expected!r}{at}, got {got!r} (first difference at character {i}: "
                f"expected {expected[i:i + 1]!r}, got {got[i:i + 1]!r})")
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"expected a dict{at}, got {type(got).__name__}"
        if set(got) != set(expected):
            missing, extra = sorted(map(str, set(expected) - set(got))), sorted(map(str, set(got) - set(expected)))
            parts = ([f"missing keys {missing}"] if missing else []) + ([f"unexpected keys {extra}"] if extra else [])
            return f"{' and '.join(parts)}{at}"
        for key in expected:
            message = compare(expected[key], got[key], rtol, atol, where=f"key {key!r}")
            if message:
                return message
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) and not _is_arraylike(got):
            return f"expected a {type(expected).__name__} of {len(expected)} items{at}, got {type(got).__name__}"
        got = list(got.tolist() if _is_arraylike(got) else got)
        for i, (e, g) in enumerate(zip(expected, got)):
            message = compare(e, g, rtol, atol, where=f"item {i}")
            if message:
                return message
        if len(got) != len(expected):
            return f"expected {len(expected)} items{at}, got {len(got)}"
        return None
    return None if got == expected else f"expected {expected!r}{at}, got {got!r}"


# --------------------------------------------------------------------------- running a check
def _where_it_raised(error: BaseException) -> str:
    """'line N of your `name`' for the innermost frame outside the workbench's own files, if any."""
    frames = traceback.extract_tb(error.__traceback__)
    learner = [f for f in frames if "workbench/" not in f.filename.replace("\\", "/")]
    if not learner:
        return ""
    f = learner[-1]
    code = f" (`{f.line.strip()}`)" if f.line else ""
    return f", in {f.name} line {f.lineno}{code}"


def _copy(value):
    """Inputs are cloned per call, so a function that edits its arguments in place cannot spoil the reference."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _call(function, case: Case):
    return function(*_copy(case.args), **_copy(case.kwargs))


def run_check(exercise: Exercise, function: Callable) -> CheckReport:
    """Run ``function`` on every case of ``exercise`` and compare with the reference. Never raises."""
    name = getattr(function, "__name__", exercise.function_name)
    results = []
    for case in exercise.cases():
        expected = _call(exercise.reference, case)
        try:
            with torch.no_grad():
                got = _call(function, case)
        except NotImplementedError:
            return CheckReport(exercise, [CaseResult(case.label, NOT_YET,
                                                     f"`{name}` still raises NotImplementedError: "
                                                     "replace that line with your code and run its cell again")])
        except Exception as error:  # the learner's bug: one line, not a traceback
            results.append(CaseResult(case.label, FAIL,
                                      f"raised {type(error).__name__}: {error}{_where_it_raised(error)}"))
            continue
        if got is None and expected is not None:
            results.append(CaseResult(case.label, FAIL, "returned None: did you forget `return`?"))
            continue
        message = compare(expected, got, exercise.rtol, exercise.atol)
        if message is None:
            results.append(CaseResult(case.label, PASS))
            continue
        for mistake in exercise.mistakes:
            try:
                wrong = _call(mistake.function, case)
            except Exception:
                continue
            if compare(wrong, got, exercise.rtol, exercise.atol) is None:
                message += f" ({mistake.explanation})"
                break
        results.append(CaseResult(case.label, FAIL, message))
    return CheckReport(exercise, results)
