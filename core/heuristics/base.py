"""The heuristic contract and the stateless heuristics (constant, force, committee); see :mod:`core.heuristics`."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.sites import SiteTable
from core.sites import check_sites as _check_sites
from core.validation import check_float

__all__ = ["SCORE_FLOOR", "UNSEEN_SCORE", "CommitteeHeuristic", "ConstantHeuristic", "ForceHeuristic", "Heuristic"]

#: Scores are clipped below at this value so that e / u stays finite.
SCORE_FLOOR = 1e-12
#: Default score of a site whose species the reference set never showed (knn, gmm).
UNSEEN_SCORE = 1e6


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
