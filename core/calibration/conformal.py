"""Split conformal prediction: the finite-sample quantile and the SplitConformal calibrator.

With calibration scores s_1..s_n (here s_i = e_i / u(X_i)), the conformal
quantile at confidence 1 - α is the ⌈(n + 1)(1 - α)⌉-th smallest score, and
+inf when that rank exceeds n (METHOD §3). A new exchangeable score then falls
at or below it with probability >= 1 - α (and < 1 - α + 1/(n + 1) for
continuous scores without ties).

:func:`weighted_conformal_quantile` is the covariate-shift version of
Tibshirani, Barber, Candès & Ramdas (NeurIPS 2019): with weights w_i of the
calibration points and w_test of the test point, the quantile is taken of the
distribution Σ p_i δ(s_i) + p_test δ(+inf), p_i = w_i / (Σ_j w_j + w_test).

Only numpy is needed here (DEVELOPING.md: no torch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.calibration.base import Calibrator, check_labelled, check_sites, nest_arrays, nested_arrays
from core.heuristics import Heuristic, heuristic_from_state, make_heuristic
from core.sites import SiteTable
from core.validation import check_bool, check_confidence, check_levels

__all__ = [
    "SplitConformal",
    "conformal_quantile",
    "conformal_rank",
    "quantiles_at_levels",
    "sorted_cumulative",
    "weighted_conformal_quantile",
    "weighted_quantiles_from_sorted",
]

# Relative slack on (n + 1)·confidence before taking the ceiling: a product that should be an
# integer but came out 1 ulp too high (e.g. 100 * 0.07 = 7.000000000000001) must not move the rank.
_RANK_RTOL = 1e-12
# Relative slack on the weighted threshold, absorbing round-off of the cumulative weight sums.
_WEIGHT_RTOL = 1e-10


def conformal_rank(n: int, confidence: float) -> int:
    """The 1-based rank ⌈(n + 1)·confidence⌉ of the conformal quantile among n scores (may exceed n)."""
    x = (n + 1) * confidence
    return max(1, math.ceil(x - _RANK_RTOL * x))


def _scores_array(scores: Any, name: str = "scores") -> np.ndarray:
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a 1-D array of numbers, got {type(scores).__name__}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.size and np.isnan(arr.max()):  # max propagates NaN: an O(n) check without an (n,) temporary
        raise ValueError(f"{name}: contains NaN (first at index {int(np.argmax(np.isnan(arr)))})")
    return arr


def conformal_quantile(scores, confidence: float, *, overwrite_input: bool = False) -> float:
    """Finite-sample conformal quantile: the ⌈(n+1)·confidence⌉-th smallest score.

    Exact for any n (an O(n) ``np.partition`` in float64, no interpolation).

    Parameters
    ----------
    scores : array-like of shape (n,)
        Conformity scores, e.g. e_i / u(X_i) (dimensionless) or e_i (eV/Å). NaN is rejected.
    confidence : float
        Level 1 - α in (0, 1).
    overwrite_input : bool, default False
        Allow partitioning ``scores`` in place when it already is a float64 ndarray
        (saves a copy for very large inputs; the order of ``scores`` is then lost).

    Returns
    -------
    float
        The quantile, in the units of ``scores``; ``+inf`` when the rank exceeds n
        (too few scores for this confidence), including n = 0.

    Examples
    --------
    >>> conformal_quantile([3.0, 1.0, 2.0, 5.0, 4.0], 0.5)   # rank ceil(6 * 0.5) = 3
    3.0
    >>> conformal_quantile([3.0, 1.0, 2.0, 5.0, 4.0], 0.9)   # rank ceil(5.4) = 6 > 5
    inf
    """
    confidence = check_confidence(confidence)
    arr = _scores_array(scores)
    n = arr.shape[0]
    k = conformal_rank(n, confidence)
    if k > n:
        return math.inf
    if not (overwrite_input and isinstance(scores, np.ndarray) and scores.dtype == np.float64 and arr is scores):
        arr = arr.copy()
    arr.partition(k - 1)
    return float(arr[k - 1])


def weighted_conformal_quantile(scores, weights, test_weights, confidence: float):
    """Weighted conformal quantile under covariate shift (Tibshirani et al. 2019).

    For each test weight w_t, returns the smallest calibration score s such that
    Σ_{i: s_i <= s} w_i >= confidence · (Σ_i w_i + w_t), and +inf when no score
    reaches it (the test point's own mass sits at +inf). With equal weights this
    is exactly :func:`conformal_quantile`.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Calibration scores.
    weights : array-like of shape (n,)
        Calibration weights (e.g. density ratios p_target/p_cal), finite, >= 0, not all zero.
    test_weights : float or array-like of shape (m,)
        Weight of each test point, finite, >= 0 (same scale as ``weights``).
    confidence : float
        Level in (0, 1).

    Returns
    -------
    float or ndarray of shape (m,)
        One quantile per test weight (a float for a scalar ``test_weights``).

    Notes
    -----
    Vectorised: scores are sorted once, cumulative weights formed, and every
    threshold located with ``np.searchsorted``: O(n log n + m log n).
    """
    confidence = check_confidence(confidence)
    s = _scores_array(scores)
    w = _check_weights(weights, s.shape[0], "weights")
    scalar = np.ndim(test_weights) == 0
    t = _check_weights(np.atleast_1d(test_weights), None, "test_weights", allow_all_zero=True)
    out = weighted_quantiles_from_sorted(*sorted_cumulative(s, w), t, confidence)
    return float(out[0]) if scalar else out


def sorted_cumulative(scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores sorted ascending (n,), cumulative weights in that order (n,)): the input of
    :func:`weighted_quantiles_from_sorted`, computed once and reused for many test weights."""
    order = np.argsort(scores, kind="stable")
    return scores[order], np.cumsum(weights[order])


def weighted_quantiles_from_sorted(sorted_scores: np.ndarray, cum: np.ndarray, test_weights: np.ndarray,
                                   confidence: float) -> np.ndarray:
    """Weighted quantiles (m,) from pre-sorted scores and their cumulative weights."""
    total = cum[-1] if cum.size else 0.0
    thresh = confidence * (total + test_weights)
    idx = np.searchsorted(cum, thresh * (1.0 - _WEIGHT_RTOL), side="left")
    out = np.full(test_weights.shape, np.inf)
    ok = idx < sorted_scores.shape[0]
    out[ok] = sorted_scores[idx[ok]]
    return out


def _check_weights(weights: Any, n: int | None, name: str, allow_all_zero: bool = False) -> np.ndarray:
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a 1-D array of numbers, got {type(weights).__name__}") from None
    if w.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {w.shape}")
    if n is not None and w.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) (one per score), got {w.shape}")
    if not np.all(np.isfinite(w)):
        i = int(np.argmax(~np.isfinite(w)))
        raise ValueError(f"{name}: must be finite, got {float(w[i])!r} at index {i}")
    if np.any(w < 0):
        i = int(np.argmax(w < 0))
        raise ValueError(f"{name}: must be >= 0, got {float(w[i])!r} at index {i}")
    if not allow_all_zero and w.size and not np.any(w > 0):
        raise ValueError(f"{name}: all weights are zero")
    return w


