"""The conformal correction of q_θ: per-level factors ĉ_τ from holdout ratios (METHOD §3).

Holdout sites (by structure, never trained on; after ``update``: labelled sites of
the new domain) give ratios r_i = e_i / q_θ,τ(X_i), one column per trained level τ.
The factor ĉ_τ is a conformal quantile of column τ at level τ, and the widths are
w_τ(X) = ĉ_τ · q_θ,τ(X). With weights:

* ``uniform``: the plain conformal quantile.
* ``structure``, ``species``, user arrays: the weighted conformal quantile
  (Tibshirani et al. 2019) with the holdout weights and, for the test point,
  the largest holdout weight. The weighted quantile is non-decreasing in the
  test weight, so this is the conservative choice for any test site whose
  weight would not exceed it; ĉ is one number per level.
* ``shift``: the test weight is the density ratio p_target/p_cal at the test
  site itself, computed at predict time by the fitted classifier (trained at
  fit on the descriptors of all calibration sites vs ``target``), so ĉ is
  per site: ``predict`` runs a vectorised weighted quantile (sorted holdout
  ratios, cumulative weights, ``searchsorted``) for every test site. A site
  whose ratio outweighs the holdout's enough gets ĉ = +inf (the honest
  answer: the holdout says too little about it).

Numpy only.
"""

from __future__ import annotations

import numpy as np

from core.calibration.conformal import conformal_quantile, sorted_cumulative, weighted_quantiles_from_sorted
from core.calibration.weights import UniformWeights

__all__ = ["HoldoutCorrection"]


class HoldoutCorrection:
    """Conformal factors of q_θ from holdout ratios; immutable once built.

    Parameters
    ----------
    scores : ndarray of shape (n, K)
        Ratios e / q_θ,τ (dimensionless), one column per trained level.
    weights : ndarray of shape (n,)
        Holdout weights (from ``scheme``).
    levels : ndarray of shape (K,)
        Trained levels, sorted.
    scheme : WeightScheme
        Where the weights come from; a site-dependent one (``shift``) makes ĉ per test site.
    conformal : bool, default True
        False: every factor is 1 (uncorrected q_θ).
    target : SiteTable, optional
        Unlabelled target sites: for ``shift``, ``corrections`` is reported at their mean
        density ratio (else at ratio 1).

    Attributes
    ----------
    corrections : ndarray of shape (K,)
        ĉ per level (for ``shift``: at ``reference_weight``).
    shift : bool
        ĉ depends on the test site (density-ratio test weights).
    reference_weight : float or None
        The test weight ``corrections`` was computed at (``shift`` only).
    """

    def __init__(self, scores: np.ndarray, weights: np.ndarray, levels: np.ndarray, scheme, *,
                 conformal: bool = True, target=None):
        self.scores = scores
        self.weights = weights
        self.levels = levels
        self.scheme = scheme
        self.shift = bool(conformal and scheme.site_dependent_test_weight)
        self.uniform = isinstance(scheme, UniformWeights) or (weights.size > 0 and np.all(weights == weights[0]))
        self.reference_weight = None
        self._sorted = []
        K = levels.size
        if not conformal:
            self.corrections = np.ones(K)
        elif self.shift:
            self._sorted = [sorted_cumulative(scores[:, k], weights) for k in range(K)]
            t = np.array([1.0 if target is None else float(np.mean(scheme.weights(target)))])
            self.reference_weight = float(t[0])
            self.corrections = np.array([weighted_quantiles_from_sorted(s, c, t, p)[0]
                                         for (s, c), p in zip(self._sorted, levels)])
        else:
            self.corrections = np.array([self.factor(k, float(p)) for k, p in enumerate(levels)])

    def factor(self, k: int, level: float, ratios: np.ndarray | None = None):
        """ĉ at ``level`` from the ratios of trained column ``k``: float, or (n,) per test site for ``shift``.

        ``ratios`` (n,) are the test sites' density ratios (``shift`` only).
        """
        if self.shift:
            return weighted_quantiles_from_sorted(*self._sorted[k], ratios, float(level))
        col = self.scores[:, k]
        if self.uniform:
            return conformal_quantile(col, level)
        s, c = sorted_cumulative(col, self.weights)
        return float(weighted_quantiles_from_sorted(s, c, np.array([self.weights.max()]), level)[0])

    def site_factors(self, ratios: np.ndarray) -> np.ndarray:
        """ĉ_τ per test site and trained level, ndarray (n, K) (``shift`` only)."""
        return np.stack([self.factor(k, float(p), ratios) for k, p in enumerate(self.levels)], axis=1)


def widths_at_requested_levels(trained: np.ndarray, widths: np.ndarray, requested: np.ndarray, above,
                               atol: float = 1e-9) -> np.ndarray:
    """Widths (n, r) at ``requested`` levels from widths (n, K) at sorted ``trained`` levels.

    A trained level uses its column; between two trained levels the widths are interpolated
    linearly in the level; below the lowest they go linearly to 0 at level 0; above the highest
    ``above(p) -> (n,)`` gives them (a conformal factor re-derived at ``p``). Shared by every
    q_θ-based calibrator so the rule is written once.
    """
    out = np.empty((widths.shape[0], requested.size))
    for j, p in enumerate(requested):
        k = np.flatnonzero(np.abs(trained - p) <= atol)
        if k.size:
            out[:, j] = widths[:, k[0]]
        elif p < trained[0]:
            out[:, j] = widths[:, 0] * (p / trained[0])
        elif p > trained[-1]:
            out[:, j] = above(float(p))
        else:
            b = int(np.searchsorted(trained, p))
            t = (p - trained[b - 1]) / (trained[b] - trained[b - 1])
            out[:, j] = (1.0 - t) * widths[:, b - 1] + t * widths[:, b]
    return out
