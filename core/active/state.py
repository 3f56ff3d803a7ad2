"""One model of the loop: its potential, fitted calibrator (and heuristic), and its test metrics.

The per-round calibration metrics come from the evaluation engine (``core.evaluation.score``,
i.e. ``core.metrics.calibration_report`` on the test sites: the library's one metric
definition); force and energy errors are the potential's own accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.active.selection import frame_scores
from core.sites import SiteTable

__all__ = [
    "ModelState", "featurize_frames", "accuracy_metrics", "calibration_metrics", "pick_metrics", "check_updatable",
]

_NO_PICKS = {"pick_force_mae": np.nan, "pick_error_max": np.nan, "pick_uncertainty_mean": np.nan}
_NO_UPDATE = {"coverage_before_update": np.nan, "coverage_after_update": np.nan,
              "mean_width_after_update": np.nan, "n_update_sites": 0}


def featurize_frames(structures, potential, batch_size: int, *, labelled: bool) -> SiteTable:
    """``core.featurize.featurize`` without a cache: one forward pass per batch.

    Unlabelled MD candidates carry no meaningful errors (calibrators and heuristics never
    read errors in predict/score).
    """
    from core.featurize import featurize

    return featurize(list(structures), potential, batch_size=batch_size, labelled=labelled)


def accuracy_metrics(sites: SiteTable) -> dict[str, float]:
    """The potential's force (eV/Å) and energy (eV/atom) errors on labelled ``sites``."""
    diff = sites.forces_pred - sites.forces_ref
    info = sites.structure_info
    e_pred, e_ref = info.get("energy_pred"), info.get("energy_ref")
    energy_mae = np.nan
    if e_pred is not None and e_ref is not None:
        energy_mae = float(np.mean(np.abs(np.asarray(e_pred) - np.asarray(e_ref)) / info["n_atoms"]))
    return {
        "force_mae": float(np.mean(np.abs(diff))),
        "force_rmse": float(np.sqrt(np.mean(diff**2))),
        "force_error_max": float(np.max(sites.errors)),
        "energy_mae_per_atom": energy_mae,
    }


def calibration_metrics(calibrator, calibration: SiteTable, test: SiteTable, *, confidence: float,
                        reference: SiteTable | None = None) -> dict[str, float]:
    """Coverage, mean width (eV/Å), site and structure Spearman ρ of a fitted ``calibrator`` on ``test``.

    Scored by the library's evaluation engine (``core.evaluation.score``: predict, then
    ``core.metrics.calibration_report``) with ``calibration`` (the labelled sites the
    calibrator was fitted on) as its split-CP reference; an undefined ρ becomes NaN.
    """
    from core.evaluation import score

    ev = score({"calibrated": calibrator}, calibration, {"test": test}, confidence=confidence, reference=reference)
    report = ev.report("calibrated", "test")
    return {key: np.nan if report.get(key) is None else float(report[key])
            for key in ("coverage", "mean_width", "spearman", "structure_spearman")}


def pick_metrics(sites: SiteTable | None, uncertainties, strategy: str) -> dict[str, float]:
    """The previous model's errors on the picked frames and their mean uncertainty (NaN for random)."""
    if sites is None or len(sites) == 0:
        return dict(_NO_PICKS)
    diff = sites.forces_pred - sites.forces_ref
    return {
        "pick_force_mae": float(np.mean(np.abs(diff))),
        "pick_error_max": float(np.max(sites.errors)),
        "pick_uncertainty_mean": float(np.mean(uncertainties)) if strategy != "random" else np.nan,
    }


def check_updatable(calibrator) -> None:
    """TypeError unless ``calibrator`` has ``update(sites)`` and ``copy()`` (the recalibration contract)."""
    missing = [m for m in ("update", "copy") if not callable(getattr(calibrator, m, None))]
    if missing:
        raise TypeError(
            f"update_calibrator: the calibrator {type(calibrator).__name__} has no "
            f"{' or '.join(m + '()' for m in missing)} method; use a core.calibration calibrator or set update_calibrator=False"
        )


