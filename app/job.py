"""The app's calibration: one :func:`core.evaluation.evaluate` call in a background thread.

* :class:`CalibrationRun` wraps the :class:`core.evaluation.Evaluation` of one training (its
  calibrators, widths at every level, reports, out-of-domain flags) with what the pages need
  on top: the settings that produced it (for the "results out of date" badge), the q_θ loss
  history and per-label views of the one test split.
* :class:`TrainingJob` runs that evaluation in a thread the page polls. "Stop" ends q_θ
  training early (its best epoch is kept and still conformally corrected; the other methods
  still fit); "Cancel" abandons the whole job (:class:`core.evaluation.EvaluationCancelled`).

No Streamlit here: the job thread never touches ``st.*``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from app.catalog import describe_error

TEST = "test"  # the app's one test split
# torch intra-op threads for the app's own work (featurize, q_θ training). 1 by default: on two
# shared cores, 2 threads were 6x (MACE featurize) to 30x (q_θ) slower than 1 under load.
TORCH_THREADS = int(os.environ.get("FLEXCAL_APP_TORCH_THREADS", "1"))
RESULT_COLUMNS = (
    "label", "coverage", "coverage_expected_lo", "coverage_expected_hi", "coverage_check", "coverage_ci_lo",
    "coverage_ci_hi",
    "coverage_gap", "mean_width", "width_ratio", "spearman", "spearman_ci_lo", "spearman_ci_hi", "pearson",
    "auroc", "miscalibration_area", "worst_species_coverage", "pinball", "structure_spearman",
    "structure_auroc", "ood_fraction", "coverage_in_domain", "coverage_out_of_domain", "fit_seconds", "note",
)


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


@dataclass
class CalibrationRun:
    """One finished calibration: the Evaluation plus what the pages show around it.

    ``widths[label]`` (n_test,) and ``widths_levels[label]`` (n_test, k) are half-widths in
    eV/Å on the test sites at ``confidence`` and at ``levels``; ``reports[label]`` is the
    calibration report (coverage with its expected spread, out-of-domain fraction, ...).
    """

    evaluation: Any                             # core.evaluation.Evaluation
    settings: dict = field(default_factory=dict)  # what it depends on (state.current_settings())
    provenance: dict = field(default_factory=dict)  # what produced it, in words (the report records it)
    note: str = ""                              # the partition's note (training frames set aside)
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # cache key of derived figures

    # -- the evaluation, seen through the one test split
    @property
    def confidence(self) -> float:
        return float(self.evaluation.confidence)

    @property
    def labels(self) -> list[str]:
        return self.evaluation.labels

    @property
    def calibrators(self) -> dict[str, Any]:
        return self.evaluation.calibrators

    @property
    def cal(self):
        return self.evaluation.calibration

    @property
    def test(self):
        return self.evaluation.tests[TEST]

    @property
    def levels(self) -> np.ndarray:
        return self.evaluation.levels

    @cached_property
    def widths(self) -> dict[str, np.ndarray]:
        return {lab: self.evaluation.widths[(lab, TEST)] for lab in self.labels}

    @cached_property
    def widths_levels(self) -> dict[str, np.ndarray | None]:
        return {lab: self.evaluation.widths_at_levels.get((lab, TEST)) for lab in self.labels}

    @cached_property
    def reports(self) -> dict[str, dict]:
        return {lab: self.evaluation.reports[(lab, TEST)] for lab in self.labels}

    @property
    def ood(self) -> np.ndarray | None:
        """Per-test-site out-of-domain flags (n_test,) bool, or None when no domain score exists."""
        return self.evaluation.ood.get(TEST)

    @property
    def domain(self):
        """The fitted :class:`core.domain.DomainScore` behind ``ood`` (None without one)."""
        return self.evaluation.domain

    @cached_property
    def ood_structures(self) -> np.ndarray:
        """Ids of the test structures outside the calibration domain (structure score > 1), sorted."""
        if self.domain is None:
            return np.array([], dtype=np.int64)
        ids, flags = self.domain.structure_flags(self.test)
        return np.asarray(ids)[np.asarray(flags, dtype=bool)]

    def site_domain_scores(self, sites) -> np.ndarray | None:
        """Out-of-domain site scores (n,) of any sites (> 1 = outside), or None without a domain score."""
        return None if self.domain is None else np.asarray(self.domain.score(sites), dtype=np.float64)

    @cached_property
    def reference_levels(self) -> np.ndarray:
        """Global split-CP half-widths (n_test, k) at ``levels``, fitted on the calibration sites.

        Global split CP gives every site the conformal quantile of the calibration errors, so
        its widths at any level follow from those errors alone (no calibrator is refitted).
        """
        from core.calibration.conformal import conformal_quantile

        if "split" in self.labels and self.widths_levels.get("split") is not None:
            return self.widths_levels["split"]
        q = np.array([conformal_quantile(self.cal.errors, float(p)) for p in self.levels])
        return np.broadcast_to(q, (len(self.test), q.size))

    def level_index(self, level: float) -> int:
        return int(np.argmin(np.abs(self.levels - float(level))))

    def method_of(self, label: str) -> str:
        """The registry name of a label's method (``"flexible (shift)"`` -> ``"flexible"``)."""
        return next(v.method for v in self.evaluation.variants if v.label == label)

    def flexible_label(self) -> str | None:
        """The q_θ-based method shown by default: the registry's recommended one, else the first q_θ."""
        from core.calibration.registry import method_spec

        learned = [lab for lab in self.labels if self.method_of(lab).startswith("flexible")]
        recommended = [lab for lab in learned if method_spec(self.method_of(lab)).recommended]
        return (recommended or learned or [None])[0]

    def table(self):
        """The evaluation's table (one row per method)."""
        return self.evaluation.table()

    def results_frame(self):
        """The per-method table shown on the Calibrate page (index: method label)."""
        from app.notices import coverage_check

        table = self.table()
        table["coverage_check"] = [coverage_check(self.reports.get(lab, {})) for lab in table["label"]]
        for key in ("coverage_expected_lo", "coverage_expected_hi", "ood_fraction",
                    "coverage_in_domain", "coverage_out_of_domain"):
            if key not in table.columns:  # keys of the report that are not table columns
                table[key] = [_number(self.reports.get(lab, {}).get(key)) for lab in table["label"]]
        return table[[c for c in RESULT_COLUMNS if c in table.columns]].set_index("label")


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float, np.integer, np.floating)) else float("nan")


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


