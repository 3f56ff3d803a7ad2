"""Warm the app up in a background thread, once per process: the heavy imports, then (optionally) the demo's features.

Importing torch, mace-torch/e3nn (through :func:`core.potentials.mace_foundation.mace_modules`,
which keeps mace's environment change contained), torch's optimizer machinery and the
calibrators takes about 8 s of one core, and featurizing the default demo about 3 s: most of
the demo's first calibration. :mod:`app.launch` (``make app``) starts this thread at process
start, with the default demo family, while the server boots and the browser loads the page;
``app/main.py`` starts it (imports only) after the first page is drawn, for a plain
``streamlit run app/main.py``. Only the first call starts a thread.

The demo's features go to the app's on-disk feature cache (``app.services.CACHE_DIR``) through
the same :func:`app.job.featurize_table` the Model page uses, so the page's featurize job finds
them there; if the user clicks first, :func:`core.featurize.featurize` computes the key once and
the page's job waits for this one. Errors are left for the code that really uses the modules
(or the demo) to report.
"""

from __future__ import annotations

import sys
import threading
from functools import partial

__all__ = ("start", "warm_imports", "warm_demo_features")

#: The GIL switch interval (s) while warming up (Python's default is 0.005). The imports hold the GIL
#: almost all the time; the web server's thread needs it after every socket read, and with the default
#: it waits up to 5 ms each time: the first page took seconds longer to load.
SWITCH_INTERVAL = 0.0005

_lock = threading.Lock()
_thread: threading.Thread | None = None


def warm_imports(stage: str) -> None:
    """Import the modules of one stage: ``"featurize"`` (torch, mace, e3nn) or ``"calibrate"``
    (torch's optimizer machinery, the calibrators, the evaluation engine, the figures)."""
    if stage == "featurize":
        import torch  # noqa: F401

        from core.potentials.mace_foundation import mace_modules

        mace_modules()
    elif stage == "calibrate":
        import torch._dynamo  # noqa: F401  (the first optimizer construction imports it: ~1.5 s)

        import core.calibration  # noqa: F401
        import core.evaluation  # noqa: F401
        import core.figures  # noqa: F401
    else:
        raise ValueError(f"stage: expected 'featurize' or 'calibrate', got {stage!r}")


def warm_demo_features(family: str, cache_dir) -> None:
    """Featurize the demo dataset of ``family`` with its demo model into ``cache_dir`` (a no-op when cached)."""
    from app.job import featurize_table
    from core.potentials import load_potential
    from core.sources import resolve_data

    dataset, _family = resolve_data(family)
    featurize_table(dataset, load_potential(f"demo:{family}"), cache_dir=cache_dir)


def _work(demo_family: str | None) -> None:
    """Imports for featurizing, the demo's features (in the order the one-click demo needs them), imports for calibrating."""
    steps = [partial(warm_imports, "featurize")]
    if demo_family:
        from app.services import CACHE_DIR

        steps.append(partial(warm_demo_features, demo_family, CACHE_DIR))
    steps.append(partial(warm_imports, "calibrate"))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for step in steps:
            try:
                step()
            except Exception:  # only a warm-up: errors surface where the modules (or the demo) are used
                pass
    finally:
        sys.setswitchinterval(interval)


def start(demo_family: str | None = None) -> threading.Thread:
    """The warm-up thread (started by the first call; later calls return the same thread).

    ``demo_family``: also featurize that demo (``core.demo.FAMILIES``) into the feature cache.
    """
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_work, args=(demo_family,), name="flexcal-prewarm", daemon=True)
            _thread.start()
        return _thread
