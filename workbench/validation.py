"""One place for the checks behind every config and API argument.

Each check raises a single ``ValueError`` that names the field, the value
it got, and what is allowed, so a learner can fix it without reading code.
"""
from __future__ import annotations

import math
from typing import Iterable


def is_number(value) -> bool:
    """A finite int or float (not a bool): what every numeric knob must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(owner: str, field: str, value, *, allow_zero: bool = False) -> None:
    ok = is_number(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        need = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{owner}.{field}={value!r} is invalid: it must be {need}")


def check_int(owner: str, field: str, value, *, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"{owner}.{field}={value!r} is invalid: it must be an integer >= {minimum}"
        )


def check_range(owner: str, field: str, value, low: float, high: float, *,
                low_open: bool = False, high_open: bool = False) -> None:
    number = is_number(value)
    above = number and (value > low if low_open else value >= low)
    below = number and (value < high if high_open else value <= high)
    if not (above and below):
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(
            f"{owner}.{field}={value!r} is invalid: it must lie in {left}{low}, {high}{right}"
        )


def check_choice(owner: str, field: str, value, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(
            f"{owner}.{field}={value!r} is invalid: allowed values are {', '.join(map(repr, allowed))}"
        )