class TrainingJob:
    """Runs :func:`core.evaluation.evaluate` in a background thread; the page polls it.

    The thread never calls Streamlit. It appends q_θ epochs to ``history`` (the live loss
    curve) and the engine's log lines to ``messages``. When it ends, ``run`` holds a
    :class:`CalibrationRun`, or ``error`` a message (``status`` "failed" or "cancelled").
    """

    def __init__(self, partition, methods, *, confidence: float, options: dict | None = None,
                 bootstrap: int = 200, seed: int = 0, settings: dict | None = None,
                 provenance: dict | None = None):
        self.partition = partition
        self.methods = list(methods)
        self.confidence = float(confidence)
        self.options = dict(options or {})
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.settings = dict(settings or {})
        self.provenance = dict(provenance or {})
        self.history: list[dict] = []
        self.messages: list[str] = []
        self.status = "pending"
        self.error: str | None = None
        self.run: CalibrationRun | None = None
        self.started = time.perf_counter()
        self.finished: float | None = None
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control
    def start(self) -> "TrainingJob":
        self.status = "running"
        self._thread = threading.Thread(target=self._work, name="flexcal-training", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End q_θ training after this epoch (best weights kept); the other methods still fit."""
        self._stop.set()

    def cancel(self) -> None:
        """Abandon the job: q_θ stops and no further method is fitted; no results."""
        self._cancel.set()
        self._stop.set()

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

    # -- worker
    def _callback(self, epoch, train_loss, val_loss) -> bool:
        self.history.append({"epoch": int(epoch), "train_loss": float(train_loss),
                             "val_loss": None if val_loss is None else float(val_loss)})
        return self._stop.is_set()

    def _work(self) -> None:
        from core.evaluation import EvaluationCancelled, evaluate

        p = self.partition
        weights = {str(o.get("weights")) for o in self.options.values()}
        try:
            with torch_threads():  # q_θ is a tiny MLP: one intra-op thread is fastest
                ev = evaluate(
                    p.calibration, {TEST: p.test}, self.methods, confidence=self.confidence, seed=self.seed,
                    reference=p.reference, target=p.test if "shift" in weights else None,
                    method_options=self.options, bootstrap=self.bootstrap, log=self.messages.append,
                    epoch_callback=self._callback, should_stop=self._cancel.is_set,
                )
            if self._cancel.is_set():  # cancelled while the last method trained
                raise EvaluationCancelled("cancelled during the last method")
            self.run = CalibrationRun(ev, settings=self.settings, provenance=self.provenance, note=p.note,
                                      history=list(self.history),
                                      stopped_early=self._stop.is_set(), seconds=time.perf_counter() - self.started)
            self.status = "done"
        except EvaluationCancelled:
            self.error = "Calibration cancelled: nothing was fitted; press Train to start again."
            self.status = "cancelled"
        except Exception as exc:  # shown in the page's error box
            self.error = describe_error(exc)
            self.messages.append(f"{type(exc).__name__}: {exc}")
            self.status = "failed"
        finally:
            self.finished = time.perf_counter()
