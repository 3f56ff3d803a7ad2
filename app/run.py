"""One finished calibration as the pages read it (:class:`CalibrationRun`; no Streamlit here).

It wraps the :class:`core.evaluation.Evaluation` of one training (its calibrators, widths at every
level, reports, out-of-domain flags) with what the pages need on top: the settings that produced it
(for the "results out of date" badge), the q_θ loss history and per-label views of the app's one
test split ``TEST``. :class:`app.job.TrainingJob` makes one; a saved session restores one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ("RESULT_COLUMNS", "TEST", "CalibrationRun")

TEST = "test"  # the app's one test split
RESULT_COLUMNS = (
    "label", "coverage", "coverage_expected_lo", "coverage_expected_hi", "coverage_check", "coverage_ci_lo",
    "coverage_ci_hi",
    "coverage_gap", "mean_width", "width_ratio", "spearman", "spearman_ci_lo", "spearman_ci_hi", "pearson",
    "auroc", "miscalibration_area", "worst_species_coverage", "pinball", "structure_spearman",
    "structure_auroc", "ood_fraction", "coverage_in_domain", "coverage_out_of_domain", "fit_seconds", "note",
)


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
