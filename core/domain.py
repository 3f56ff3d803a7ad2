"""Out-of-domain score: how far a site (and its structure) lies from the calibration domain (METHOD §6).

A calibrated width is only guaranteed for sites like those it was calibrated on. This module
measures "like" as a nearest-neighbour distance in descriptor space and turns it into a score
whose threshold has a fixed meaning.

Distance
    Descriptors are standardised **per species** (mean 0, standard deviation 1 per column over
    the domain set's sites of that species; near-constant columns are left unscaled) and a site's
    distance d_i is the mean Euclidean distance to its ``k`` nearest domain sites of the same
    species (one :class:`scipy.spatial.cKDTree` per species).

Domain set and null distribution
    * ``fit(sites, reference=ref)``: the domain set is ``ref`` (the potential's training sites:
      errors grow with the distance from *training* data), and the null distribution is the
      distances of the calibration ``sites`` to it. An in-domain test site is exchangeable with
      a calibration site, so its distance follows the null distribution.
    * ``fit(sites)``: the domain set is ``sites`` itself, and the null distribution is
      **leave-one-structure-out**: each calibration site's distance to the sites of the *other*
      calibration structures (its own structure's atoms are skipped), which is what a new
      in-domain structure sees.

Scores and thresholds (documented, fixed meaning)
    * Site score ``s_i = d_i / t_Z``, where ``t_Z`` is the ``quantile`` (default 0.99) quantile of
      the null distances of species Z. **Threshold 1.0**: a site scores above 1 when it is further
      from the domain than 99 % of in-domain sites of its species (about 1 % of in-domain sites are
      flagged by construction).
    * Structure score ``S = max(max_i s_i / T_max, mean_i ρ_i / T_mean)`` over the structure's
      atoms, with ``ρ_i = d_i / m_Z`` (distance over the species' null median) and ``T_max``,
      ``T_mean`` the ``quantile`` quantiles of the two statistics over the null (calibration)
      structures. The max catches one odd atom (a defect, an adsorbate); the mean catches a
      whole structure that is a little off everywhere (a hotter MD frame). **Threshold 1.0**:
      more atypical than 99 % of calibration structures on either statistic (so about 2 % of
      in-domain structures are flagged at most).
    * A species the domain set never showed gets the finite score :data:`UNSEEN_SCORE` (always
      flagged).

Shared neighbours and the query
    :meth:`DomainScore.neighbours` computes the k-NN distances of a table once and returns a
    :class:`Neighbours` that every consumer accepts (``score``, ``structure_scores``, ``flags``,
    ``ratios`` here; ``FlexibleOOD.predict``/``predict_levels``/``ood_flags``): one query per site
    for the widths and the flags (``core.apply.annotate_sites``). New sites are searched by brute
    force in float32 (one matrix product per block of sites against the standardised domain set
    of the species, cached at fit/load), the ``k + 4`` closest candidates are re-measured exactly
    in float64, and a row whose float32 margin cannot prove that no other domain site is closer
    falls back to the exact k-d tree; so the distances are those of the exact search (to rounding,
    < 1e-12 relative). The leave-one-structure-out null of ``fit`` uses the k-d tree.

State is saved as plain arrays + JSON (``save``/``load``, never pickled). Numpy/scipy (torch's
``topk`` is used when importable: the same candidates, faster than ``argpartition``).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.sites import SiteTable
from core.validation import check_float, check_int, check_seed

__all__ = ["DomainScore", "Neighbours", "THRESHOLD", "UNSEEN_SCORE", "structure_reduce"]

#: Site and structure scores above this value are "outside the calibration domain".
THRESHOLD = 1.0
#: Score (site score and distance ratio) of a site whose species the domain set never showed.
UNSEEN_SCORE = 1e3
_FORMAT = "flexcal.DomainScore"
_BLOCK = 1 << 20  # float32 entries of one block of approximate squared distances (4 MiB)
_MARGIN = 4  # candidates beyond k re-measured exactly in float64
_F32_ERROR = 1e-5  # bound of the float32 error of |y|^2 - 2 x.y, relative to |x|^2 + max |y|^2


@dataclass(frozen=True, eq=False)
class Neighbours:
    """The k-NN distances of ``n`` sites to one fitted :class:`DomainScore`'s domain set.

    Made by :meth:`DomainScore.neighbours` (or ``FlexibleOOD.neighbours``) and passed as
    ``neighbours=`` to every consumer of the same score, so a table is searched once.

    Attributes
    ----------
    distances : ndarray (n,)
        Standardised mean k-NN distance per site (inf for a species the domain set never showed).
    species : ndarray (n,)
        The sites' atomic numbers (checked against the table a consumer is given).
    domain : DomainScore
        The score that searched; another score's consumers refuse these distances.
    """

    distances: np.ndarray
    species: np.ndarray
    domain: "DomainScore"

    def __len__(self) -> int:
        return int(self.distances.size)

    def check(self, sites: SiteTable, domain: "DomainScore") -> np.ndarray:
        """The distances, after checking that they belong to ``sites`` and ``domain`` (ValueError otherwise)."""
        if self.domain is not domain:
            raise ValueError("neighbours: computed by another domain score; use this score's neighbours(sites)")
        if len(self) != len(sites) or not np.array_equal(self.species, sites.species):
            raise ValueError(f"neighbours: computed for other sites ({len(self)} sites, these are {len(sites)})")
        return self.distances


def _check_sites(sites: Any, name: str = "sites") -> SiteTable:
    if not isinstance(sites, SiteTable):
        raise TypeError(f"{name}: expected a SiteTable, got {type(sites).__name__}")
    return sites


def structure_reduce(structure_ids: np.ndarray, values: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure ``"mean"`` or ``"max"`` of per-site ``values``: (sorted unique ids (m,), values (m,))."""
    ids, inv = np.unique(np.asarray(structure_ids), return_inverse=True)
    values = np.asarray(values, dtype=np.float64)
    if how == "mean":
        return ids, np.bincount(inv, values, minlength=ids.size) / np.bincount(inv, minlength=ids.size)
    out = np.full(ids.size, -np.inf)
    np.maximum.at(out, inv, values)
    return ids, out


