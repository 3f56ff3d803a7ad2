"""Warm the app up at launch: the heavy imports in a background thread, the demo's features in a process of their own.

Importing torch, mace-torch/e3nn (through :func:`core.potentials.mace_foundation.mace_modules`,
which keeps mace's environment change contained and leaves ``torch._dynamo`` for first use) and
the calibrators takes about 4.5 s of one core, and featurizing the default demo about 2.5 s (1.5 s
on two threads, :mod:`core.batching`): most of the demo's first calibration. :mod:`app.launch`
(``make app``) calls :func:`start` at process start, with the default demo family, while the
server boots and the browser loads the page;
``app/main.py`` calls it (imports only) after the first page is drawn, for a plain
``streamlit run app/main.py``. Only the first call starts anything.

With a demo family, the demo is featurized by a **warm-up process** (``python -m app.prewarm
FAMILY CACHE_DIR``): it imports mace-torch, loads the demo model, records the model's metadata
(:mod:`core.potentials.deferred`) and writes the features to the app's on-disk feature cache
(``app.services.CACHE_DIR``) through the same :func:`app.job.featurize_table` the Model page
uses, and ends without the interpreter's teardown (``os._exit``: ~1.1 s of CPU the server's
first calibration would wait for). In a process of its own it runs beside the server instead of
taking turns for the server's interpreter lock with the pages. The server then never imports
mace-torch for the demo:
:func:`demo_potential` waits for the recorded metadata and returns a
:class:`~core.potentials.deferred.DeferredPotential`, and the Model page's featurize job waits
for the warm-up's cache entry (:func:`core.featurize.featurize` locks a cache key across
processes and shows the other process's progress). The background thread meanwhile imports
what calibrating needs. If the warm-up process fails, nothing is lost: the page loads and
featurizes as without it, and reports its own errors.
"""

from __future__ import annotations

import atexit
import gc
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from functools import partial
from pathlib import Path

__all__ = ("demo_potential", "start", "start_app_demo_process", "start_demo_process", "warm_imports",
           "warm_demo_features")

#: The GIL switch interval (s) while warming up (Python's default is 0.005). The imports hold the GIL
#: almost all the time; the web server's thread needs it after every socket read, and with the default
#: it waits up to 5 ms each time: the first page took seconds longer to load.
SWITCH_INTERVAL = 0.0005
#: How long a page waits for the warm-up process to record the demo model before loading it itself (s).
RECORD_WAIT_S = 120.0

_lock = threading.Lock()
_thread: threading.Thread | None = None
_demo_potentials: dict[str, Future] = {}  # family -> its demo model (demo_potential)
_demo_processes: dict[str, subprocess.Popen] = {}  # family -> the warm-up process featurizing it


def warm_imports(stage: str) -> None:
    """Import the modules of one stage: ``"featurize"`` (torch, mace, e3nn) or ``"calibrate"``
    (torch, the calibrators, the evaluation engine, the metrics, the figures and the 3D viewer)."""
    if stage == "featurize":
        import torch  # noqa: F401

        from core.potentials.mace_foundation import mace_modules

        mace_modules()
    elif stage == "calibrate":
        import torch  # noqa: F401  (q_θ; its optimizer needs no torch._dynamo: core/calibration/adamw.py)

        import core.calibration  # noqa: F401
        import core.evaluation  # noqa: F401
        import core.figures  # noqa: F401
        import core.metrics  # noqa: F401  (scipy.stats: 0.65 s the first evaluation would wait for)
        import core.viewer  # noqa: F401
        import py3Dmol  # noqa: F401  (IPython: 0.1 s the first Structures page would wait for)
    else:
        raise ValueError(f"stage: expected 'featurize' or 'calibrate', got {stage!r}")


def demo_potential(family: str, records):
    """The demo model of ``family`` (``core.demo.FAMILIES``), once per process.

    A :class:`~core.potentials.deferred.DeferredPotential` when the model's metadata is recorded
    in the folder ``records`` (the app: its feature cache): its weights load only if something
    needs them (features from the cache do not). While the warm-up process of this family runs
    and has not recorded the model yet, this waits for it (at most ``RECORD_WAIT_S``) rather
    than importing mace-torch beside it. Callers arriving during the first call wait for that
    one; a failed load is not kept (the next call tries again and raises its own error).
    """
    with _lock:
        future = _demo_potentials.get(family)
        owner = future is None
        if owner:
            future = _demo_potentials[family] = Future()
    if owner:
        from core.potentials.deferred import deferred_potential, record_path

        spec, folder = f"demo:{family}", Path(records)
        try:
            _wait_for_record(_demo_processes.get(family), record_path(spec, folder))
            future.set_result(deferred_potential(spec, records=folder))
        except BaseException as exc:
            with _lock:
                _demo_potentials.pop(family, None)
            future.set_exception(exc)
    return future.result()


