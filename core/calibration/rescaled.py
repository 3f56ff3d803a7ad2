"""RescaledCalibrator: a fitted calibrator whose scale is re-fixed by a few labels of a new domain.

The *shape* of the widths w_A(X) comes from a calibrator fitted on plentiful data of
domain (or level of theory) A; a small labelled budget of domain B fixes the *scale*.
With ratios r_i = e_i / w_A(X_i) on the budget sites and ĉ_p their finite-sample
conformal quantile at level p, the widths at level p are ĉ_p · w_A(X) (eV/Å). This is
normalised split CP with the A-fitted calibrator as the heuristic, so coverage on B
holds marginally for B structures exchangeable with the budget, whatever A was.

How it differs from ``base.copy().update(budget)``: ``update`` re-derives the base's
own factors (per species for Mondrian CP, per trained level for q_θ), while this
wrapper multiplies the base's widths *at its confidence* by one factor per level.
For global or heuristic-normalised split CP the two coincide (up to float round-off;
tested); for Mondrian CP and q_θ they differ, and ``update`` is the finer one.

Saved like every calibrator (kind ``"rescaled"``): the base's own state is stored in
the same ``.npz`` under the ``base__`` prefix, never pickled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.calibration.base import (
    Calibrator,
    calibrator_from_state,
    check_labelled,
    check_sites,
    nest_arrays,
    nested_arrays,
)
from core.calibration.conformal import conformal_quantile, quantiles_at_levels
from core.sites import SiteTable
from core.validation import check_levels

__all__ = ["RescaledCalibrator"]


class RescaledCalibrator(Calibrator):
    """Widths of a fitted ``base`` calibrator times a conformal factor fitted on new labelled sites.

    Parameters
    ----------
    base : Calibrator
        A fitted calibrator supplying w_A(X) through ``predict`` (at its own confidence).
        It is used read-only and shared, not copied: updating or refitting ``base``
        later changes this calibrator's widths (``base.copy()`` first to avoid that).
    confidence : float, default 0.9, keyword-only
        Target coverage on the new domain, in (0, 1).

    Attributes
    ----------
    scores_ : ndarray of shape (n_budget,)
        Ratios e / w_A on the sites given to :meth:`fit` (or the last :meth:`update`).
    factor_ : float
        ĉ at ``confidence`` (+inf when the budget is too small for it).
    n_update_sites_, n_update_structures_ : int
        Size of the last :meth:`update` (0 after a fresh fit).

    Examples
    --------
    >>> cal = RescaledCalibrator(fitted_on_a, confidence=0.9).fit(budget_b)   # doctest: +SKIP
    """

    kind = "rescaled"

    def __init__(self, base, *, confidence: float = 0.9):
        super().__init__(confidence)
        if not isinstance(base, Calibrator):
            raise TypeError(f"base: expected a fitted Calibrator, got {type(base).__name__}")
        self.base = base
        self.name = base.name
        self.label = f"{base.label} (rescaled)"
        self.scores_: np.ndarray | None = None
        self.factor_: float | None = None

    def get_params(self) -> dict[str, Any]:
        """JSON constructor parameters (the base is saved in the state, not here)."""
        return {"confidence": self.confidence}

    def clone(self) -> "RescaledCalibrator":
        """An unfitted wrapper around the same (fitted, shared) base."""
        return type(self)(self.base, confidence=self.confidence)

    @property
    def is_fitted(self) -> bool:
        return self.scores_ is not None

    def fit(self, sites: SiteTable, *, target=None, reference=None, callback=None) -> "RescaledCalibrator":
        """Fit the factor on labelled sites of the new domain (the budget).

        Parameters
        ----------
        sites : SiteTable
            Labelled sites of the new domain (errors in eV/Å).
        target, reference, callback
            Unused (accepted for the common calibrator interface); the base is already fitted.
        """
        if not self.base.is_fitted:
            raise ValueError(f"base: {type(self.base).__name__} ({self.base.name}) is not fitted; "
                             "fit it before wrapping it in RescaledCalibrator")
        check_labelled(sites)
        self._set_scores(sites)
        self._reset_update()
        return self

    def _set_scores(self, sites: SiteTable) -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            self.scores_ = sites.errors / np.asarray(self.base.predict(sites), dtype=np.float64)
        self.factor_ = conformal_quantile(self.scores_, self.confidence)
        self.n_calibration_structures_ = sites.n_structures

    def _update(self, sites: SiteTable, fine_tune: int) -> None:
        """Ratios of the new sites replace the budget's (same as refitting on them)."""
        if fine_tune:
            raise ValueError(f"fine_tune: a rescaled calibrator has nothing to fine-tune; use 0, got {fine_tune}")
        self._set_scores(sites)

    def predict(self, sites: SiteTable) -> np.ndarray:
        """Half-widths ĉ · w_A(X), ndarray (n,), eV/Å (may be +inf)."""
        self._check_fitted()
        check_sites(sites)
        return self.factor_ * np.asarray(self.base.predict(sites), dtype=np.float64)

    def predict_levels(self, sites: SiteTable, levels) -> np.ndarray:
        """Half-widths ĉ_p · w_A(X), ndarray (n, k), eV/Å, one column per level p (conformal ĉ_p exactly)."""
        self._check_fitted()
        check_sites(sites)
        levels = check_levels(levels)
        w = np.asarray(self.base.predict(sites), dtype=np.float64)
        factors = quantiles_at_levels(np.sort(self.scores_), levels)
        return w[:, None] * factors[None, :]

    # ------------------------------------------------------------------ I/O
    def _get_state(self):
        base_meta, base_arrays = self.base.get_state()
        return {"base": base_meta}, {"scores": self.scores_, **nest_arrays("base", base_arrays)}

    @classmethod
    def _from_saved(cls, params, state, arrays):
        base = calibrator_from_state(state["base"], nested_arrays("base", arrays))
        cal = cls(base, **params)
        cal._set_state(state, arrays)
        return cal

    def _set_state(self, state, arrays):
        scores = np.asarray(arrays["scores"], dtype=np.float64)
        if scores.ndim != 1:
            raise ValueError(f"scores: expected a 1-D array, got shape {scores.shape}")
        self.scores_ = scores
        self.factor_ = conformal_quantile(scores, self.confidence)
