"""The one place for argument checks shared across FlexCal.

Every check returns the normalised value or raises ``ValueError``/``TypeError`` whose message
starts with the argument's name and shows the value received, e.g.
``"max_epochs: expected an integer >= 1, got 0"``. The CLI turns these into exit code 2 and
one line; the app shows them as they are.

Numpy only: importing this module never loads torch, pandas or plotly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "check_int",
    "check_float",
    "check_confidence",
    "check_fraction",
    "check_levels",
    "check_choice",
    "check_seed",
    "check_bool",
]


def _is_int(value: Any) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def _is_number(value: Any) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int within [minimum, maximum] (bounds optional, inclusive).

    Booleans and floats (even 3.0) are refused: an integer argument given as 3.5 or True is
    almost always a mistake worth naming.
    """
    if minimum is not None and maximum is not None:
        want = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an integer >= {minimum}"
    elif maximum is not None:
        want = f"an integer <= {maximum}"
    else:
        want = "an integer"
    if not _is_int(value):
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """A random seed: an integer >= 0."""
    return check_int(name, value, 0)


def check_float(
    name: str,
    value: Any,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval given by ``lo``/``hi`` (open ends optional)."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    want = f"a number in {left}{lo:g}, {hi:g}{right}"
    if not _is_number(value):
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    x = float(value)
    if math.isnan(x) or (math.isinf(x) and not (x == hi == math.inf and not hi_open)):
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    if (x < lo or (lo_open and x == lo)) or (x > hi or (hi_open and x == hi)):
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return x


def check_confidence(confidence: Any, name: str = "confidence") -> float:
    """``confidence`` (target coverage, e.g. 0.9) as a float in the open interval (0, 1)."""
    if not _is_number(confidence) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"{name}: expected a number in (0, 1), e.g. 0.9, got {confidence!r}")
    return float(confidence)


def check_fraction(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A fraction in (0, 1) (or [0, 1) with ``allow_zero``), e.g. a test or holdout fraction."""
    return check_float(name, value, 0.0, 1.0, lo_open=not allow_zero, hi_open=True)


def check_levels(levels: Any, name: str = "levels") -> np.ndarray:
    """``levels`` as a non-empty 1-D float64 array with every entry in (0, 1)."""
    try:
        arr = np.asarray(levels, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers in (0, 1), got {levels!r}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of numbers in (0, 1), got shape {arr.shape}")
    bad = ~((arr > 0.0) & (arr < 1.0))
    if bad.any():
        raise ValueError(f"{name}: every level must lie in (0, 1), got {float(arr[bad][0])!r} (in {arr.tolist()[:10]})")
    return arr


def check_choice(name: str, value: Any, choices) -> str:
    """``value`` if it is one of ``choices`` (strings); the message lists the valid ones."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_regular_file(path, source: str, *, no_such: str = "no such file", expected: str = "a file",
                       error: type[Exception] = ValueError) -> Path:
    """``path`` as a Path, checked to be an existing regular file before anything opens it.

    Messages start with ``source`` (the name the user gave): ``"<source>: <no_such>"``
    (FileNotFoundError), ``"<source>: is a directory, expected <expected>"`` and ``"<source>: not a
    regular file (a device, pipe or socket), expected <expected>"`` (``error``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{source}: {no_such}")
    if path.is_dir():
        raise error(f"{source}: is a directory, expected {expected}")
    if not path.is_file():
        raise error(f"{source}: not a regular file (a device, pipe or socket), expected {expected}")
    return path


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool; only True/False (and numpy bools) are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)
