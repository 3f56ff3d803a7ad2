"""FlexibleOOD (method ``flexible-ood``): q_θ whose widths grow off the calibration domain (METHOD §6).

Widths
    w_τ(X) = ĉ_τ · q_θ,τ(X) · g(S(X)),   g(S) = max(1, S / S₀)^β

* q_θ is :class:`~core.calibration.flexible.FlexibleQuantile`'s network, trained exactly as
  ``flexible`` trains it (same by-structure training/validation parts for the same seed), so
  in-domain the shape is q_θ's.
* S(X) is the **structure's** mean distance ratio: each atom's standardised k-NN distance to the
  domain set (the potential's training set ``reference`` when given, else the training part of
  the calibration set, leave-one-structure-out) divided by the median for its species
  (:class:`core.domain.DomainScore`, ``ratios``), averaged over the atoms of its structure
  (sites sharing a ``structure_id`` in the table passed to ``predict``). A hotter MD frame is
  a little further from the training data at every atom, and *all* its atoms' errors grow: the
  per-structure mean sees that where the per-site distance is noisy (measured, METHOD §6).
* S₀ is the median of S over the calibration training part's structures, so about half of the
  in-domain structures have g = 1 and the rest a mild factor.
* β = clip(b̂, ``min_power``, ``max_power``), b̂ the slope of the level-``confidence`` linear
  quantile regression of log(e / q_θ) on log(S / S₀) over the training part: errors are
  assumed to grow at least proportionally to S beyond S₀ (β ≥ 1, the law kNN-normalised CP
  assumes for every site), faster when the calibration data show it.
* ĉ_τ is the conformal quantile, at level τ, of e / (q_θ,τ · g) on the by-structure holdout
  (``holdout_fraction`` of the structures, never used for q_θ, S₀ or β). q_θ, S₀ and β are fixed
  before the holdout is touched, so the marginal split-conformal guarantee
  P(e ≤ w) ≥ confidence holds for in-domain structures exactly as for ``flexible``. Off the
  domain no guarantee is possible; g makes the widths grow with the distance.

Shared neighbours: the distance factor and the out-of-domain flags need the same k-NN search of
the domain set. ``nb = cal.neighbours(sites)`` makes it once; ``predict(sites, neighbours=nb)``,
``predict_levels(..., neighbours=nb)``, ``ood_flags(sites, neighbours=nb)`` and
``cal.domain_.score/structure_scores(sites, neighbours=nb)`` reuse it (what
``core.apply.annotate_sites`` does). Without ``neighbours`` each call searches on its own; the
widths are identical either way.

Widths are made monotone in the level (cumulative maximum over the trained levels, which can only
widen); ``predict_levels`` interpolates between trained levels as FlexibleQuantile does.
``update(new_sites)`` re-derives ĉ_τ from labelled sites of a new domain (q_θ, S₀, β kept).
Saved as arrays + JSON: q_θ and the domain score are nested states (``qtheta__``, ``domain__``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from core.calibration.base import Calibrator, check_labelled, check_sites, nest_arrays, nested_arrays
from core.calibration.correction import HoldoutCorrection, widths_at_requested_levels
from core.calibration.flexible import FlexibleQuantile
from core.calibration.qtheta import structure_parts
from core.calibration.weights import UniformWeights
from core.domain import DomainScore, Neighbours, structure_reduce
from core.sites import SiteTable
from core.validation import check_float, check_fraction, check_int, check_levels, check_seed

__all__ = ["FlexibleOOD", "quantile_slope"]

_LEVEL_ATOL = 1e-9
_RESERVED = ("confidence", "seed", "conformal", "holdout_fraction")
_SLOPE_GRID = np.round(np.arange(-2.0, 6.0001, 0.02), 4)


def quantile_slope(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """Slope b of the linear level-``level`` quantile regression y ≈ a + b·x (pinball loss).

    For a fixed b the best intercept is the ``level`` quantile of y − b·x, and the remaining loss
    is convex in b; it is minimised on a grid of step 0.02 over [−2, 6] (slopes outside are
    clipped by the caller anyway). x, y: (n,) finite arrays.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        return 0.0
    best, best_b = np.inf, 0.0
    for b in _SLOPE_GRID:
        r = y - b * x
        r = r - np.quantile(r, level)
        loss = float(np.sum(np.maximum(level * r, (level - 1.0) * r)))
        if loss < best:
            best, best_b = loss, float(b)
    return best_b