def quantiles_at_levels(sorted_scores: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Conformal quantiles (k,) of already sorted scores (n,) at several levels (k,) (+inf where rank > n)."""
    n = sorted_scores.shape[0]
    out = np.full(levels.shape, np.inf)
    for j, p in enumerate(levels):
        k = conformal_rank(n, float(p))
        if k <= n:
            out[j] = sorted_scores[k - 1]
    return out


_LABELS = {
    "constant": "split CP",
    "knn": "kNN-normalised CP",
    "gmm": "GMM-normalised CP",
    "force": "force-normalised CP",
    "committee": "committee-normalised CP",
}


class SplitConformal(Calibrator):
    """Split conformal prediction, global or normalised by a heuristic, optionally Mondrian.

    Scores s_i = e_i / u(X_i) on the calibration sites, q̂ = their conformal
    quantile at ``confidence``, widths w = q̂ · u(X) (eV/Å). With
    ``mondrian=True`` one q̂ is taken per species; a species absent at fit time
    falls back to the global q̂ (:meth:`fallback_species` lists them for a table).
    A species with fewer calibration sites than the level needs gets q̂ = +inf
    (the exact Mondrian answer; listed in ``infinite_species_``).

    The heuristic given is cloned at ``fit`` (``heuristic_`` is the fitted clone),
    so one heuristic instance can configure several calibrators. ``predict`` and
    ``predict_levels`` never change the calibrator. :meth:`update` replaces the
    scores by those of labelled sites of a new domain (same heuristic).

    Parameters
    ----------
    confidence : float, default 0.9
        Target coverage 1 - α, in (0, 1).
    heuristic : str or Heuristic, default "constant", keyword-only
        ``"constant"`` (plain split CP), ``"knn"``, ``"gmm"``, ``"force"``, ``"committee"``
        or an instance (see :mod:`core.heuristics`; cloned at fit, never fitted in place).
    mondrian : bool, default False, keyword-only
        One quantile per species.

    Attributes
    ----------
    heuristic_ : Heuristic
        The fitted heuristic (a clone of ``heuristic``).
    scores_ : ndarray of shape (n_cal,)
        Calibration scores e / u (after :meth:`update`: those of the update sites).
    species_ : ndarray of shape (n_cal,)
        Their species (used by Mondrian ``predict_levels``).
    global_quantile_ : float
        Conformal quantile of all scores at ``confidence``.
    quantile_ : float or dict of int -> float
        The fitted q̂ (per species for Mondrian).
    infinite_species_ : list of int
        Mondrian species whose q̂ at ``confidence`` is +inf (too few sites).
    n_update_sites_, n_update_structures_ : int
        Size of the last :meth:`update` (0 after a fresh fit).
    """

    kind = "split_conformal"

    def __init__(self, confidence: float = 0.9, *, heuristic="constant", mondrian: bool = False):
        super().__init__(confidence)
        self.heuristic = make_heuristic(heuristic)
        self.mondrian = check_bool("mondrian", mondrian)
        h = self.heuristic.name
        if h == "constant":
            self.name = "mondrian" if self.mondrian else "split"
            self.label = "Mondrian CP" if self.mondrian else "split CP"
        else:
            self.name = f"{h}-mondrian" if self.mondrian else h
            base = _LABELS.get(h, f"{h}-normalised CP")
            self.label = base.replace(" CP", " Mondrian CP") if self.mondrian else base
        self.heuristic_: Heuristic | None = None
        self.scores_: np.ndarray | None = None
        self.species_: np.ndarray | None = None
        self.global_quantile_: float | None = None
        self.quantile_: float | dict[int, float] | None = None
        self.infinite_species_: list[int] = []

    def get_params(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "heuristic": self.heuristic.name, "mondrian": self.mondrian}

    def _clone_params(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "heuristic": self.heuristic.clone(), "mondrian": self.mondrian}

    @property
    def is_fitted(self) -> bool:
        return self.scores_ is not None

    # ------------------------------------------------------------------ fit
    def fit(self, sites: SiteTable, *, target=None, reference=None, callback=None) -> "SplitConformal":
        """Fit the heuristic and the conformal quantile(s).

        Parameters
        ----------
        sites : SiteTable
            Labelled calibration sites (errors in eV/Å); unlabelled ones (errors=None) are refused.
        target : SiteTable, optional
            Unused (accepted for the common calibrator interface).
        reference : SiteTable, optional
            Sites the heuristic is fitted on (the potential's training set);
            default: the calibration sites themselves.
        callback : callable, optional
            Unused (no training epochs).
        """
        check_labelled(sites)
        if reference is not None:
            check_sites(reference, "reference")
        h = self.heuristic.clone()
        h.fit(reference if reference is not None else sites)
        self.heuristic_ = h
        self._set_scores(sites)
        self._reset_update()
        return self

    def _set_scores(self, sites: SiteTable) -> None:
        """Scores e / u of labelled ``sites`` under the fitted heuristic, and their quantiles."""
        u = self.heuristic_.score(sites)
        self.scores_ = sites.errors / u
        self.species_ = sites.species.copy()
        self.n_calibration_structures_ = sites.n_structures
        self._derive_quantiles()

    def _update(self, sites: SiteTable, fine_tune: int) -> None:
        """Scores of the new domain's sites replace the calibration scores (heuristic unchanged)."""
        if fine_tune:
            raise ValueError(f"fine_tune: {self.label} has no learned quantile to fine-tune; use 0, got {fine_tune}")
        self._set_scores(sites)

    def _derive_quantiles(self) -> None:
        """Global (and per-species, for Mondrian) conformal quantiles of ``scores_``, exactly."""
        self.global_quantile_ = conformal_quantile(self.scores_, self.confidence)
        if self.mondrian:
            self.quantile_ = {
                int(z): conformal_quantile(self.scores_[self.species_ == z], self.confidence)
                for z in np.unique(self.species_)
            }
            self.infinite_species_ = [z for z, q in self.quantile_.items() if not np.isfinite(q)]
        else:
            self.quantile_ = self.global_quantile_
            self.infinite_species_ = []

    # -------------------------------------------------------------- predict
    @staticmethod
    def _site_quantiles(species: np.ndarray, table: dict[int, float], default: float) -> np.ndarray:
        q = np.full(species.shape, default, dtype=np.float64)
        for z in np.unique(species):
            q[species == z] = table.get(int(z), default)
        return q

    def fallback_species(self, sites: SiteTable) -> list[int]:
        """Species of ``sites`` absent from the calibration scores: Mondrian gives them the global q̂.

        Sorted atomic numbers; always [] without ``mondrian``.
        """
        self._check_fitted()
        check_sites(sites)
        if not self.mondrian:
            return []
        return sorted(int(z) for z in np.setdiff1d(np.unique(sites.species), self.species_))

    def predict(self, sites: SiteTable) -> np.ndarray:
        """Half-widths w = q̂ · u(X), ndarray (n,), eV/Å (may be +inf, see class notes)."""
        self._check_fitted()
        check_sites(sites)
        u = self.heuristic_.score(sites)
        if self.mondrian:
            return self._site_quantiles(sites.species, self.quantile_, self.global_quantile_) * u
        return self.quantile_ * u

    def predict_levels(self, sites: SiteTable, levels) -> np.ndarray:
        """Half-widths at several levels, ndarray (n, k), eV/Å.

        The conformal quantile of the stored ``scores_`` is re-derived at each
        level (per species for Mondrian), so every column is exact split CP.
        """
        self._check_fitted()
        check_sites(sites)
        levels = check_levels(levels)
        u = self.heuristic_.score(sites)
        glob = quantiles_at_levels(np.sort(self.scores_), levels)
        if not self.mondrian:
            return u[:, None] * glob[None, :]
        q = np.empty((len(sites), levels.size))
        fit_species = set(int(z) for z in np.unique(self.species_))
        for z in np.unique(sites.species):
            rows = sites.species == z
            if int(z) in fit_species:
                q[rows] = quantiles_at_levels(np.sort(self.scores_[self.species_ == z]), levels)
            else:
                q[rows] = glob
        return u[:, None] * q

    # ------------------------------------------------------------------ I/O
    def _get_state(self):
        h_meta, h_arrays = self.heuristic_.get_state()
        state = {"heuristic": h_meta}
        arrays = {"scores": self.scores_, "species": self.species_}
        arrays.update(nest_arrays("heuristic", h_arrays))
        return state, arrays

    def _set_state(self, state, arrays):
        self.heuristic_ = heuristic_from_state(state["heuristic"], nested_arrays("heuristic", arrays))
        self.heuristic = self.heuristic_.clone()
        self.scores_ = np.asarray(arrays["scores"], dtype=np.float64)
        self.species_ = np.asarray(arrays["species"], dtype=np.int64)
        if self.scores_.ndim != 1 or self.species_.shape != self.scores_.shape:
            raise ValueError(f"scores/species: inconsistent shapes {self.scores_.shape} and {self.species_.shape}")
        # quantiles are re-derived (exactly) from the stored scores
        self._derive_quantiles()
