"""One process-wide guard between MACE model unpickling and torch module calls in other threads.

Unpickling a MACE ``.model`` file makes e3nn rebuild its kernels with ``torch.fx`` symbolic
tracing, and the tracer patches ``torch.nn.Module.__call__`` for the whole process while it
runs: a forward pass in another thread at that moment (a featurize batch, a q_θ epoch, another
model's load) is routed into the tracer and fails with ``NameError: module is not installed as a
submodule``. The app runs such work in threads (its warm-up, featurize and training jobs, several
sessions), so every FlexCal module call holds :meth:`TorchGuard.calls` (shared: calls run
together) and every MACE unpickling holds :meth:`TorchGuard.tracing` (exclusive: it waits for
running calls to finish and new calls wait for it).

    from core.torch_guard import TORCH_GUARD
    with TORCH_GUARD.calls():
        out = model(batch)
"""

from __future__ import annotations

import contextlib
import threading

__all__ = ("TORCH_GUARD", "TorchGuard")


class TorchGuard:
    """A readers-writer lock: many ``calls()`` at once, or one ``tracing()`` alone (waiting tracers go first).

    Re-entrant per thread: a ``calls()`` or ``tracing()`` block inside a ``tracing()`` block of the
    same thread, or a ``calls()`` inside ``calls()``, never waits for itself.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._calls = 0                       # calls() blocks running (all threads)
        self._tracer: int | None = None       # thread id holding tracing()
        self._tracing_depth = 0
        self._tracers_waiting = 0
        self._local = threading.local()       # this thread's calls() depth

    @contextlib.contextmanager
    def calls(self):
        """Hold while running torch modules (shared with other calls, exclusive of tracing)."""
        me = threading.get_ident()
        depth = getattr(self._local, "calls", 0)
        with self._cond:
            if self._tracer != me and depth == 0:
                while self._tracer is not None or self._tracers_waiting:
                    self._cond.wait()
            self._calls += 1
        self._local.calls = depth + 1
        try:
            yield
        finally:
            self._local.calls = depth
            with self._cond:
                self._calls -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def tracing(self):
        """Hold while unpickling a MACE model (alone: no module call runs in another thread)."""
        me = threading.get_ident()
        own_calls = getattr(self._local, "calls", 0)
        with self._cond:
            if self._tracer != me:
                self._tracers_waiting += 1
                try:
                    while self._tracer is not None or self._calls > own_calls:
                        self._cond.wait()
                finally:
                    self._tracers_waiting -= 1
                self._tracer = me
            self._tracing_depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._tracing_depth -= 1
                if self._tracing_depth == 0:
                    self._tracer = None
                self._cond.notify_all()


#: The one guard of this process.
TORCH_GUARD = TorchGuard()