class FlexibleOOD(Calibrator):
    """q_θ × a fitted, monotone distance factor: sharp in-domain, widening off-domain.

    Parameters
    ----------
    confidence : float, default 0.9
        Target coverage, in (0, 1).
    seed : int, default 0
        Seeds q_θ, the holdout split and the domain subset (keyword-only, as all below).
    k : int, default 5
        Neighbours of the distance (:class:`core.domain.DomainScore`).
    min_power, max_power : float, default 1.0 and 3.0
        Bounds of the exponent β of g (``min_power`` = 0 lets the data choose any growth ≥ 0).
    holdout_fraction : float, default 0.25
        Fraction of the calibration structures held out for the conformal factor.
    **q_theta_options
        Any other :class:`FlexibleQuantile` parameter (``levels``, ``hidden``, ``max_epochs``,
        ``weights`` (pinball-loss weights of q_θ; the conformal factor is always unweighted), ...).

    Attributes (after fit)
    ----------------------
    qtheta_ : FlexibleQuantile
        The uncorrected q_θ (``conformal=False``), trained on the non-holdout structures.
    domain_ : DomainScore
        Fitted on the training part (with ``reference`` when given); also the out-of-domain flags.
    s0_ : float
        S₀, the median structure distance ratio of the training part.
    power_ : float
        β. ``fitted_power_``: the unclipped regression slope b̂.
    levels_, corrections_ (K,), correction_ : as FlexibleQuantile.
    holdout_scores_ : ndarray (n_holdout, K)
        e / (q_θ,τ · g) on the holdout (after :meth:`update`: on the update's sites).
    """

    kind = "flexible_ood"
    name = "flexible-ood"
    label = "q_θ × distance (flexible-ood)"

    def __init__(self, confidence: float = 0.9, *, seed: int = 0, k: int = 5, min_power: float = 1.0,
                 max_power: float = 3.0, holdout_fraction: float = 0.25, **q_theta_options):
        super().__init__(confidence)
        self.seed = check_seed(seed)
        self.k = check_int("k", k, 1)
        self.min_power = check_float("min_power", min_power, 0.0, 10.0)
        self.max_power = check_float("max_power", max_power, 0.0, 10.0)
        if self.max_power < self.min_power:
            raise ValueError(f"max_power: expected a number >= min_power ({self.min_power:g}), got {max_power!r}")
        self.holdout_fraction = check_fraction("holdout_fraction", holdout_fraction)
        bad = sorted(set(q_theta_options) & set(_RESERVED))
        if bad:
            raise TypeError(f"q_theta_options: {bad} are set by FlexibleOOD itself, not passed to q_θ")
        # validate the q_θ options now (a bad one fails here, not at fit)
        FlexibleQuantile(self.confidence, seed=self.seed, conformal=False, **q_theta_options)
        self.q_theta_options = dict(q_theta_options)
        self.qtheta_: FlexibleQuantile | None = None

    def get_params(self) -> dict[str, Any]:
        q = FlexibleQuantile(self.confidence, seed=self.seed, conformal=False, **self.q_theta_options).get_params()
        extra = {k: q[k] for k in self.q_theta_options}
        return {"confidence": self.confidence, "seed": self.seed, "k": self.k, "min_power": self.min_power,
                "max_power": self.max_power, "holdout_fraction": self.holdout_fraction, **extra}

    def _clone_params(self) -> dict[str, Any]:
        params = self.get_params()
        if "weights" in self.q_theta_options and not isinstance(self.q_theta_options["weights"], str):
            params["weights"] = self.q_theta_options["weights"]
        return params

    @property
    def is_fitted(self) -> bool:
        return self.qtheta_ is not None

    # ------------------------------------------------------------------ fit
    def fit(self, sites: SiteTable, *, target: SiteTable | None = None, reference: SiteTable | None = None,
            callback: Callable[[int, float, float], Any] | None = None) -> "FlexibleOOD":
        """Train q_θ, fit the domain score, S₀ and β on the training part; ĉ on the holdout.

        Parameters
        ----------
        sites : SiteTable
            Labelled calibration sites (errors in eV/Å).
        target : SiteTable, optional
            Passed to q_θ (used only by ``weights="shift"``).
        reference : SiteTable, optional
            The potential's training sites: the domain the distance is measured from.
            Without it, the calibration training part (leave-one-structure-out).
        callback : callable(epoch, train_loss, val_loss), optional
            q_θ's epoch callback (returning True stops training).
        """
        t0 = time.perf_counter()
        check_labelled(sites)
        if reference is not None:
            check_sites(reference, "reference")
        fit_m, _, hold_m = structure_parts(sites, self.holdout_fraction, 0.0, self.seed)
        train, hold = sites.select(fit_m), sites.select(hold_m)
        q = FlexibleQuantile(self.confidence, seed=self.seed, conformal=False, **self.q_theta_options)
        q.fit(train, target=target, callback=callback)
        domain = DomainScore(self.k, seed=self.seed).fit(train, reference=reference)
        self.qtheta_, self.domain_ = q, domain
        self.levels_ = q.levels_
        self.level_index_ = q.level_index_

        # S of the training structures from the null distances (leave-one-structure-out or to reference)
        rho = domain._ratios(domain.null_distances_, train.species)
        ids, s_struct = structure_reduce(train.structure_ids, rho, "mean")
        self.s0_ = max(float(np.median(s_struct)), 1e-12)
        s_site = s_struct[np.searchsorted(ids, train.structure_ids)]
        q_conf = q._raw(train)[:, self.level_index_]
        keep = (train.errors > 0) & np.isfinite(s_site)
        x = np.log(s_site[keep] / self.s0_)
        y = np.log(train.errors[keep] / q_conf[keep])
        self.fitted_power_ = quantile_slope(x, y, self.confidence)
        self.power_ = float(np.clip(self.fitted_power_, self.min_power, self.max_power))

        self._set_scores(hold)
        self._reset_update()
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _set_scores(self, sites: SiteTable) -> None:
        """Ratios e / (q_θ,τ · g) of labelled ``sites`` and the conformal factors they give."""
        self.holdout_scores_ = sites.errors[:, None] / self._shape(sites)
        self._prepare_correction()

    def _prepare_correction(self) -> None:
        n = self.holdout_scores_.shape[0]
        self._correction = HoldoutCorrection(self.holdout_scores_, np.ones(n), self.levels_, UniformWeights())
        self.corrections_ = self._correction.corrections
        self.correction_ = float(self.corrections_[self.level_index_])

    def _update(self, sites: SiteTable, fine_tune: int) -> None:
        """New-domain ratios e / (q_θ,τ · g) replace the holdout's (q_θ, S₀ and β are kept)."""
        if fine_tune:
            raise ValueError(f"fine_tune: flexible-ood re-derives its conformal factor only; use 0, got {fine_tune}")
        self._check_descriptors(sites)
        self._set_scores(sites)

    # -------------------------------------------------------------- predict
    def neighbours(self, sites: SiteTable) -> Neighbours:
        """The k-NN search of ``sites`` against the domain set, made once for every ``neighbours=`` below
        and for ``domain_.score``/``structure_scores`` (:meth:`core.domain.DomainScore.neighbours`)."""
        self._check_fitted()
        check_sites(sites)
        self._check_descriptors(sites)
        return self.domain_.neighbours(sites)

    def structure_ratio(self, sites: SiteTable, *, neighbours: Neighbours | None = None) -> np.ndarray:
        """S per site: the mean distance ratio of the site's structure, ndarray (n,), dimensionless.

        ``neighbours``: :meth:`neighbours` of ``sites`` when already searched (ValueError if made
        for other sites or by another domain score)."""
        self._check_fitted()
        rho = self.domain_.ratios(sites, neighbours=neighbours)
        ids, s = structure_reduce(sites.structure_ids, rho, "mean")
        return s[np.searchsorted(ids, sites.structure_ids)]

    def distance_factor(self, sites: SiteTable, *, neighbours: Neighbours | None = None) -> np.ndarray:
        """g = max(1, S / S₀)^β per site, ndarray (n,), >= 1 (``neighbours`` as in :meth:`structure_ratio`)."""
        return np.maximum(1.0, self.structure_ratio(sites, neighbours=neighbours) / self.s0_) ** self.power_

    def _shape(self, sites: SiteTable, neighbours: Neighbours | None = None) -> np.ndarray:
        """q_θ,τ(X) · g per site and trained level, ndarray (n, K), eV/Å."""
        return self.qtheta_._raw(sites) * self.distance_factor(sites, neighbours=neighbours)[:, None]

    def _widths(self, sites: SiteTable, neighbours: Neighbours | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(shape (n, K), corrected level-monotone widths (n, K)), eV/Å."""
        self._check_fitted()
        check_sites(sites)
        self._check_descriptors(sites)
        shape = self._shape(sites, neighbours)
        return shape, np.maximum.accumulate(shape * self.corrections_[None, :], axis=1)

    def predict(self, sites: SiteTable, *, neighbours: Neighbours | None = None) -> np.ndarray:
        """Calibrated half-widths at ``confidence``, ndarray (n,), eV/Å (+inf if the holdout was too small).

        ``neighbours``: :meth:`neighbours` of ``sites``, to share one k-NN search with the flags."""
        return self._widths(sites, neighbours)[1][:, self.level_index_]

    def predict_levels(self, sites: SiteTable, levels, *, neighbours: Neighbours | None = None) -> np.ndarray:
        """Half-widths (n, k) in eV/Å at each of ``levels``, non-decreasing in the level.

        Trained levels use their column; between two trained levels the widths are interpolated
        linearly in the level, below the lowest towards 0 at level 0; above the highest the
        conformal factor is re-derived on the holdout at the requested level (exact split CP
        with the highest trained shape as normaliser, never below the highest column).
        ``neighbours`` as in :meth:`predict`.
        """
        req = check_levels(levels)
        shape, w = self._widths(sites, neighbours)
        lv = self.levels_
        return widths_at_requested_levels(
            lv, w, req, lambda p: np.maximum(shape[:, -1] * self._correction.factor(lv.size - 1, p), w[:, -1]),
            _LEVEL_ATOL)

    def ood_flags(self, sites: SiteTable, *, neighbours: Neighbours | None = None) -> np.ndarray:
        """Per-site out-of-domain flags of the fitted domain score (site score > 1.0), bool (n,)."""
        self._check_fitted()
        return self.domain_.flags(sites, neighbours=neighbours)

    def _check_descriptors(self, sites: SiteTable) -> None:
        d = self.qtheta_.x_mean_.shape[0]
        if sites.n_descriptors != d:
            raise ValueError(f"sites: descriptors have {sites.n_descriptors} columns, but flexible-ood was fitted on {d}")

    # ------------------------------------------------------------------ I/O
    def _get_state(self):
        q_meta, q_arrays = self.qtheta_.get_state()
        d_meta, d_arrays = self.domain_.get_state()
        state = {"qtheta": q_meta, "domain": d_meta, "s0": self.s0_, "power": self.power_,
                 "fitted_power": self.fitted_power_, "fit_seconds": getattr(self, "fit_seconds_", None)}
        arrays = {"holdout_scores": self.holdout_scores_}
        arrays.update(nest_arrays("qtheta", q_arrays))
        arrays.update(nest_arrays("domain", d_arrays))
        return state, arrays

    def _set_state(self, state, arrays):
        self.qtheta_ = FlexibleQuantile.from_state(state["qtheta"], nested_arrays("qtheta", arrays))
        self.domain_ = DomainScore.from_state(state["domain"], nested_arrays("domain", arrays))
        self.levels_ = self.qtheta_.levels_
        self.level_index_ = self.qtheta_.level_index_
        self.s0_ = float(state["s0"])
        self.power_ = float(state["power"])
        self.fitted_power_ = float(state["fitted_power"])
        if state.get("fit_seconds") is not None:
            self.fit_seconds_ = float(state["fit_seconds"])
        self.holdout_scores_ = np.asarray(arrays["holdout_scores"], dtype=np.float64).reshape(-1, self.levels_.size)
        self._prepare_correction()
