"""Load the heavy modules (torch, mace-torch, e3nn, the calibrators) in a background thread, once per process.

Importing them takes about 5 s on two cores, most of the demo's first calibration. The app starts
this thread twice over: :mod:`app.launch` (``make app``) at process start, while the server boots
and the browser loads the page, and ``app/main.py`` after the first page is drawn (for a plain
``streamlit run app/main.py``). Only the first call starts a thread; errors are left for the
code that really uses the modules to report.
"""

from __future__ import annotations

import threading

__all__ = ("start",)

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _work() -> None:
    try:
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401  (the first optimizer construction imports it: ~3 s)

        import core.calibration  # noqa: F401
        import core.evaluation  # noqa: F401
        import core.figures  # noqa: F401
        import core.potentials.mace  # noqa: F401  (mace-torch, e3nn)
    except Exception:  # only a warm-up: errors surface where the modules are used
        pass


def start() -> threading.Thread:
    """The warm-up thread (started by the first call; later calls return the same thread)."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_work, name="flexcal-prewarm", daemon=True)
            _thread.start()
        return _thread