def _smallest_columns(g: np.ndarray, kc: int) -> np.ndarray:
    """Column indices (m, kc) of the ``kc`` smallest entries of each row of ``g`` (m, n), in any order."""
    try:
        import torch
    except ImportError:  # numpy alone: the same set (ties aside), slower
        return np.argpartition(g, kc - 1, axis=1)[:, :kc]
    return torch.topk(torch.from_numpy(g), kc, dim=1, largest=False, sorted=False).indices.numpy()


class DomainScore:
    """Per-site and per-structure out-of-domain score (see the module docstring).

    Parameters
    ----------
    k : int, default 5
        Neighbours averaged in the distance (capped at the domain sites of the species).
    quantile : float, default 0.99
        Null quantile that maps to the threshold 1.0.
    max_domain_sites : int, default 20000
        At most this many domain sites per species are kept (a seeded random subset), which
        bounds memory, file size and query time.
    seed : int, default 0
        Seed of that subset.

    Attributes (after fit)
    ----------------------
    species_ : ndarray (n_species,)
        Species of the domain set.
    domain_ : str
        ``"reference"`` (distances to the training set) or ``"calibration"`` (leave-one-structure-out).
    site_threshold_, site_median_ : dict Z -> float
        Null ``quantile`` and median of the distances per species.
    max_threshold_, mean_threshold_ : float
        ``T_max`` and ``T_mean`` of the structure score.
    null_distances_ : ndarray (n_fit,)
        Null distances of the fitted sites (not saved); ``null_structure_ids_`` alongside.
    """

    def __init__(self, k: int = 5, *, quantile: float = 0.99, max_domain_sites: int = 20000, seed: int = 0):
        self.k = check_int("k", k, 1)
        self.quantile = check_float("quantile", quantile, 0.0, 1.0, lo_open=True, hi_open=True)
        self.max_domain_sites = check_int("max_domain_sites", max_domain_sites, 1)
        self.seed = check_seed(seed)
        self.species_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        return {"k": self.k, "quantile": self.quantile, "max_domain_sites": self.max_domain_sites, "seed": self.seed}

    def __repr__(self) -> str:
        return "DomainScore(" + ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()) + ")"

    @property
    def is_fitted(self) -> bool:
        return self.species_ is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("DomainScore is not fitted; call fit() first")

    # ------------------------------------------------------------------ fit
    def fit(self, sites: SiteTable, *, reference: SiteTable | None = None) -> "DomainScore":
        """Learn the domain (``reference`` if given, else ``sites``) and the null distribution of ``sites``.

        ``sites`` need not be labelled (only descriptors, species and structure ids are used).
        Leave-one-structure-out (no ``reference``) needs at least 2 structures.
        """
        _check_sites(sites)
        domain = sites if reference is None else _check_sites(reference, "reference")
        if reference is not None and reference.n_descriptors != sites.n_descriptors:
            raise ValueError(f"reference: descriptors have {reference.n_descriptors} columns, "
                             f"but sites have {sites.n_descriptors}")
        if reference is None and sites.n_structures < 2:
            raise ValueError(f"sites: the leave-one-structure-out null distribution needs at least 2 structures, "
                             f"got {sites.n_structures}; pass reference= (the training set) instead")
        rng = np.random.default_rng(self.seed)
        self.domain_ = "calibration" if reference is None else "reference"
        self.species_ = np.unique(domain.species)
        self._mean, self._std, self._x, self._sid, self._trees = {}, {}, {}, {}, {}
        for z in self.species_:
            rows = np.flatnonzero(domain.species == z)
            if rows.size > self.max_domain_sites:
                rows = np.sort(rng.choice(rows, self.max_domain_sites, replace=False))
            x = np.asarray(domain.descriptors[rows], dtype=np.float64)
            mean, std = x.mean(axis=0), x.std(axis=0)
            self._mean[int(z)], self._std[int(z)] = mean, np.where(std > 1e-8 * (1 + np.abs(mean)), std, 1.0)
            self._x[int(z)] = ((x - mean) / self._std[int(z)]).astype(np.float32)
            self._sid[int(z)] = domain.structure_ids[rows].copy()
        self._build_trees()
        d = self.distances(sites, leave_structure_out=reference is None)
        self.null_distances_, self.null_structure_ids_ = d, sites.structure_ids.copy()
        self.site_threshold_, self.site_median_ = {}, {}
        for z in self.species_:
            dz = d[(sites.species == z) & np.isfinite(d)]
            if dz.size == 0:  # a reference species absent from the calibration sites: no null, use the domain's own
                dz = self._self_distances(int(z))
            self.site_threshold_[int(z)] = max(float(np.quantile(dz, self.quantile)), 1e-12)
            self.site_median_[int(z)] = max(float(np.median(dz)), 1e-12)
        _, smax = structure_reduce(sites.structure_ids, self._site_scores(d, sites.species), "max")
        _, smean = structure_reduce(sites.structure_ids, self._ratios(d, sites.species), "mean")
        self.max_threshold_ = max(float(np.quantile(smax, self.quantile)), 1e-12)
        self.mean_threshold_ = max(float(np.quantile(smean, self.quantile)), 1e-12)
        return self

    def _build_trees(self) -> None:
        from scipy.spatial import cKDTree

        self._trees = {z: cKDTree(x) for z, x in self._x.items()}
        # the brute-force query's cached reference: float64 copy and squared norms per species
        self._x64 = {z: x.astype(np.float64) for z, x in self._x.items()}
        self._sq = {z: np.einsum("ij,ij->i", x, x) for z, x in self._x64.items()}

    def _self_distances(self, z: int) -> np.ndarray:
        """Leave-one-structure-out distances inside the domain set of species z (fallback null)."""
        x, sid = self._x[z], self._sid[z]
        return self._query(z, x.astype(np.float64), sid)

    def _query(self, z: int, x: np.ndarray, exclude_ids: np.ndarray | None) -> np.ndarray:
        """Mean distance to the k nearest domain sites of species z (skipping those of ``exclude_ids``)."""
        tree, sid = self._trees[z], self._sid[z]
        if exclude_ids is None:
            k = min(self.k, tree.n)
            dist, _ = tree.query(x, k=k)
            return np.asarray(dist).reshape(len(x), k).mean(axis=1)
        extra = int(np.bincount(np.unique(sid, return_inverse=True)[1]).max())  # same-structure neighbours to skip
        kq = min(self.k + extra, tree.n)
        dist, idx = tree.query(x, k=kq)
        dist, idx = np.asarray(dist).reshape(len(x), kq), np.asarray(idx).reshape(len(x), kq)
        keep = sid[np.minimum(idx, tree.n - 1)] != np.asarray(exclude_ids)[:, None]
        keep &= np.cumsum(keep, axis=1) <= self.k
        n_kept = keep.sum(axis=1)
        out = np.where(keep, dist, 0.0).sum(axis=1) / np.maximum(n_kept, 1)
        return np.where(n_kept > 0, out, np.nan)

    def _search(self, z: int, x: np.ndarray) -> np.ndarray:
        """Mean distance of each row of ``x`` (m, d) float64 to its k nearest domain sites of species z, (m,).

        Blocks of rows: float32 |y|² - 2 x·y against every domain site, the ``k + _MARGIN`` smallest
        re-measured in float64; rows where ``A + |x|² - E`` (A: the largest candidate's approximate
        value, E the float32 error bound) does not reach the k-th exact squared distance go to the
        exact tree, so the k nearest are always the exact ones."""
        y32, y64, ysq = self._x[z], self._x64[z], self._sq[z]
        n, dim = y64.shape
        k = min(self.k, n)
        kc = min(k + _MARGIN, n)
        out = np.empty(len(x))
        step = max(1, min(_BLOCK // n, _BLOCK // (kc * max(dim, 1))))
        ysq32, ymax = ysq.astype(np.float32), float(ysq.max())
        for a in range(0, len(x), step):
            xa = x[a:a + step]
            if kc == n:
                cand = np.broadcast_to(np.arange(n), (len(xa), n))
            else:
                g = xa.astype(np.float32) @ y32.T
                g *= -2.0
                g += ysq32
                cand = _smallest_columns(g, kc)
            diff = xa[:, None, :] - y64[cand]
            d = np.sort(np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)), axis=1)
            if kc < n:
                xsq = np.einsum("ij,ij->i", xa, xa)
                floor = np.take_along_axis(g, cand, axis=1).max(axis=1) + xsq - _F32_ERROR * (xsq + ymax)
                bad = np.flatnonzero(floor < d[:, k - 1] ** 2)
                if bad.size:
                    exact, _ = self._trees[z].query(xa[bad], k=k)
                    d[bad, :k] = np.asarray(exact).reshape(bad.size, k)
            out[a:a + len(xa)] = d[:, :k].mean(axis=1)
        return out

    # ---------------------------------------------------------------- score
    def neighbours(self, sites: SiteTable) -> Neighbours:
        """Search ``sites`` once: a :class:`Neighbours` for every ``neighbours=`` consumer of this score."""
        return Neighbours(distances=self.distances(sites), species=np.asarray(sites.species), domain=self)

    def distances(self, sites: SiteTable, *, leave_structure_out: bool = False) -> np.ndarray:
        """Standardised k-NN distance per site to the domain set, ndarray (n,) (inf for unseen species).

        ``leave_structure_out=True`` skips domain sites of the same structure id (only meaningful
        when ``sites`` are the domain set's own structures).
        """
        _check_sites(sites)
        self._check_fitted()
        d_fit = next(iter(self._mean.values())).shape[0]
        if sites.n_descriptors != d_fit:
            raise ValueError(f"sites: descriptors have {sites.n_descriptors} columns, but the domain score was "
                             f"fitted on {d_fit}")
        from core.progress import SEARCH_CHUNK, chunks, report

        out = np.full(len(sites), np.inf)
        done = 0
        for z in np.unique(sites.species):
            if int(z) not in self._trees:
                continue
            rows = np.flatnonzero(sites.species == z)
            x = (np.asarray(sites.descriptors[rows], dtype=np.float64) - self._mean[int(z)]) / self._std[int(z)]
            ids = sites.structure_ids[rows] if leave_structure_out else None
            for lo, hi in chunks(len(rows), SEARCH_CHUNK):  # progress reports and cancel points
                xc = x[lo:hi]
                out[rows[lo:hi]] = self._search(int(z), xc) if ids is None else self._query(int(z), xc, ids[lo:hi])
                done += hi - lo
                report("out-of-domain score: neighbour search", done, len(sites))
        return out

    def _per_species(self, table: dict[int, float], species: np.ndarray) -> np.ndarray:
        return np.array([table.get(int(z), np.nan) for z in species], dtype=np.float64)

    def _site_scores(self, d: np.ndarray, species: np.ndarray) -> np.ndarray:
        s = d / self._per_species(self.site_threshold_, species)
        return np.where(np.isfinite(s), s, UNSEEN_SCORE)

    def _ratios(self, d: np.ndarray, species: np.ndarray) -> np.ndarray:
        r = d / self._per_species(self.site_median_, species)
        return np.where(np.isfinite(r), r, UNSEEN_SCORE)

    def ratios(self, sites: SiteTable, *, neighbours: Neighbours | None = None) -> np.ndarray:
        """ρ_i = d_i / (null median of the species), ndarray (n,), dimensionless; 1 = a typical in-domain site."""
        return self._ratios(self._given_distances(sites, None, neighbours), sites.species)

    def score(self, sites: SiteTable, *, distances: np.ndarray | None = None,
              neighbours: Neighbours | None = None) -> np.ndarray:
        """Site score s_i = d_i / t_Z, ndarray (n,); above :data:`THRESHOLD` (1.0) = out of domain.

        ``neighbours`` (this score's :meth:`neighbours` of ``sites``) or ``distances`` (its
        :meth:`distances`): reuse a query already made (one k-NN query for the widths, the site
        and the structure scores, as ``core.apply`` does)."""
        return self._site_scores(self._given_distances(sites, distances, neighbours), sites.species)

    def _given_distances(self, sites: SiteTable, distances: np.ndarray | None,
                         neighbours: Neighbours | None = None) -> np.ndarray:
        if neighbours is not None:
            if not isinstance(neighbours, Neighbours):
                raise TypeError(f"neighbours: expected a core.domain.Neighbours, got {type(neighbours).__name__}")
            return neighbours.check(_check_sites(sites), self)
        if distances is None:
            return self.distances(sites)
        d = np.asarray(distances, dtype=np.float64)
        if d.shape != (len(sites),):
            raise ValueError(f"distances: expected shape ({len(sites)},) (one per site), got {d.shape}")
        return d

    def flags(self, sites: SiteTable, *, neighbours: Neighbours | None = None) -> np.ndarray:
        """True where a site is outside the calibration domain (score > 1.0), bool ndarray (n,)."""
        return self.score(sites, neighbours=neighbours) > THRESHOLD

    def structure_scores(self, sites: SiteTable, *, distances: np.ndarray | None = None,
                         neighbours: Neighbours | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sorted structure ids (m,), structure scores (m,)); above 1.0 = out of domain
        (``distances``/``neighbours`` as in :meth:`score`)."""
        d = self._given_distances(sites, distances, neighbours)
        ids, smax = structure_reduce(sites.structure_ids, self._site_scores(d, sites.species), "max")
        _, smean = structure_reduce(sites.structure_ids, self._ratios(d, sites.species), "mean")
        return ids, np.maximum(smax / self.max_threshold_, smean / self.mean_threshold_)

    def structure_flags(self, sites: SiteTable) -> tuple[np.ndarray, np.ndarray]:
        """(sorted structure ids (m,), bool (m,)): True where the structure is out of domain."""
        ids, s = self.structure_scores(sites)
        return ids, s > THRESHOLD

    def site_structure_flags(self, sites: SiteTable) -> np.ndarray:
        """Each site's structure flag broadcast to the sites, bool ndarray (n,)."""
        ids, f = self.structure_flags(sites)
        return f[np.searchsorted(ids, sites.structure_ids)]

    # ------------------------------------------------------------------ I/O
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON meta, plain arrays) of a fitted score; :meth:`from_state` inverts it."""
        self._check_fitted()
        meta = {"params": self.get_params(), "domain": self.domain_, "species": [int(z) for z in self.species_],
                "site_threshold": {str(z): v for z, v in self.site_threshold_.items()},
                "site_median": {str(z): v for z, v in self.site_median_.items()},
                "max_threshold": self.max_threshold_, "mean_threshold": self.mean_threshold_}
        arrays = {}
        for z in self.species_:
            z = int(z)
            arrays.update({f"Z{z}_mean": self._mean[z], f"Z{z}_std": self._std[z], f"Z{z}_x": self._x[z],
                           f"Z{z}_sid": self._sid[z]})
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "DomainScore":
        self = cls(**meta["params"])
        self.domain_ = str(meta["domain"])
        self.species_ = np.asarray(meta["species"], dtype=np.int64)
        self._mean, self._std, self._x, self._sid = {}, {}, {}, {}
        for z in self.species_:
            z = int(z)
            self._mean[z] = np.asarray(arrays[f"Z{z}_mean"], dtype=np.float64)
            self._std[z] = np.asarray(arrays[f"Z{z}_std"], dtype=np.float64)
            self._x[z] = np.asarray(arrays[f"Z{z}_x"], dtype=np.float32)
            self._sid[z] = np.asarray(arrays[f"Z{z}_sid"], dtype=np.int64)
        self.site_threshold_ = {int(z): float(v) for z, v in meta["site_threshold"].items()}
        self.site_median_ = {int(z): float(v) for z, v in meta["site_median"].items()}
        self.max_threshold_ = float(meta["max_threshold"])
        self.mean_threshold_ = float(meta["mean_threshold"])
        self.null_distances_ = self.null_structure_ids_ = None
        self._build_trees()
        return self

    def save(self, path) -> Path:
        """Write the fitted score to one ``.npz`` (``allow_pickle=False`` readable). Returns the path."""
        meta, arrays = self.get_state()
        path = Path(path)
        if path.suffix == "":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            np.savez(fh, __meta__=np.array(json.dumps({"format": _FORMAT, **meta})), **arrays)
        return path

    @classmethod
    def load(cls, path) -> "DomainScore":
        """Read a file written by :meth:`save`; ValueError naming the path when it is not one."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such domain-score file")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            meta = json.loads(str(data.pop("__meta__")))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {_FORMAT!r}")
            return cls.from_state(meta, data)
        except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a readable FlexCal domain-score file ({type(exc).__name__}: {exc})") from None
