"""What the active-learning loop returns: the learning-curve table and the picked frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CURVE_COLUMNS", "ActiveLearningResult", "labels_to_reach"]

#: Columns of :attr:`ActiveLearningResult.curves`, in order. One row per (strategy, round);
#: round r > 0 describes the model refitted after round r's picks. The calibration columns
#: (``coverage`` to ``structure_spearman``) are ``core.metrics.calibration_report`` on the
#: test sites, through the evaluation engine ``core.evaluation.score`` (one metric definition).
CURVE_COLUMNS = [
    "strategy",  # str
    "round",  # int, 0 = the shared initial model
    "n_labels",  # int, reference labels used for training so far (initial + picks)
    "n_calibration",  # int, labelled structures in the calibration set
    "force_mae",  # float, eV/Å, mean |F_pred - F_ref| over test force components
    "force_rmse",  # float, eV/Å, RMS over test force components
    "force_error_max",  # float, eV/Å, largest per-atom error norm on the test set
    "energy_mae_per_atom",  # float, eV/atom
    "coverage",  # float, test sites with error <= calibrated width
    "mean_width",  # float, eV/Å
    "spearman",  # float or NaN, site level rho(width, error) on the test set
    "structure_spearman",  # float or NaN, rho(max width, max error) over test structures
    "n_candidates",  # int, MD frames scored in this round (0 in round 0)
    "md_stopped_early",  # bool, MD left the sane region (see run_active_learning)
    "pick_force_mae",  # float, eV/Å, the *previous* model's force MAE on the frames picked this round
    "pick_error_max",  # float, eV/Å, its largest per-atom error norm on them
    "pick_uncertainty_mean",  # float, mean structure uncertainty of the picks (strategy's own score)
    # recalibration from new labels (issue 15): the *previous* model's calibrator, updated with
    # calibrator.update(sites of this round's picks) -- labelled frames of the explored region
    # that this model never trained on -- and evaluated again on the test sites.
    "coverage_before_update",  # float or NaN, the previous model's test coverage (= previous row's coverage)
    "coverage_after_update",  # float or NaN, its test coverage after update(); NaN in round 0 / update off
    "mean_width_after_update",  # float or NaN, eV/Å, its mean test width after update()
    "n_update_sites",  # int, labelled sites given to update() (0: no update this round)
    "seconds",  # float, wall time of this round (MD + labelling + refit + evaluation)
]


def labels_to_reach(curves, target: float, column: str = "force_mae") -> dict[str, int | None]:
    """Labels each strategy needed to bring ``column`` to ``target`` or below.

    Parameters
    ----------
    curves : pandas.DataFrame
        :attr:`ActiveLearningResult.curves` (columns ``strategy``, ``n_labels``, ``column``).
    target : float
        Target value (eV/Å for the force errors).
    column : str
        The curve column compared with ``target``.

    Returns
    -------
    dict of str -> int or None
        Smallest ``n_labels`` on each strategy's curve with ``column <= target`` (None when
        the curve never gets there); the curve is not interpolated between rounds.
    """
    missing = [c for c in ("strategy", "n_labels", column) if c not in curves.columns]
    if missing:
        raise ValueError(f"curves: missing column(s) {missing}; got {list(curves.columns)}")
    out: dict[str, int | None] = {}
    for strategy, part in curves.groupby("strategy", sort=False):
        part = part.sort_values("n_labels")
        hit = part[part[column] <= target]
        out[str(strategy)] = None if hit.empty else int(hit["n_labels"].iloc[0])
    return out


@dataclass
class ActiveLearningResult:
    """What :func:`core.active.run_active_learning` returns.

    Attributes
    ----------
    curves : pandas.DataFrame
        One row per (strategy, round), columns :data:`CURVE_COLUMNS`.
    picked : dict of str -> list of list of ase.Atoms
        ``picked[strategy][r - 1]``: the labelled frames that strategy picked in round r
        (``info["REF_energy"]``, ``arrays["REF_forces"]``, ``info["al_uncertainty"]``,
        ``info["al_round"]``, ``info["al_strategy"]``).
    test_set : list of ase.Atoms
        The fixed, reference-labelled test set.
    model_paths : dict of str -> list of Path
        ``model_paths[strategy][r]``: the model after round r (index 0: the shared initial one).
    settings : dict
        The configuration of the run (JSON-serialisable), see
        :meth:`ActiveLearningConfig.to_dict`, plus sizes and the wall time.
    """

    curves: Any
    picked: dict[str, list[list[Any]]]
    test_set: list[Any]
    model_paths: dict[str, list[Path]]
    settings: dict[str, Any] = field(default_factory=dict)

    def labels_to_reach(self, target: float, column: str = "force_mae") -> dict[str, int | None]:
        """See :func:`labels_to_reach`."""
        return labels_to_reach(self.curves, target, column)
