"""GMMHeuristic: a per-species Gaussian-mixture distance from the reference data (see :mod:`core.heuristics`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.heuristics.base import UNSEEN_SCORE, SiteTable, _check_sites, _floor, _positive_float, _StandardisedHeuristic
from core.validation import check_int, check_seed

__all__ = ["GMMHeuristic"]


class GMMHeuristic(_StandardisedHeuristic):
    """Negative log-likelihood under a per-species Gaussian mixture (Zhu et al., JCP 2023).

    Descriptors are standardised on the reference set (all species together).
    For each species a :class:`sklearn.mixture.GaussianMixture` is fitted with
    1 .. min(max_components, n_sites_of_species) components and the size with
    the lowest BIC is kept. The score of a site of species Z is::

        u = sqrt(2 · max(nll(x) - min_ref_nll_Z, 0) + offset²)

    where ``nll`` is the negative log-density (nats) of the standardised
    descriptor under species Z's mixture and ``min_ref_nll_Z`` is the smallest
    nll over Z's reference sites: the most typical reference site scores
    ``offset`` and u grows with atypicality. The per-species shift makes the
    scores of different species comparable despite their different absolute
    densities. The square root makes u a length (for one Gaussian component,
    √(2 Δnll) is the Mahalanobis distance from its mean, in standardised units),
    so it grows linearly with the distance from the reference data, as the knn
    score does; the raw Δnll grows with its square, which made GMM-normalised CP
    a straw man off the domain (widths 20-300 × split CP's on the LiCl demo's
    unseen types, 2.7 × in-domain; with the square root 3.5-11 × and 1.2 ×,
    ranking unchanged: it is a monotone transform). Log-densities are evaluated by this module (from the stored
    weights, means and covariances), so a loaded heuristic scores identically.

    Parameters
    ----------
    max_components : int, default 8
        Largest mixture size tried.
    covariance_type : {"full", "diag"}, default "full"
    reg_covar : float, default 1e-6
        Added to covariance diagonals (in standardised units).
    offset : float, default 1.0
        Score of the most typical reference site (dimensionless, a radius in standardised units).
    seed : int, default 0
        Random state of the EM initialisation.
    unseen_score : float, default 1e6
        Score of sites whose species has no reference site.
    """

    name = "gmm"
    label = "GMM"

    def __init__(
        self,
        max_components: int = 8,
        *,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        offset: float = 1.0,
        seed: int = 0,
        unseen_score: float = UNSEEN_SCORE,
    ):
        super().__init__(unseen_score=unseen_score)
        self.max_components = check_int("max_components", max_components, 1)
        if covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type: expected 'full' or 'diag', got {covariance_type!r}")
        self.covariance_type = covariance_type
        self.reg_covar = _positive_float("reg_covar", reg_covar)
        self.offset = _positive_float("offset", offset)
        self.seed = check_seed(seed)
        self.components_: dict[int, dict[str, np.ndarray]] = {}
        self.n_components_: dict[int, int] = {}

    def get_params(self) -> dict[str, Any]:
        return {
            "max_components": self.max_components,
            "covariance_type": self.covariance_type,
            "reg_covar": self.reg_covar,
            "offset": self.offset,
            "seed": self.seed,
            "unseen_score": self.unseen_score,
        }

    def fit(self, reference: SiteTable) -> "GMMHeuristic":
        """Fit one BIC-selected mixture per species of ``reference``."""
        from threadpoolctl import threadpool_limits

        _check_sites(reference, "reference")
        x = self._standardise_fit(reference)
        # a species with fewer than 2 reference sites has no density to fit: it scores as unseen
        counts = {int(z): int(np.sum(reference.species == z)) for z in reference.unique_species}
        self.species_ = np.array([z for z in reference.unique_species if counts[int(z)] >= 2],
                                 dtype=reference.unique_species.dtype)
        self.components_, self.n_components_ = {}, {}
        # single-threaded: for these many small fits, thread start-up in k-means/BLAS costs far more
        # than it saves (10-50x slower on a loaded 2-core machine)
        with threadpool_limits(1):
            for z in self.species_:
                self._fit_species(int(z), x[reference.species == z])
        return self

    def _fit_species(self, z: int, xs: np.ndarray) -> None:
        from sklearn.mixture import GaussianMixture

        best, best_bic = None, np.inf
        for k in range(1, min(self.max_components, xs.shape[0]) + 1):
            gm = GaussianMixture(
                n_components=k,
                covariance_type=self.covariance_type,
                reg_covar=self.reg_covar,
                random_state=self.seed,
                max_iter=200,
            )
            gm.fit(xs)
            bic = gm.bic(xs)
            if bic < best_bic:
                best, best_bic = gm, bic
        comp = {
            "weights": np.asarray(best.weights_, dtype=np.float64),
            "means": np.asarray(best.means_, dtype=np.float64),
            "covariances": np.asarray(best.covariances_, dtype=np.float64),
        }
        self._prepare(comp)
        comp["min_nll"] = np.array(float(np.min(self._nll(comp, xs))))
        self.components_[z] = comp
        self.n_components_[z] = int(best.n_components)

    def _prepare(self, comp: dict[str, np.ndarray]) -> None:
        """Precision Cholesky factors and log-determinants (not stored; rebuilt on load)."""
        from scipy.linalg import cholesky, solve_triangular

        cov = comp["covariances"]
        if self.covariance_type == "full":
            d = cov.shape[-1]
            prec = np.empty_like(cov)
            for j in range(cov.shape[0]):
                chol = cholesky(cov[j], lower=True)
                prec[j] = solve_triangular(chol, np.eye(d), lower=True).T
            logdet = np.array([np.sum(np.log(np.diag(p))) for p in prec])
        else:
            prec = 1.0 / np.sqrt(cov)
            logdet = np.sum(np.log(prec), axis=1)
        comp["_prec_chol"], comp["_log_det"] = prec, logdet

    def _nll(self, comp: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        from scipy.special import logsumexp

        n, d = x.shape
        means, prec, logdet = comp["means"], comp["_prec_chol"], comp["_log_det"]
        log_prob = np.empty((n, means.shape[0]))
        for j in range(means.shape[0]):
            if self.covariance_type == "full":
                y = (x - means[j]) @ prec[j]
            else:
                y = (x - means[j]) * prec[j]
            log_prob[:, j] = -0.5 * (d * np.log(2 * np.pi) + np.einsum("ij,ij->i", y, y)) + logdet[j]
        return -logsumexp(log_prob + np.log(comp["weights"]), axis=1)

    def score(self, sites: SiteTable) -> np.ndarray:
        """Mahalanobis-like radius sqrt(2 Δnll + offset²) under the site's species mixture, (n,)."""
        _check_sites(sites)
        self._check_fitted()
        x = self._standardise(sites)
        out = np.full(len(sites), self.unseen_score, dtype=np.float64)
        for z in np.unique(sites.species):
            comp = self.components_.get(int(z))
            if comp is None:
                continue
            rows = np.flatnonzero(sites.species == z)
            nll = self._nll(comp, x[rows])
            out[rows] = np.sqrt(2.0 * np.maximum(nll - float(comp["min_nll"]), 0.0) + self.offset ** 2)
        return _floor(out)

    def get_state(self):
        meta, _ = super().get_state()
        meta["species"] = [int(z) for z in self.species_]
        arrays = {"mean": self.mean_, "std": self.std_}
        for z, comp in self.components_.items():
            for key in ("weights", "means", "covariances", "min_nll"):
                arrays[f"Z{z}_{key}"] = comp[key]
        return meta, arrays

    @classmethod
    def from_state(cls, meta, arrays):
        self = cls(**meta.get("params", {}))
        self.mean_ = np.asarray(arrays["mean"], dtype=np.float64)
        self.std_ = np.asarray(arrays["std"], dtype=np.float64)
        self.species_ = np.asarray(meta["species"], dtype=np.int64)
        for z in self.species_:
            comp = {key: np.asarray(arrays[f"Z{z}_{key}"], dtype=np.float64)
                    for key in ("weights", "means", "covariances", "min_nll")}
            self._prepare(comp)
            self.components_[int(z)] = comp
            self.n_components_[int(z)] = int(comp["weights"].shape[0])
        return self
