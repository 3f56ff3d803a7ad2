"""The one convention for progress arguments: ``None``/``False``, ``True`` or a callable.

``progress=True`` prints ``"<what> <done>/<total>"`` lines to stderr (for the CLI and scripts);
a callable ``progress(done, total)`` is called as work advances (for the app's progress bars).
"""

from __future__ import annotations

import sys
from typing import Callable

ProgressFn = Callable[[int, int], object]


def as_progress(progress, what: str) -> ProgressFn | None:
    """Normalise a ``progress`` argument to a ``callable(done, total)`` or None.

    Raises TypeError naming ``progress`` and the value for anything else.
    """
    if progress is None or progress is False:
        return None
    if progress is True:
        def _print(done: int, total: int) -> None:
            print(f"{what} {done}/{total}", file=sys.stderr, flush=True)
        return _print
    if callable(progress):
        return progress
    raise TypeError(f"progress must be None, True or a callable(done, total); got {progress!r}")
