"""The app's long steps as background jobs: featurizing and calibrating (one job mechanism).

* :class:`BackgroundJob` is the one mechanism: a thread the page polls, a progress scope
  (:mod:`core.progress`) whose reports give the current step, its rate and ETA, and a Cancel
  that stops the work at the next report (between two batches or chunks), keeping nothing.
* :class:`FeaturizeJob` featurizes a dataset batch by batch (structures done / total, sites/s,
  ETA), through the in-memory and on-disk feature caches.
* :class:`TrainingJob` runs :func:`core.evaluation.evaluate` in a thread the page polls and
  leaves an :class:`app.run.CalibrationRun`. "Stop" ends q_θ
  training early (its best epoch is kept and still conformally corrected; the other methods
  still fit); "Cancel" abandons the whole job at the next progress report (kNN chunk, epoch,
  method).

No Streamlit here: the job thread never touches ``st.*``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import numpy as np

from app.catalog import describe_error
from app.run import TEST, CalibrationRun
from core.batching import usable_cores

# torch intra-op threads for the app's own work (featurize, q_θ training). 1 by default: on two
# shared cores, 2 threads were 6x (MACE featurize) to 30x (q_θ) slower than 1 under load.
TORCH_THREADS = int(os.environ.get("FLEXCAL_APP_TORCH_THREADS", "1"))


@contextlib.contextmanager
def torch_threads(n: int = TORCH_THREADS):
    """Run a block with ``n`` torch intra-op threads (restored after); a no-op without torch."""
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def method_options(methods, qtheta: dict, *, confidence: float = 0.9) -> dict[str, dict]:
    """The q_θ settings for every chosen method that takes them.

    ``qtheta``: e.g. ``{"levels": (...), "hidden": (64, 64), "max_epochs": 200, ...}``. Each
    setting is tried on each method's registry factory (an unfitted calibrator is cheap to
    build); a method that rejects a setting as an unknown option (TypeError) goes without it,
    so a new q_θ-based method in the registry gets the settings without a change here. A bad
    value (ValueError) is raised, naming the setting.
    """
    from core.calibration.registry import method_spec

    out: dict[str, dict] = {}
    for m in methods:
        factory = method_spec(m).factory
        accepted = {}
        for key, value in qtheta.items():
            try:
                factory(confidence, 0, **{key: value})
            except TypeError:
                continue
            accepted[key] = value
        if accepted:
            out[m] = accepted
    return out


class BackgroundJob:
    """One long step in a background thread that the page polls (the app's one job mechanism).

    Subclasses implement ``_run()`` (in the thread; never calls Streamlit) and set what the
    page collects. Progress goes through :mod:`core.progress`: ``_run`` runs inside a progress
    scope whose sink records the current step (``step``, ``done``, ``total``: a :class:`Meter`
    with rate and ETA) and raises :class:`core.progress.Cancelled` at the next report once
    :meth:`cancel` was called, so work stops between two batches/chunks and nothing
    half-done is kept. ``status``: "pending", "running", "done", "failed" or "cancelled";
    ``error`` the message shown when it did not finish; ``messages`` log lines.
    """

    name = "job"
    cancelled_message = "Cancelled: nothing was kept."
    upper_bound_steps: tuple[str, ...] = ()  # steps whose total is a maximum (the ETA is "≤")

    def __init__(self):
        from core.progress import Meter

        self.messages: list[str] = []
        self.status = "pending"
        self.error: str | None = None
        self.started = time.perf_counter()
        self.finished: float | None = None
        self.step = ""
        self.meter = Meter(0)
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control
    def start(self) -> "BackgroundJob":
        self.status = "running"
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._work, name=f"flexcal-{self.name}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Abandon the job at the next progress report (between two batches); nothing is kept."""
        self._cancel.set()
        self._stop.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def done(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    def elapsed(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    #: how often a page redraws a running job's progress (s): often enough to read, rarely enough that
    #: the browser's re-rendering does not compete with the job for a small machine's cores
    REDRAW_EVERY = 0.5

    def follow(self, update, *, every: float = REDRAW_EVERY, timeout: float | None = None) -> bool:
        """Call ``update()`` now and every ``every`` s while the job runs; return as soon as it ends.

        The pages' one polling loop (``update`` draws the progress; this module never calls
        Streamlit). Waiting is a join on the job's thread, so the page moves on the moment the
        job ends rather than at its next tick. True when the job ended, False when ``timeout``
        seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            update()
            wait = every if deadline is None else min(every, deadline - time.monotonic())
            if wait <= 0:
                return False
            if self._thread is None:  # not started (yet): nothing to join
                time.sleep(wait)
            else:
                self._thread.join(wait)
        return True

    # -- progress
    def _sink(self, what: str, done: int, total: int) -> None:
        """The progress-scope sink: record the step (a new step restarts the meter); cancel point."""
        from core.progress import Cancelled, Meter

        if what != self.step:
            self.step, self.meter = what, Meter(total)
        self.meter.update(done, total)
        if self._cancel.is_set():
            raise Cancelled(f"cancelled during {what}")

    def progress_text(self) -> str:
        """``"<step> <done> / <total> — ETA 12 s"`` of the current step ("" before any report)."""
        from core.progress import format_seconds

        if not self.step:
            return ""
        m = self.meter
        bound = self.step in self.upper_bound_steps
        eta = f" — ETA {'≤ ' if bound else ''}{format_seconds(m.eta)}" if m.done < m.total else ""
        return f"{self.step} {m.done} / {m.total}{eta}"

    # -- worker
    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _work(self) -> None:
        from core.evaluation import EvaluationCancelled
        from core.progress import Cancelled, progress_scope

        try:
            with progress_scope(self._sink):
                self._run()
            if self._cancel.is_set():  # cancelled after the last progress report
                raise Cancelled("cancelled at the end")
            self.status = "done"
        except (Cancelled, EvaluationCancelled):
            self.error = self.cancelled_message
            self.status = "cancelled"
        except Exception as exc:  # shown in the page's error box
            self.error = describe_error(exc)
            self.messages.append(f"{type(exc).__name__}: {exc}")
            self.status = "failed"
        finally:
            self.finished = time.perf_counter()


class TrainingJob(BackgroundJob):
    """Runs :func:`core.evaluation.evaluate` in a background thread; the page polls it.

    The thread never calls Streamlit. It appends q_θ epochs to ``history`` (the live loss
    curve), the engine's log lines to ``messages`` and every step's progress (kNN search in
    chunks, q_θ epochs, scoring, ... through :mod:`core.progress`) to ``step``/``meter``. When
    it ends, ``run`` holds a :class:`CalibrationRun`, or ``error`` a message (``status``
    "failed" or "cancelled"). "Stop" ends q_θ training early (best epoch kept); "Cancel"
    abandons the whole job at the next progress report.
    """

    name = "training"
    upper_bound_steps = ("q_θ epochs",)  # early stopping may end training before max_epochs
    cancelled_message = "Calibration cancelled: nothing was fitted; press Train to start again."

    def __init__(self, partition, methods, *, confidence: float, options: dict | None = None,
                 bootstrap: int = 200, seed: int = 0, settings: dict | None = None,
                 provenance: dict | None = None):
        super().__init__()
        self.partition = partition
        self.methods = list(methods)
        self.confidence = float(confidence)
        self.options = dict(options or {})
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.settings = dict(settings or {})
        self.provenance = dict(provenance or {})
        self.history: list[dict] = []
        self.run: CalibrationRun | None = None

    def stop(self) -> None:
        """End q_θ training after this epoch (best weights kept); the other methods still fit."""
        self._stop.set()

    def _callback(self, epoch, train_loss, val_loss) -> bool:
        self.history.append({"epoch": int(epoch), "train_loss": float(train_loss),
                             "val_loss": None if val_loss is None else float(val_loss)})
        return self._stop.is_set()

    def _run(self) -> None:
        from core.evaluation import evaluate

        p = self.partition
        weights = {str(o.get("weights")) for o in self.options.values()}
        with torch_threads():  # q_θ is a tiny MLP: one intra-op thread is fastest
            ev = evaluate(
                p.calibration, {TEST: p.test}, self.methods, confidence=self.confidence, seed=self.seed,
                reference=p.reference, target=p.test if "shift" in weights else None,
                method_options=self.options, bootstrap=self.bootstrap, log=self.messages.append,
                epoch_callback=self._callback, should_stop=self._cancel.is_set,
            )
        if self._cancel.is_set():  # cancelled while the last method trained
            return
        self.run = CalibrationRun(ev, settings=self.settings, provenance=self.provenance, note=p.note,
                                  history=list(self.history),
                                  stopped_early=self._stop.is_set(), seconds=time.perf_counter() - self.started)


# the app featurizes in batches of at most this many structures / atoms: a progress report (and a
# cancel point) every few seconds even for large structures; CPU throughput is the same as with 16
FEATURIZE_BATCH = int(os.environ.get("FLEXCAL_APP_FEATURIZE_BATCH", "8"))
FEATURIZE_MAX_ATOMS = int(os.environ.get("FLEXCAL_APP_FEATURIZE_MAX_ATOMS", "512"))
# batches featurized at once, each on a thread with TORCH_THREADS torch threads (core.batching): the
# demos 1.45-1.8x faster on two cores, the same numbers (benchmarks/results/featurize_threads.md)
FEATURIZE_THREADS = int(os.environ.get("FLEXCAL_APP_FEATURIZE_THREADS", str(min(2, usable_cores()))))


def featurize_table(dataset, potential, *, progress=None, cache_dir=None):
    """The SiteTable of ``dataset`` under ``potential`` as the app uses it (no Streamlit).

    Featurized with :func:`core.featurize.featurize` (its on-disk cache under ``cache_dir``;
    nothing is written unless every batch finished) in ``FEATURIZE_BATCH`` structures /
    ``FEATURIZE_MAX_ATOMS`` atoms per batch, ``FEATURIZE_THREADS`` batches at once with
    ``TORCH_THREADS`` torch threads each; the file's
    per-frame ``split`` labels become a structure column when every frame has one.
    ``progress(done, total)``: structures done after each batch (may raise Cancelled). An entry
    already in the cache is read first without torch (a deferred potential stays unloaded).
    """
    from core.featurize import cached, featurize
    from core.sources import SPLIT_KEY, with_structure_columns

    sites = None if cache_dir is None else cached(dataset.structures, potential, cache_dir)
    if sites is not None:
        if progress is not None:
            progress(len(dataset.structures), len(dataset.structures))
    else:
        with torch_threads():
            sites = featurize(dataset.structures, potential, batch_size=FEATURIZE_BATCH, progress=progress,
                              cache_dir=cache_dir, max_batch_atoms=FEATURIZE_MAX_ATOMS, threads=FEATURIZE_THREADS)
    labels = [a.info.get(SPLIT_KEY) for a in dataset.structures]
    if all(v is not None for v in labels):
        sites = with_structure_columns(sites, {SPLIT_KEY: np.array([str(v) for v in labels])})
    return sites


class FeaturizeJob(BackgroundJob):
    """Featurizes a dataset in a background thread, batch by batch (the Model page polls it).

    ``cache``: a shared in-memory map (``get``/``put``) keyed by ``key`` = (dataset key,
    potential identity): a hit finishes :meth:`start` at once without a thread; a finished run
    is put there (and on disk through ``cache_dir``). Progress: structures ``done`` / ``total``
    with the sites/s rate and the ETA in seconds (from the atom counts of the batches done);
    :meth:`cancel` stops between two batches, and nothing is cached or returned. ``sites``
    holds the result when ``status == "done"``; ``cache_hit`` says it came from memory.
    """

    name = "featurize"
    cancelled_message = "Featurizing cancelled: nothing was kept; the previous features (if any) stay."

    def __init__(self, dataset, dataset_key: str, potential, *, cache=None, cache_dir=None,
                 potential_label: str | None = None):
        super().__init__()
        from core.progress import Meter

        self.dataset = dataset
        self.potential = potential
        self.key = (dataset_key, potential.identity)
        self.potential_label = potential_label or getattr(potential, "name", str(potential))
        self.cache = cache
        self.cache_dir = cache_dir
        sizes = np.array([len(a) for a in dataset.structures], dtype=np.int64)
        self.site_offsets = np.r_[0, np.cumsum(sizes)]
        self.total = len(sizes)
        self.step = "Featurizing"
        self.meter = Meter(int(self.site_offsets[-1]))  # in sites: the ETA follows the atoms, not the frames
        self.structures_done = 0
        self.sites = None
        self.cache_hit = False

    def start(self) -> "FeaturizeJob":
        hit = None if self.cache is None else self.cache.get(self.key)
        if hit is None:
            return super().start()
        self.sites, self.cache_hit = hit, True
        self.structures_done, self.status = self.total, "done"
        self.meter.update(int(self.site_offsets[-1]))
        self.finished = time.perf_counter()
        return self

    def _progress(self, done: int, total: int) -> None:
        self.structures_done = int(done)
        self._sink(self.step, int(self.site_offsets[min(int(done), self.total)]), int(self.site_offsets[-1]))

    @property
    def fraction(self) -> float:
        return self.meter.fraction

    def progress_text(self) -> str:
        """``"Featurizing: 32 / 240 structures — 1,234 sites/s — ETA 12 s"``."""
        from core.progress import format_seconds

        head = f"Featurizing: {self.structures_done} / {self.total} structures"
        if self.cache_hit:
            return head + " (from the cache)"
        if self.structures_done == 0:
            return head + f" — first batch running ({self.elapsed():.0f} s)"
        rate = self.meter.rate
        return (head + (f" — {rate:,.0f} sites/s" if rate else "")
                + (f" — ETA {format_seconds(self.meter.eta)}" if self.structures_done < self.total else ""))

    def _run(self) -> None:
        sites = featurize_table(self.dataset, self.potential, progress=self._progress, cache_dir=self.cache_dir)
        if self._cancel.is_set():
            return
        if self.cache is not None:
            self.cache.put(self.key, sites)
        self.sites = sites