@dataclass
class ModelState:
    """A fitted model with its calibrator, optional heuristic and test-set evaluation.

    Attributes
    ----------
    model : path or Potential
        What the training function returned (or the initial model).
    potential : Potential
    calibrator : Calibrator
        Fitted on the calibration sites (or the training sites with ``calibrate_on="train"``).
    train_sites, calibration_sites, test_sites : SiteTable
        The training set's sites (reference of knn/gmm normalisation, METHOD §2), the
        calibration sites the calibrator was fitted on, and the test set's, all under this model.
    metrics : dict
        :func:`accuracy_metrics` + :func:`calibration_metrics` on the test sites, and
        ``n_calibration``.
    heuristic : Heuristic or None
        Fitted on ``train_sites`` (only for the ``"heuristic"`` strategy).
    """

    model: Any
    potential: Any
    calibrator: Any
    train_sites: SiteTable
    calibration_sites: SiteTable
    test_sites: SiteTable
    metrics: dict = field(default_factory=dict)
    heuristic: Any = None

    @classmethod
    def build(cls, model, train, calibration, test_set, config, load_fn) -> "ModelState":
        """Load ``model``, fit a fresh calibrator on ``calibration`` (None: on ``train``), evaluate on ``test_set``."""
        potential = model if callable(getattr(model, "compute", None)) else load_fn(model)
        train_sites = featurize_frames(train, potential, config.batch_size, labelled=True)
        if calibration is None:
            cal_sites = train_sites
        else:
            cal_sites = featurize_frames(calibration, potential, config.batch_size, labelled=True)
        calibrator = config.make_calibrator()
        calibrator.fit(cal_sites, reference=train_sites)
        test_sites = featurize_frames(test_set, potential, config.batch_size, labelled=True)
        metrics = accuracy_metrics(test_sites)
        metrics.update(calibration_metrics(calibrator, cal_sites, test_sites, confidence=config.confidence,
                                           reference=train_sites))
        metrics["n_calibration"] = len(train if calibration is None else calibration)
        return cls(model, potential, calibrator, train_sites, cal_sites, test_sites, metrics)

    def with_heuristic(self, config) -> "ModelState":
        """A copy whose heuristic (``config.make_heuristic()``) is fitted on the training sites."""
        heuristic = config.make_heuristic()
        heuristic.fit(self.train_sites)
        return replace(self, heuristic=heuristic)

    def frame_uncertainty(self, strategy: str, frames, config) -> np.ndarray:
        """One score per candidate frame (:func:`core.active.selection.frame_scores`)."""
        if strategy == "random" or not frames:
            return np.zeros(len(frames))
        sites = featurize_frames(frames, self.potential, config.batch_size, labelled=False)
        return frame_scores(strategy, sites, len(frames), calibrator=self.calibrator,
                            heuristic=self.heuristic, reduce=config.reduce)

    def recalibrated(self, new_sites: SiteTable | None) -> dict[str, float]:
        """Test coverage before and after ``update(new_sites)`` on a copy of this model's calibrator.

        ``new_sites``: labelled sites this model never trained on (the round's picks). The
        state's own calibrator is left as it is (it is shared between strategies in round 0).
        """
        if new_sites is None or len(new_sites) == 0:
            return dict(_NO_UPDATE)
        updated = self.calibrator.copy().update(new_sites)
        after = calibration_metrics(updated, self.calibration_sites, self.test_sites,
                                    confidence=float(updated.confidence), reference=self.train_sites)
        return {
            "coverage_before_update": self.metrics["coverage"],
            "coverage_after_update": after["coverage"],
            "mean_width_after_update": after["mean_width"],
            "n_update_sites": len(new_sites),
        }

    def row(self, strategy: str, round_: int, n_labels: int, info: dict, seconds: float) -> dict:
        """One row of the learning curves (:data:`core.active.result.CURVE_COLUMNS`)."""
        row = {"strategy": strategy, "round": round_, "n_labels": n_labels, "seconds": seconds,
               "n_candidates": 0, "md_stopped_early": False, **_NO_PICKS, **_NO_UPDATE}
        row.update(self.metrics)
        row.update(info)
        return row
