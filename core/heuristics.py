"""Uncertainty heuristics u(X): positive per-site scores, larger = less trusted (METHOD §2).

Each heuristic is a small strategy object with the same contract::

    h = make_heuristic("knn")          # or an instance, e.g. KNNHeuristic(k=5)
    h.fit(reference)                   # SiteTable: the potential's training set or the calibration set
    u = h.score(sites)                 # ndarray (n,), > 0
    meta, arrays = h.get_state()       # JSON-able dict + plain arrays (for Calibrator.save)
    h2 = heuristic_from_state(meta, arrays)
    h.get_params(); h.clone()          # constructor parameters; an unfitted copy

Calibrators clone the heuristic they are given at ``fit`` (``h.clone().fit(...)``), so
one instance passed to several calibrators is never fitted in place or shared.

Normalised split conformal prediction divides errors by these scores, so every
score is clipped below at :data:`SCORE_FLOOR` (a tiny positive number) and is
always finite.

==============  =========================================================  ==========
name            score u(X_i)                                               fit needed
==============  =========================================================  ==========
``constant``    1                                                          no
``knn``         mean Euclidean distance to the k nearest reference sites   yes
                of the same species, in standardised descriptor space
``gmm``         negative log-likelihood under a per-species Gaussian        yes
                mixture (BIC-chosen size), shifted to be >= ``offset``
``force``       ‖F̂_i‖₂, the predicted force magnitude (eV/Å)              no
``committee``   committee spread of the predicted forces (eV/Å)            no
==============  =========================================================  ==========

Species absent from the reference set (``knn``, ``gmm``) get the large finite
score ``unseen_score`` (default 1e6): such a site is as untrusted as it gets,
and the arrays stay finite. Heuristic state is saved as plain arrays (never
pickled) and rebuilt by :func:`heuristic_from_state`.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from core.sites import SiteTable
from core.validation import check_float, check_int, check_seed

__all__ = [
    "HEURISTICS",
    "SCORE_FLOOR",
    "CommitteeHeuristic",
    "ConstantHeuristic",
    "ForceHeuristic",
    "GMMHeuristic",
    "Heuristic",
    "KNNHeuristic",
    "heuristic_from_state",
    "make_heuristic",
]

#: Scores are clipped below at this value so that e / u stays finite.
SCORE_FLOOR = 1e-12
#: Default score of a site whose species the reference set never showed (knn, gmm).
UNSEEN_SCORE = 1e6


def _check_sites(sites: Any, name: str = "sites") -> SiteTable:
    if not isinstance(sites, SiteTable):
        raise TypeError(f"{name}: expected a SiteTable, got {type(sites).__name__}")
    return sites


def _floor(u: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(u, dtype=np.float64), SCORE_FLOOR)


def _positive_float(name: str, value: Any) -> float:
    return check_float(name, value, 0.0, np.inf, lo_open=True, hi_open=True)


class Heuristic:
    """Base class of the uncertainty heuristics.

    Subclasses set ``name`` and implement :meth:`score`; those with constructor
    parameters implement :meth:`get_params` (so :meth:`clone` and save/load work);
    those that learn from a reference set also implement :meth:`fit`,
    :meth:`get_state` and :meth:`from_state`.
    """

    name: str = "heuristic"
    label: str = "heuristic"
    needs_fit: bool = False

    def fit(self, reference: SiteTable) -> "Heuristic":
        """Learn from reference sites (no-op for stateless heuristics). Returns ``self``."""
        _check_sites(reference, "reference")
        return self

    def score(self, sites: SiteTable) -> np.ndarray:
        """Per-site score u, ndarray of shape (n,), > 0; larger = less trusted."""
        raise NotImplementedError

    @property
    def is_fitted(self) -> bool:
        return True

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-serialisable)."""
        return {}

    def params(self) -> dict[str, Any]:
        """Alias of :meth:`get_params` (kept for existing callers)."""
        return self.get_params()

    def clone(self) -> "Heuristic":
        """An unfitted heuristic with the same parameters (nothing fitted is shared)."""
        return type(self)(**self.get_params())

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays): JSON-serialisable meta (``name``, ``params``, ...) and plain arrays."""
        self._check_fitted()
        meta = {"name": self.name, "params": self.get_params()}
        return meta, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Heuristic":
        """Rebuild a (fitted) heuristic from :meth:`get_state` output."""
        return cls(**meta.get("params", {}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class ConstantHeuristic(Heuristic):
    """u = 1 for every site: plain (global) split conformal prediction."""

    name = "constant"
    label = "constant"

    def score(self, sites: SiteTable) -> np.ndarray:
        return np.ones(len(_check_sites(sites)), dtype=np.float64)


class ForceHeuristic(Heuristic):
    """u = ‖F̂_i‖₂, the predicted force magnitude in eV/Å (needs ``sites.forces_pred``).

    Sites with (near) zero predicted force, e.g. on symmetric lattice positions,
    get u = :data:`SCORE_FLOOR`.
    """

    name = "force"
    label = "force"

    def score(self, sites: SiteTable) -> np.ndarray:
        _check_sites(sites)
        if sites.forces_pred is None:
            raise ValueError(
                "sites: the 'force' heuristic needs predicted forces, but sites.forces_pred is None; "
                "featurize with a potential (forces_pred) or choose another heuristic"
            )
        return _floor(np.linalg.norm(sites.forces_pred, axis=1))


class CommitteeHeuristic(Heuristic):
    """u = committee standard deviation of the predicted forces, eV/Å (needs ``sites.committee_std``)."""

    name = "committee"
    label = "committee"

    def score(self, sites: SiteTable) -> np.ndarray:
        _check_sites(sites)
        if sites.committee_std is None:
            raise ValueError(
                "sites: the 'committee' heuristic needs a committee force spread, but sites.committee_std "
                "is None; featurize with several models (committee=...) or choose another heuristic"
            )
        return _floor(sites.committee_std)


class _StandardisedHeuristic(Heuristic):
    """Shared pieces of knn and gmm: standardisation on the reference set, per-species lookup."""

    needs_fit = True

    def __init__(self, *, unseen_score: float = UNSEEN_SCORE):
        self.unseen_score = _positive_float("unseen_score", unseen_score)
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.species_: np.ndarray | None = None

    @property
    def is_fitted(self) -> bool:
        return self.mean_ is not None

    def _standardise_fit(self, reference: SiteTable) -> np.ndarray:
        x = np.asarray(reference.descriptors, dtype=np.float64)
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        # a descriptor that is constant on the reference carries no distance information; keep it unscaled
        self.std_ = np.where(std > 1e-12, std, 1.0)
        return (x - self.mean_) / self.std_

    def _standardise(self, sites: SiteTable) -> np.ndarray:
        d = self.mean_.shape[0]
        if sites.n_descriptors != d:
            raise ValueError(
                f"sites: descriptors have {sites.n_descriptors} columns, but {self.name} was fitted on {d}"
            )
        return (np.asarray(sites.descriptors, dtype=np.float64) - self.mean_) / self.std_

    def unseen_species(self, sites: SiteTable) -> np.ndarray:
        """Sorted atomic numbers present in ``sites`` but absent from the reference set."""
        self._check_fitted()
        return np.setdiff1d(np.unique(sites.species), self.species_)


class KNNHeuristic(_StandardisedHeuristic):
    """Mean distance to the k nearest reference sites of the same species (Hu et al., MLST 2022).

    Descriptors are standardised (per column, mean 0 and standard deviation 1)
    on the reference set; distances are Euclidean in that space (dimensionless)
    and searched with one :class:`scipy.spatial.cKDTree` per species.

    Self-matches: when :meth:`score` is called with the *same* SiteTable object
    that was passed to :meth:`fit` (``sites is reference``), each site's own
    reference entry is left out (k + 1 neighbours are queried and the nearest,
    at distance 0, is dropped). Any other table, even one holding copies of
    reference sites, is scored against the full reference set. After a
    save/load round trip the reference object is gone, so no self-exclusion
    happens there.

    Parameters
    ----------
    k : int, default 10
        Number of neighbours; capped at the number of reference sites of the species.
    unseen_score : float, default 1e6
        Score of sites whose species has no reference site.
    """

    name = "knn"
    label = "kNN"

    def __init__(self, k: int = 10, *, unseen_score: float = UNSEEN_SCORE):
        super().__init__(unseen_score=unseen_score)
        self.k = check_int("k", k, 1)
        self.reference_descriptors_: np.ndarray | None = None
        self.reference_species_: np.ndarray | None = None
        self._trees: dict[int, Any] = {}
        self._reference_ref = None

    def get_params(self) -> dict[str, Any]:
        return {"k": self.k, "unseen_score": self.unseen_score}

    def fit(self, reference: SiteTable) -> "KNNHeuristic":
        """Standardise the reference descriptors and build one kd-tree per species."""
        _check_sites(reference, "reference")
        self.reference_descriptors_ = self._standardise_fit(reference)
        self.reference_species_ = reference.species.copy()
        self._build_trees()
        self._reference_ref = weakref.ref(reference)
        return self

    def _build_trees(self) -> None:
        from scipy.spatial import cKDTree

        self.species_ = np.unique(self.reference_species_)
        self._trees = {
            int(z): cKDTree(self.reference_descriptors_[self.reference_species_ == z]) for z in self.species_
        }

    def score(self, sites: SiteTable) -> np.ndarray:
        """Mean standardised distance to the k nearest same-species reference sites, (n,)."""
        _check_sites(sites)
        self._check_fitted()
        exclude_self = self._reference_ref is not None and self._reference_ref() is sites
        x = self._standardise(sites)
        out = np.full(len(sites), self.unseen_score, dtype=np.float64)
        for z in np.unique(sites.species):
            tree = self._trees.get(int(z))
            if tree is None:
                continue
            rows = np.flatnonzero(sites.species == z)
            skip = 1 if exclude_self else 0
            k = min(self.k, tree.n - skip)
            if k < 1:  # a species with a single reference site, scored against itself
                continue
            dist, _ = tree.query(x[rows], k=k + skip)
            dist = np.asarray(dist).reshape(len(rows), k + skip)[:, skip:]
            out[rows] = dist.mean(axis=1)
        return _floor(out)

    def get_state(self):
        meta, arrays = super().get_state()
        arrays = {
            "mean": self.mean_,
            "std": self.std_,
            "reference_descriptors": self.reference_descriptors_,
            "reference_species": self.reference_species_,
        }
        return meta, arrays

    @classmethod
    def from_state(cls, meta, arrays):
        self = cls(**meta.get("params", {}))
        self.mean_ = np.asarray(arrays["mean"], dtype=np.float64)
        self.std_ = np.asarray(arrays["std"], dtype=np.float64)
        self.reference_descriptors_ = np.asarray(arrays["reference_descriptors"], dtype=np.float64)
        self.reference_species_ = np.asarray(arrays["reference_species"], dtype=np.int64)
        self._build_trees()
        return self


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
        self.species_ = reference.unique_species.copy()
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


#: name -> class of every built-in heuristic.
HEURISTICS: dict[str, type[Heuristic]] = {
    "constant": ConstantHeuristic,
    "knn": KNNHeuristic,
    "gmm": GMMHeuristic,
    "force": ForceHeuristic,
    "committee": CommitteeHeuristic,
}


def make_heuristic(spec: "str | Heuristic", **params) -> Heuristic:
    """A heuristic from a name (with optional constructor parameters) or an instance.

    Parameters
    ----------
    spec : {"constant", "knn", "gmm", "force", "committee"} or Heuristic
        An instance is returned unchanged (``params`` must then be empty).
    **params
        Constructor parameters, e.g. ``make_heuristic("knn", k=5)``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones) or bad parameters.
    TypeError
        ``spec`` is neither a string nor a Heuristic, or parameters are not accepted.
    """
    if isinstance(spec, Heuristic):
        if params:
            raise TypeError(f"heuristic: parameters {sorted(params)} given with an instance; set them on it instead")
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"heuristic: expected a name ({', '.join(HEURISTICS)}) or a Heuristic, got {type(spec).__name__}"
        )
    cls = HEURISTICS.get(spec)
    if cls is None:
        raise ValueError(f"heuristic: unknown name {spec!r}; valid names are {', '.join(HEURISTICS)}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise TypeError(f"heuristic {spec!r}: bad parameters {sorted(params)} ({exc})") from None


def heuristic_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Heuristic:
    """Rebuild a heuristic saved with :meth:`Heuristic.get_state` (dispatch on ``meta["name"]``)."""
    name = meta.get("name")
    cls = HEURISTICS.get(name)
    if cls is None:
        raise ValueError(f"heuristic state: unknown name {name!r}; valid names are {', '.join(HEURISTICS)}")
    return cls.from_state(meta, arrays)
