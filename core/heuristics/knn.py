"""KNNHeuristic: mean distance to the k nearest reference sites of the same species (see :mod:`core.heuristics`)."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from core.heuristics.base import UNSEEN_SCORE, SiteTable, _check_sites, _floor, _StandardisedHeuristic
from core.validation import check_int

__all__ = ["KNNHeuristic"]


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