def _wait_for_record(process: subprocess.Popen | None, path: Path | None) -> None:
    """Wait while ``process`` runs and ``path`` does not exist (at most ``RECORD_WAIT_S``)."""
    deadline = time.monotonic() + RECORD_WAIT_S
    while (process is not None and path is not None and process.poll() is None and not path.exists()
           and time.monotonic() < deadline):
        time.sleep(0.05)


def warm_demo_features(family: str, cache_dir) -> None:
    """Featurize the demo dataset of ``family`` with its demo model into ``cache_dir`` (a no-op when cached)."""
    from app.job import featurize_table
    from core.sources import resolve_data

    dataset, _family = resolve_data(family)
    featurize_table(dataset, demo_potential(family, records=cache_dir), cache_dir=cache_dir)


def start_demo_process(family: str, cache_dir) -> subprocess.Popen:
    """Start the warm-up process that featurizes the demo of ``family`` into ``cache_dir`` (once per family).

    Its output is discarded (a failure only means the page does the work); it is terminated when
    this process exits.
    """
    with _lock:
        process = _demo_processes.get(family)
        if process is None:
            process = subprocess.Popen([sys.executable, "-m", "app.prewarm", family, str(Path(cache_dir).resolve())],
                                       cwd=str(Path(__file__).resolve().parent.parent),
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            _demo_processes[family] = process
            atexit.register(_stop, process)
        return process


def start_app_demo_process(family: str) -> subprocess.Popen:
    """:func:`start_demo_process` into the app's feature cache (``app.services.CACHE_DIR``, without
    importing Streamlit): :mod:`app.launch` calls it first thing, as the first diagnosis waits for it."""
    from app.catalog import features_cache

    return start_demo_process(family, features_cache())


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


def _work(stages: tuple[str, ...]) -> None:
    """Import the stages in order (errors are left for the code that really uses the modules), then
    freeze the garbage collector's view of everything loaded so far (:func:`gc.freeze`): the modules
    live as long as the process, and a full collection over their ~400 000 objects took 0.25 s each
    time (Streamlit's own collection after every rerun is off in ``.streamlit/config.toml``)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for step in [partial(warm_imports, stage) for stage in stages]:
            try:
                step()
            except Exception:  # only a warm-up: errors surface where the modules are used
                pass
        gc.freeze()
    finally:
        sys.setswitchinterval(interval)


def start(demo_family: str | None = None) -> threading.Thread:
    """The warm-up thread (started by the first call; later calls return the same thread).

    ``demo_family``: also start the warm-up process featurizing that demo (``core.demo.FAMILIES``)
    into the app's feature cache; the thread then imports only what calibrating needs (the demo
    needs no mace-torch in this process), else it imports both stages.
    """
    global _thread
    with _lock:
        if _thread is not None:
            return _thread
    if demo_family:
        start_app_demo_process(demo_family)
    stages = ("calibrate",) if demo_family else ("featurize", "calibrate")
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_work, args=(stages,), name="flexcal-prewarm", daemon=True)
            _thread.start()
        return _thread


def main(argv: list[str] | None = None) -> int:
    """``python -m app.prewarm FAMILY CACHE_DIR``: the warm-up process (featurize one demo into the cache)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m app.prewarm FAMILY CACHE_DIR", file=sys.stderr)
        return 2
    from core.demo import FAMILIES

    family, cache_dir = args
    if family not in FAMILIES:
        print(f"FAMILY: expected one of {sorted(FAMILIES)}, got {family!r}", file=sys.stderr)
        return 2
    warm_demo_features(family, cache_dir)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # the features are on disk (written atomically, the key's lock released): skip the interpreter's
    # teardown of torch and mace-torch, ~1.1 s of CPU the server's first calibration would share a core with
    os._exit(code)
