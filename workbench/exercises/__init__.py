"""Exercises: the learner writes a function, ``check`` runs it against the library's reference.

In a notebook::

    from workbench.exercises import check

    def cross_entropy(logits, targets):
        # BEGIN SOLUTION
        ...
        # END SOLUTION

    check("00.1", cross_entropy)

prints one line per case (passed, or what differs and, when it recognises one, which common
mistake produces that output) and never raises. The notebooks in the repository are the teacher
edition, with the solutions in place between the markers; ``workbench student-edition DIR``
(``editions.py``) writes the student edition, where each solution becomes
``raise NotImplementedError`` and ``check`` answers "not yet".

Each notebook's exercises live in one file: ``tour.py`` (00), ``tokens.py`` (01),
``gpt_parts.py`` (02), ``attention_variants.py`` (03), ``masked_lm.py`` (04), ``objectives_compared.py``
(05), ``diffusion.py`` (06); the machinery is in ``checking.py``.
"""
from __future__ import annotations

from typing import Callable

from .checking import Case, CheckReport, Exercise, Mistake, compare, run_check

_REGISTRY: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Exercise:
    """Add an exercise to the registry under its id (each id once)."""
    if exercise.id in _REGISTRY:
        raise ValueError(f"exercise {exercise.id} is registered twice")
    _REGISTRY[exercise.id] = exercise
    return exercise


def exercises() -> dict[str, Exercise]:
    """Every registered exercise, by id."""
    _load_all()
    return dict(_REGISTRY)


def get(exercise_id: str) -> Exercise:
    _load_all()
    if exercise_id not in _REGISTRY:
        raise KeyError(f"no exercise {exercise_id!r}; the exercises are {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[exercise_id]


def check(exercise_id: str, function: Callable) -> CheckReport:
    """Check ``function`` against exercise ``exercise_id`` and print one line per case. Never raises."""
    report = run_check(get(exercise_id), function)
    print(report)
    return report


def _load_all() -> None:
    # each module registers its exercises
    from . import attention_variants, diffusion, gpt_parts, masked_lm, objectives_compared, tokens, tour  # noqa: F401


__all__ = ["Case", "CheckReport", "Exercise", "Mistake", "check", "compare", "exercises", "get", "register",
           "run_check"]
