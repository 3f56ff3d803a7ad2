"""The one convention for progress arguments: ``None``/``False``, ``True`` or a callable.

``progress=True`` prints ``"<what> <done>/<total>"`` lines to stderr (for the CLI and scripts);
a callable ``progress(done, total)`` is called as work advances (for the app's progress bars).

Work deep inside a call chain that has no ``progress`` argument (a heuristic's neighbour
search inside a calibrator's ``fit`` inside :func:`core.evaluation.evaluate`) reports to the
*progress scope* instead: :func:`report` ``(what, done, total)`` is a no-op unless a caller
opened :func:`progress_scope` with a sink ``sink(what, done, total)`` in the same thread (a
:mod:`contextvars` variable, so concurrent jobs in other threads never see each other's
reports). A sink may raise :class:`Cancelled` to stop the work between two chunks: nothing is
returned, and every caller here writes its outputs (caches, files) only after the work finished.
:class:`Meter` turns ``(done, total)`` reports into a rate and an ETA in seconds.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time
from typing import Callable, Iterator

from core.tables import MISSING

ProgressFn = Callable[[int, int], object]
SinkFn = Callable[[str, int, int], object]

_SINK: contextvars.ContextVar[SinkFn | None] = contextvars.ContextVar("flexcal_progress_sink", default=None)


class Cancelled(RuntimeError):
    """Raised by a progress callback or sink to stop the work between two chunks (nothing is kept)."""


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


@contextlib.contextmanager
def progress_scope(sink: SinkFn | None) -> Iterator[None]:
    """Send every :func:`report` made in this thread inside the block to ``sink(what, done, total)``.

    ``None`` silences reports inside the block. Scopes nest (the inner one wins) and are
    restored on exit, also when the block raises.
    """
    if sink is not None and not callable(sink):
        raise TypeError(f"sink must be None or a callable(what, done, total); got {sink!r}")
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def report(what: str, done: int, total: int) -> None:
    """Tell the current progress scope that ``done`` of ``total`` units of ``what`` are finished.

    A no-op outside :func:`progress_scope`. The sink may raise :class:`Cancelled`.
    """
    sink = _SINK.get()
    if sink is not None:
        sink(str(what), int(done), int(total))


#: Sites per chunk of a neighbour search (kNN heuristic, out-of-domain score): one report and cancel
#: point each, ~0.1-0.5 s of work.
SEARCH_CHUNK = 1024


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` covering ``range(n)`` in pieces of at most ``size`` (at least one piece)."""
    if size < 1:
        raise ValueError(f"size: expected an int >= 1, got {size!r}")
    return [(lo, min(lo + size, n)) for lo in range(0, max(n, 1), size)] if n > 0 else [(0, 0)]


class Meter:
    """Rate and ETA of one piece of work from its ``(done, total)`` reports.

    ``Meter(total, *, clock=time.monotonic)``; ``update(done, total=None)`` records a report;
    ``rate`` (units per second, None before any unit is done), ``eta`` (seconds, None when
    unknown), ``fraction`` in [0, 1]. The clock is injectable so tests never depend on time.
    """

    def __init__(self, total: int = 0, *, clock: Callable[[], float] = time.monotonic):
        self.total = max(int(total), 0)
        self.done = 0
        self._clock = clock
        self.started = clock()
        self.last = self.started

    def update(self, done: int, total: int | None = None) -> "Meter":
        if total is not None:
            self.total = max(int(total), 0)
        self.done = max(0, int(done))
        self.last = self._clock()
        return self

    @property
    def elapsed(self) -> float:
        return max(self._clock() - self.started, 0.0)

    @property
    def fraction(self) -> float:
        return 0.0 if not self.total else min(self.done / self.total, 1.0)

    @property
    def rate(self) -> float | None:
        spent = self.last - self.started
        return self.done / spent if self.done > 0 and spent > 0 else None

    @property
    def eta(self) -> float | None:
        rate = self.rate
        if rate is None or not self.total:
            return None
        return max(self.total - self.done, 0) / rate


def format_seconds(seconds: float | None) -> str:
    """``"12 s"``, ``"3 min 05 s"``, or :data:`core.tables.MISSING` ("—") when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"
