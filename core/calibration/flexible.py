"""FlexibleQuantile: the learned, environment-dependent quantile q_θ(X, Z) (METHOD §3).

The network, its loss and its training loop live in :mod:`core.calibration.qtheta`
(q_θ is trained on a by-structure training part with early stopping on a validation
part; weights from :mod:`core.calibration.weights` enter the pinball loss). This
module holds the calibrator: data splits, the conformal correction, prediction at
any level, recalibration (``update``) and save/load.

Conformal correction (``conformal=True``)
    A by-structure holdout (``holdout_fraction`` of the structures) is kept out
    of training; its ratios e / q_θ,τ give per-level factors ĉ_τ (weighted for
    the non-uniform schemes, per test site for ``shift``), see
    :mod:`core.calibration.correction`. Finally the widths ĉ_τ · q_θ,τ(X) are
    made monotone in the level by a cumulative maximum over the trained levels
    (per site), and ``predict`` returns the column at ``confidence``. This equals
    ĉ · q_θ(X) whenever the corrected quantiles do not cross (the usual case) and
    otherwise only widens, so the coverage guarantee is kept.

Recalibration (``update(new_sites, fine_tune=0)``)
    Ratios e / q_θ,τ on labelled sites of the new domain replace the holdout's, so
    every ĉ_τ is re-derived there (weighted as at fit for uniform/structure/species;
    shift and array weights describe the old data, so new sites count uniformly).
    ``fine_tune`` = k > 0 first trains q_θ k more epochs on half of the new
    structures (seeded); ĉ comes from the other half, exchangeable with new tests.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

from core.calibration.base import Calibrator, check_labelled, check_sites, nest_arrays, nested_arrays
from core.calibration.correction import HoldoutCorrection, widths_at_requested_levels
from core.calibration.qtheta import (
    EPS as _EPS,
    MIN_STEPS_PER_EPOCH,
    build_quantile_model,
    quantile_mlp_class,
    raw_quantiles,
    robust_moments,
    species_index,
    structure_parts,
    torch_module,
    train_quantile_model,
)
from core.calibration.weights import (
    UniformWeights,
    check_weight_array,
    make_weight_scheme,
    weight_scheme_from_state,
)
from core.sites import SiteTable, split_structure_ids
from core.validation import check_bool, check_float, check_int, check_levels, check_seed

__all__ = ["DEFAULT_LEVELS", "MIN_STEPS_PER_EPOCH", "FlexibleQuantile"]

#: Trained levels by default: 0.05, 0.10, ..., 0.95 (the METHOD §4 calibration grid) and 0.99.
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20)) + (0.99,)

_LEVEL_ATOL = 1e-9  # a requested level this close to a trained one uses that level's column


class FlexibleQuantile(Calibrator):
    """Learned quantile function q_θ(X, Z) with a conformal correction (the paper's method).

    Parameters
    ----------
    confidence : float, default 0.9
        Target coverage 1 - α, in (0, 1); always one of the trained levels.
    levels : sequence of float, default :data:`DEFAULT_LEVELS`
        Quantile levels trained jointly (sorted, duplicates dropped, ``confidence``
        added). The default grid 0.05..0.95 (step 0.05) + 0.99 makes
        ``predict_levels`` exact on the METHOD §4 calibration curve.
        This and all following parameters are keyword-only.
    hidden : tuple of int, default (64, 64)
        Hidden layer sizes (SiLU).
    weights : {"uniform", "structure", "species", "shift"}, array of shape (n_sites,) or WeightScheme
        Per-site weights of the pinball loss and the conformal correction;
        ``"shift"`` needs ``target`` in :meth:`fit`. An instance is cloned at fit
        (``weight_scheme_`` is the fitted clone), never fitted in place.
    conformal : bool, default True
        Apply the conformal correction on a by-structure holdout.
    holdout_fraction : float, default 0.25
        Fraction of structures held out for the correction (ignored when ``conformal=False``).
    validation_fraction : float, default 0.2
        Fraction of the remaining structures used for early stopping; 0 disables
        early stopping (``max_epochs`` epochs are run).
    max_epochs : int, default 200
    batch_size : int, default 2048
        Upper bound on the mini-batch size. Small data sets use smaller batches so
        that every epoch takes at least ``MIN_STEPS_PER_EPOCH`` (16) optimiser steps
        (batches of at least 32 sites): with ~500 sites a single 2048 batch would
        give one step per epoch and early stopping would end training before q_θ
        has learned anything.
    lr : float, default 3e-3
        AdamW learning rate (also used by ``update(..., fine_tune=k)``).
    weight_decay : float, default 1e-4
    patience : int, default 20
        Epochs without a validation improvement (relative 1e-4) before stopping.
    seed : int, default 0

    Attributes
    ----------
    levels_ : ndarray of shape (K,)
        Trained levels (sorted; includes ``confidence``).
    scale_ : float
        Median training error (eV/Å); q_θ is trained on e / scale_.
    history_ : list of dict
        One dict per epoch: ``epoch`` (1-based), ``train_loss``, ``val_loss`` (NaN without validation).
    best_epoch_ : int
        Epoch whose weights were kept.
    stop_reason_ : str
        ``"patience"``, ``"callback"`` or ``"max_epochs"``.
    corrections_ : ndarray of shape (K,)
        ĉ per trained level (1.0 without correction; for ``shift`` the value at the
        mean target density ratio, see ``correction_``).
    correction_ : float
        ĉ at ``confidence``. For ``shift`` weights, ĉ is computed per test site at predict
        time; this is its value at the mean density ratio of the ``target`` sites.
    holdout_scores_ : ndarray of shape (n_holdout, K)
        e / q_θ,τ on the holdout sites (after :meth:`update`: on the update's scoring sites).
    holdout_weights_ : ndarray of shape (n_holdout,)
    weight_scheme_ : WeightScheme
        The fitted clone of ``weights``.
    correction_weights_ : WeightScheme
        The scheme the holdout weights come from (``weight_scheme_``, or uniform after an
        update of a ``shift``/array-weighted q_θ).
    fine_tune_history_ : list of dict
        Epochs of the last ``update(..., fine_tune=k)`` ([] otherwise).
    n_update_sites_, n_update_structures_, n_calibration_structures_ : int
        Size of the last :meth:`update` (0 after a fresh fit); structures behind ĉ.
    fit_seconds_ : float
    """

    kind = "flexible_quantile"
    name = "flexible"
    label = "q_θ (flexible)"

    def __init__(
        self,
        confidence: float = 0.9,
        *,
        levels=DEFAULT_LEVELS,
        hidden=(64, 64),
        weights="uniform",
        conformal: bool = True,
        holdout_fraction: float = 0.25,
        validation_fraction: float = 0.2,
        max_epochs: int = 200,
        batch_size: int = 2048,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        patience: int = 20,
        seed: int = 0,
    ):
        super().__init__(confidence)
        self.levels = tuple(float(p) for p in check_levels(levels))
        bad_hidden = f"hidden: expected a sequence of positive layer sizes, e.g. (64, 64), got {hidden!r}"
        try:
            hidden_t = tuple(hidden) if not isinstance(hidden, (int, np.integer)) else (hidden,)
        except TypeError:
            raise ValueError(bad_hidden) from None
        if not hidden_t or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in hidden_t):
            raise ValueError(bad_hidden)
        self.hidden = tuple(int(h) for h in hidden_t)
        self.weights = make_weight_scheme(weights)
        self.conformal = check_bool("conformal", conformal)
        self.holdout_fraction = check_float("holdout_fraction", holdout_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        self.validation_fraction = check_float("validation_fraction", validation_fraction, 0.0, 1.0, hi_open=True)
        self.max_epochs = check_int("max_epochs", max_epochs, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.lr = check_float("lr", lr, 0.0, math.inf, lo_open=True, hi_open=True)
        self.weight_decay = check_float("weight_decay", weight_decay, 0.0, math.inf, hi_open=True)
        self.patience = check_int("patience", patience, 1)
        self.seed = check_seed(seed)
        self.label = "q_θ (flexible)" if self.conformal else "q_θ (uncorrected)"
        self.model_ = None
        self.fine_tune_history_: list[dict] = []

    def get_params(self) -> dict[str, Any]:
        return {
            "confidence": self.confidence,
            "levels": list(self.levels),
            "hidden": list(self.hidden),
            "weights": self.weights.name,
            "conformal": self.conformal,
            "holdout_fraction": self.holdout_fraction,
            "validation_fraction": self.validation_fraction,
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "patience": self.patience,
            "seed": self.seed,
        }

    def _clone_params(self) -> dict[str, Any]:
        return {**self.get_params(), "weights": self.weights.clone()}

    @property
    def is_fitted(self) -> bool:
        return self.model_ is not None

    # ----------------------------------------------------------------- data
    def _trained_levels(self) -> np.ndarray:
        return np.unique(np.round(np.r_[np.asarray(self.levels), self.confidence], 12))

    def _inputs(self, sites: SiteTable, rows: np.ndarray | slice):
        """(standardised x float32 tensor (m, d), species-index int64 tensor (m,)) of the selected rows.

        Used for training and validation; inference (:meth:`_raw`) folds the same
        standardisation into the first layer instead (equal up to float32 round-off).
        """
        torch = torch_module()
        x = torch.from_numpy(np.ascontiguousarray(sites.descriptors[rows], dtype=np.float32))
        x = (x - self._mean32) * self._inv_std32
        return x, species_index(self.species_, sites.species[rows])

    def _set_standardisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        torch = torch_module()
        self.x_mean_ = np.asarray(mean, dtype=np.float64)
        self.x_std_ = np.asarray(std, dtype=np.float64)
        self._mean32 = torch.from_numpy(self.x_mean_.astype(np.float32))
        self._inv_std32 = torch.from_numpy((1.0 / self.x_std_).astype(np.float32))

    def _split(self, sites: SiteTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boolean masks (fit, validation, holdout) of the sites, all by structure."""
        return structure_parts(sites, self.holdout_fraction if self.conformal else 0.0,
                               self.validation_fraction, self.seed)

    def _training_tensors(self, sites: SiteTable, rows: np.ndarray, weights: np.ndarray, normalise: str) -> tuple:
        """(x, z, y, w) tensors of ``rows``: y = e / scale_, w normalised to mean 1 ("mean") or sum 1 ("sum")."""
        torch = torch_module()
        x, z = self._inputs(sites, rows)
        y = torch.from_numpy((sites.errors[rows] / self.scale_).astype(np.float32))
        w = weights / (np.mean(weights) if normalise == "mean" else np.sum(weights))
        return x, z, y, torch.from_numpy(w.astype(np.float32))

    # ------------------------------------------------------------------ fit
    def fit(self, sites: SiteTable, *, target: SiteTable | None = None, reference: SiteTable | None = None,
            callback: Callable[[int, float, float], Any] | None = None) -> "FlexibleQuantile":
        """Train q_θ and, if ``conformal``, compute the correction on a by-structure holdout.

        Parameters
        ----------
        sites : SiteTable
            Labelled calibration sites (descriptors (n, d), species, errors in eV/Å);
            unlabelled ones (errors=None) are refused.
        target : SiteTable, optional
            Unlabelled target-domain sites; required by ``weights="shift"``, unused otherwise.
        reference : SiteTable, optional
            Unused by q_θ (accepted for the common calibrator interface).
        callback : callable(epoch, train_loss, val_loss) -> bool or None, optional
            Called after every epoch; returning True stops training (best weights are kept).

        Returns
        -------
        self
        """
        t_start = time.perf_counter()
        check_labelled(sites)
        if target is not None:
            check_sites(target, "target")
        if callback is not None and not callable(callback):
            raise TypeError(
                f"callback: expected a callable(epoch, train_loss, val_loss), got {type(callback).__name__}"
            )
        scheme = self.weights.clone().fit(sites, target)
        w_all = check_weight_array(scheme.weights(sites), len(sites))
        fit_m, val_m, hold_m = self._split(sites)
        if not np.any(w_all[fit_m] > 0):
            raise ValueError("weights: all training-part weights are zero")

        self.levels_ = self._trained_levels()
        self.level_index_ = int(np.flatnonzero(np.isclose(self.levels_, self.confidence, atol=_LEVEL_ATOL))[0])
        trainval = fit_m | val_m
        self._set_standardisation(*robust_moments(np.asarray(sites.descriptors[trainval], dtype=np.float64)))
        self.species_ = np.unique(sites.species[trainval])
        e_fit = sites.errors[fit_m]
        scale = float(np.median(e_fit))
        if not scale > 0:
            scale = float(np.mean(e_fit)) if np.mean(e_fit) > 0 else 1.0
        self.scale_ = scale

        fit_rows, val_rows = np.flatnonzero(fit_m), np.flatnonzero(val_m)
        train = self._training_tensors(sites, fit_rows, w_all[fit_rows], "mean")
        has_val = val_rows.size > 0 and np.any(w_all[val_rows] > 0)
        validation = self._training_tensors(sites, val_rows, w_all[val_rows], "sum") if has_val else None
        model = build_quantile_model(sites.n_descriptors, self.species_.size, self.hidden, self.levels_,
                                     train[2].numpy(), w_all[fit_rows] / np.mean(w_all[fit_rows]), self.seed)
        self.history_, self.best_epoch_, self.stop_reason_ = train_quantile_model(
            model, self.levels_, train, validation, max_epochs=self.max_epochs, batch_size=self.batch_size,
            lr=self.lr, weight_decay=self.weight_decay, patience=self.patience, shuffle_seed=self.seed + 2,
            callback=callback)
        self.model_ = model
        self.weight_scheme_ = scheme
        self.correction_weights_ = scheme
        self.fine_tune_history_ = []

        hold_rows = np.flatnonzero(hold_m)
        if self.conformal:
            self.holdout_scores_ = sites.errors[hold_rows][:, None] / self._raw(sites, hold_rows)
            self.holdout_weights_ = w_all[hold_rows]
            self.n_calibration_structures_ = int(np.unique(sites.structure_ids[hold_rows]).size)
        else:
            self.holdout_scores_ = np.zeros((0, self.levels_.size))
            self.holdout_weights_ = np.zeros(0)
        self._prepare_correction(target)
        self._reset_update()
        self.fit_seconds_ = time.perf_counter() - t_start
        return self

    def _raw(self, sites: SiteTable, rows: np.ndarray | None = None) -> np.ndarray:
        """Uncorrected q_θ at every trained level, ndarray (m, K) float64, eV/Å."""
        return raw_quantiles(self.model_, sites, rows, self.x_mean_, self.x_std_, self.species_, self.scale_)

    # --------------------------------------------------------------- update
    def _update(self, sites: SiteTable, fine_tune: int) -> None:
        """New-domain ratios e / q_θ,τ replace the holdout's; optional fine-tuning on half the structures."""
        if not self.conformal:
            raise ValueError("update: this q_θ was fitted with conformal=False, so it has no conformal factor "
                             "to re-derive; fit it with conformal=True")
        self._check_descriptors(sites)
        scheme = self.weight_scheme_ if self.weight_scheme_.intrinsic else UniformWeights()
        if fine_tune:
            sites = self._fine_tune(sites, scheme, fine_tune)
        else:
            self.fine_tune_history_ = []
        weights = check_weight_array(scheme.weights(sites), len(sites), "weights of the update sites")
        self.holdout_scores_ = sites.errors[:, None] / self._raw(sites)
        self.holdout_weights_ = weights
        self.correction_weights_ = scheme
        self.n_calibration_structures_ = sites.n_structures
        self._prepare_correction(None)

    def _fine_tune(self, sites: SiteTable, scheme, epochs: int) -> SiteTable:
        """Train q_θ ``epochs`` more epochs on half the structures of ``sites``; return the other half."""
        ids = sites.unique_structures
        if ids.size < 2:
            raise ValueError(f"fine_tune: needs at least 2 structures in sites (half fine-tune q_θ, half "
                             f"re-derive the conformal factor), got {ids.size}; use fine_tune=0")
        tune_ids, score_ids = split_structure_ids(ids, 0.5, self.seed + 3)
        tune = sites.select_structures(tune_ids)
        w = check_weight_array(scheme.weights(tune), len(tune), "weights of the update sites")
        train = self._training_tensors(tune, np.arange(len(tune)), w, "mean")
        self.fine_tune_history_, _, _ = train_quantile_model(
            self.model_, self.levels_, train, None, max_epochs=epochs, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, patience=self.patience, shuffle_seed=self.seed + 3)
        return sites.select_structures(score_ids)

    # ----------------------------------------------------------- correction
    def _prepare_correction(self, target: SiteTable | None) -> None:
        """ĉ per trained level (and, for ``shift``, the sorted holdout ratios for per-site ĉ)."""
        corr = HoldoutCorrection(self.holdout_scores_, self.holdout_weights_, self.levels_,
                                 self.correction_weights_, conformal=self.conformal, target=target)
        self._holdout_correction = corr
        self._shift = corr.shift
        self.corrections_ = corr.corrections
        self.correction_ = float(self.corrections_[self.level_index_])
        if corr.reference_weight is not None:
            self.shift_reference_weight_ = corr.reference_weight

    def _corrected(self, sites: SiteTable) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(raw q_θ (n, K), corrected level-monotone widths (n, K), density ratios (n,) or None), eV/Å."""
        raw = self._raw(sites)
        if not self.conformal:
            return raw, raw.copy(), None
        ratios = None
        if self._shift:
            ratios = self.correction_weights_.weights(sites)
            c = self._holdout_correction.site_factors(ratios)
        else:
            c = self.corrections_[None, :]
        w = raw * c  # raw > 0, so an infinite factor gives +inf, never NaN
        return raw, np.maximum.accumulate(w, axis=1), ratios

    # -------------------------------------------------------------- predict
    def predict_uncorrected(self, sites: SiteTable) -> np.ndarray:
        """q_θ at ``confidence`` without the conformal factor, ndarray (n,), eV/Å."""
        self._check_fitted()
        check_sites(sites)
        self._check_descriptors(sites)
        return self._raw(sites)[:, self.level_index_]

    def predict(self, sites: SiteTable) -> np.ndarray:
        """Calibrated half-widths at ``confidence``, ndarray (n,), eV/Å (+inf if the holdout was too small)."""
        self._check_fitted()
        check_sites(sites)
        self._check_descriptors(sites)
        if not self.conformal or self._shift:
            return self._corrected(sites)[1][:, self.level_index_]
        j = self.level_index_ + 1  # the level-monotone width at confidence: the max over levels up to it
        return (self._raw(sites)[:, :j] * self.corrections_[None, :j]).max(axis=1)  # (cheaper than all K)

    def predict_levels(self, sites: SiteTable, levels) -> np.ndarray:
        """Calibrated half-widths at several levels, ndarray (n, k), eV/Å, non-decreasing in the level.

        A level equal to a trained one (``levels_``) uses its column. Between two
        trained levels the widths are linearly interpolated in the level; below
        the lowest one they are interpolated linearly towards 0 at level 0.
        Above the highest trained level, with ``conformal=True`` the factor is
        re-derived on the holdout at the requested level using the highest
        trained quantile as the normaliser (exact split CP, never below the
        highest trained column); without correction the highest trained column
        is repeated (an under-estimate).
        """
        self._check_fitted()
        check_sites(sites)
        self._check_descriptors(sites)
        req = check_levels(levels)
        raw, w, ratios = self._corrected(sites)
        lv = self.levels_

        def above(p: float) -> np.ndarray:
            if not self.conformal:
                return w[:, -1]
            return np.maximum(raw[:, -1] * self._holdout_correction.factor(lv.size - 1, p, ratios), w[:, -1])

        return widths_at_requested_levels(lv, w, req, above, _LEVEL_ATOL)

    def _check_descriptors(self, sites: SiteTable) -> None:
        d = self.x_mean_.shape[0]
        if sites.n_descriptors != d:
            raise ValueError(f"sites: descriptors have {sites.n_descriptors} columns, but q_θ was fitted on {d}")

    # ------------------------------------------------------------------ I/O
    def _get_state(self):
        w_meta, w_arrays = self.weight_scheme_.get_state()
        same = self.correction_weights_ is self.weight_scheme_
        state = {
            "scale": self.scale_,
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "stop_reason": self.stop_reason_,
            "weights": w_meta,
            "correction_weights": None if same else self.correction_weights_.name,
            "fine_tune_history": self.fine_tune_history_,
            "shift_reference_weight": getattr(self, "shift_reference_weight_", None),
        }
        arrays = {
            "levels": self.levels_,
            "x_mean": self.x_mean_,
            "x_std": self.x_std_,
            "species": self.species_,
            "holdout_scores": self.holdout_scores_,
            "holdout_weights": self.holdout_weights_,
            "corrections": self.corrections_,
        }
        arrays.update(nest_arrays("model", {k: v.detach().cpu().numpy() for k, v in self.model_.state_dict().items()}))
        arrays.update(nest_arrays("weights", w_arrays))
        return state, arrays

    @classmethod
    def _from_saved(cls, params, state, arrays):
        params = dict(params)
        if params.get("weights") == "array":  # values are restored with the state below
            params["weights"] = "uniform"
        cal = cls(**params)
        cal._set_state(state, arrays)
        return cal

    def _set_state(self, state, arrays):
        torch = torch_module()
        self.levels_ = np.asarray(arrays["levels"], dtype=np.float64)
        self.level_index_ = int(np.flatnonzero(np.isclose(self.levels_, self.confidence, atol=_LEVEL_ATOL))[0])
        self._set_standardisation(arrays["x_mean"], arrays["x_std"])
        self.species_ = np.asarray(arrays["species"], dtype=np.int64)
        self.holdout_scores_ = np.asarray(arrays["holdout_scores"], dtype=np.float64).reshape(-1, self.levels_.size)
        self.holdout_weights_ = np.asarray(arrays["holdout_weights"], dtype=np.float64)
        self.scale_ = float(state["scale"])
        self.history_ = list(state.get("history", []))
        self.best_epoch_ = int(state.get("best_epoch", 0))
        self.stop_reason_ = state.get("stop_reason", "")
        self.fine_tune_history_ = list(state.get("fine_tune_history") or [])
        self.weight_scheme_ = weight_scheme_from_state(state["weights"], nested_arrays("weights", arrays))
        self.weights = self.weight_scheme_.clone()
        name = state.get("correction_weights")
        self.correction_weights_ = self.weight_scheme_ if name is None else make_weight_scheme(name)
        model = quantile_mlp_class()(self.x_mean_.size, self.species_.size, self.hidden, self.levels_.size, _EPS)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in nested_arrays("model", arrays).items()})
        model.eval()
        self.model_ = model
        self._prepare_correction(None)
        # the shift summary used the target at fit time; keep the saved values
        self.corrections_ = np.asarray(arrays["corrections"], dtype=np.float64)
        self.correction_ = float(self.corrections_[self.level_index_])
        if state.get("shift_reference_weight") is not None:
            self.shift_reference_weight_ = float(state["shift_reference_weight"])
