"""KNNHeuristic: mean distance to the k nearest reference sites of the same species (see :mod:`core.heuristics`)."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from core.heuristics.base import UNSEEN_SCORE, SiteTable, _check_sites, _floor, _StandardisedHeuristic
from core.progress import SEARCH_CHUNK, chunks, report
from core.validation import check_int

__all__ = ["KNNHeuristic"]

#: Sites per kd-tree query in :meth:`KNNHeuristic.score` (one progress report each).
QUERY_CHUNK = SEARCH_CHUNK


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
        self._build_trees(report_progress=True)
        self._reference_ref = weakref.ref(reference)
        return self

    def _build_trees(self, report_progress: bool = False) -> None:
        """One kd-tree per reference species; reports ``"kNN: index"`` per species (:mod:`core.progress`)."""
        from scipy.spatial import cKDTree

        self.species_ = np.unique(self.reference_species_)
        self._trees = {}
        for i, z in enumerate(self.species_):
            self._trees[int(z)] = cKDTree(self.reference_descriptors_[self.reference_species_ == z])
            if report_progress:
                report("kNN: index reference sites", i + 1, len(self.species_))

    def score(self, sites: SiteTable) -> np.ndarray:
        """Mean standardised distance to the k nearest same-species reference sites, (n,)."""
        _check_sites(sites)
        self._check_fitted()
        exclude_self = self._reference_ref is not None and self._reference_ref() is sites
        x = self._standardise(sites)
        out = np.full(len(sites), self.unseen_score, dtype=np.float64)
        done = 0
        for z in np.unique(sites.species):
            tree = self._trees.get(int(z))
            if tree is None:
                continue
            rows = np.flatnonzero(sites.species == z)
            skip = 1 if exclude_self else 0
            k = min(self.k, tree.n - skip)
            if k < 1:  # a species with a single reference site, scored against itself
                continue
            out[rows] = self._mean_distances(tree, x[rows], k, skip, done, len(sites))
            done += len(rows)
        return _floor(out)

    @staticmethod
    def _mean_distances(tree, x: np.ndarray, k: int, skip: int, done: int, total: int) -> np.ndarray:
        """Mean distance (m,) of each row of ``x`` to its ``k`` nearest (after ``skip``) in ``tree``.

        Queried in chunks of ``QUERY_CHUNK`` rows, each reported as ``"kNN: neighbour search"``
        (``done`` sites of ``total``, :mod:`core.progress`), so a long search shows progress and
        can be cancelled between chunks.
        """
        out = np.empty(len(x), dtype=np.float64)
        for lo, hi in chunks(len(x), QUERY_CHUNK):
            if hi > lo:
                dist, _ = tree.query(x[lo:hi], k=k + skip)
                out[lo:hi] = np.asarray(dist).reshape(hi - lo, k + skip)[:, skip:].mean(axis=1)
            report("kNN: neighbour search", done + hi, total)
        return out

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
