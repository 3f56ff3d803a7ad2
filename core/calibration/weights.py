"""Per-site weight schemes for the weighted pinball loss and weighted conformal correction (METHOD §3).

A scheme is a small strategy object::

    scheme = make_weight_scheme("structure")     # or an array, or an instance
    scheme.fit(sites, target=None)               # learns what it needs (shift: a classifier)
    w = scheme.weights(sites)                    # ndarray (n,), >= 0
    scheme.get_params(); scheme.clone()          # constructor parameters; an unfitted copy
    meta, arrays = scheme.get_state()            # JSON meta + plain arrays
    weight_scheme_from_state(meta, arrays)

FlexibleQuantile clones the scheme it is given at ``fit`` (``scheme.clone().fit(...)``),
so one instance passed to several calibrators is never fitted in place or shared.

==============  =====================================================================
name            weight of site i
==============  =====================================================================
``uniform``     1
``structure``   1 / (number of sites of i's structure in the table): each structure
                weighs 1 in total
``species``     1 / (number of sites of i's species in the table): each species weighs
                1 in total
``shift``       estimated density ratio p_target(X_i) / p_cal(X_i) (see ShiftWeights)
array           user-given, shape (n,), finite, >= 0, not all zero
==============  =====================================================================

:func:`make_weights` is the one-call form: ``make_weights(spec, sites, target) -> (n,)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.sites import SiteTable
from core.sites import check_sites as _check_sites
from core.validation import check_float, check_int, check_seed

__all__ = [
    "WEIGHT_SCHEMES",
    "ArrayWeights",
    "ShiftWeights",
    "SpeciesWeights",
    "StructureWeights",
    "UniformWeights",
    "WeightScheme",
    "make_weight_scheme",
    "make_weights",
    "weight_scheme_from_state",
]


def check_weight_array(values: Any, n: int | None = None, name: str = "weights") -> np.ndarray:
    """``values`` as float64 (n,): finite, >= 0, not all zero; ValueError naming ``name`` otherwise."""
    try:
        w = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a 1-D array of numbers, got {type(values).__name__}") from None
    if w.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of shape (n_sites,), got shape {w.shape}")
    if n is not None and w.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) (one weight per site), got {w.shape}")
    if w.size == 0:
        raise ValueError(f"{name}: expected at least one weight, got an empty array")
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: must be finite, got {float(w[i])!r} at index {i}")
    if np.any(w < 0):
        i = int(np.argmax(w < 0))
        raise ValueError(f"{name}: must be >= 0, got {float(w[i])!r} at index {i}")
    if not np.any(w > 0):
        raise ValueError(f"{name}: all {w.size} weights are zero")
    return w


def _inverse_group_size(groups: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].astype(np.float64)


class WeightScheme:
    """Base class: ``fit(sites, target=None)``, ``weights(sites) -> (n,)``, state for save/load.

    Subclasses with constructor parameters implement :meth:`get_params`; fitted ones
    implement :meth:`get_state` / :meth:`from_state` (JSON meta + plain arrays).
    """

    name: str = "weights"
    #: True when the weights are density ratios, so that a test site has its own weight (shift)
    site_dependent_test_weight: bool = False
    #: True when the weights of a table depend on that table alone (no fitted state, no
    #: fixed length), so they apply unchanged to new labelled sites (``update``)
    intrinsic: bool = True

    def fit(self, sites: SiteTable, target: SiteTable | None = None) -> "WeightScheme":
        _check_sites(sites)
        return self

    def weights(self, sites: SiteTable) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, sites: SiteTable) -> np.ndarray:
        return self.weights(sites)

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-serialisable)."""
        return {}

    def clone(self) -> "WeightScheme":
        """An unfitted scheme with the same parameters (nothing fitted is shared)."""
        return type(self)(**self.get_params())

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays): JSON meta (``name``, ``params``) and plain arrays of the fitted state."""
        return {"name": self.name, "params": self.get_params()}, {}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "WeightScheme":
        return cls(**meta.get("params", {}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class UniformWeights(WeightScheme):
    """Every site weighs 1."""

    name = "uniform"

    def weights(self, sites):
        return np.ones(len(_check_sites(sites)))


class StructureWeights(WeightScheme):
    """Every structure weighs 1 in total: w_i = 1 / (sites of i's structure in the table)."""

    name = "structure"

    def weights(self, sites):
        return _inverse_group_size(_check_sites(sites).structure_ids)


class SpeciesWeights(WeightScheme):
    """Every species weighs 1 in total: w_i = 1 / (sites of i's species in the table)."""

    name = "species"

    def weights(self, sites):
        return _inverse_group_size(_check_sites(sites).species)


class ArrayWeights(WeightScheme):
    """User-given weights, one per calibration site.

    Parameters
    ----------
    values : array-like of shape (n_sites,)
        Finite, >= 0, not all zero; the table passed to :meth:`weights` must have n_sites rows.
    """

    name = "array"
    intrinsic = False

    def __init__(self, values):
        self.values = check_weight_array(values, name="weights")

    def clone(self) -> "ArrayWeights":
        return ArrayWeights(self.values.copy())

    def weights(self, sites):
        _check_sites(sites)
        if len(sites) != self.values.shape[0]:
            raise ValueError(
                f"weights: expected shape ({len(sites)},) (one weight per site), got ({self.values.shape[0]},)"
            )
        return self.values.copy()

    def get_state(self):
        return {"name": self.name, "params": {}}, {"values": self.values}

    @classmethod
    def from_state(cls, meta, arrays):
        return cls(arrays["values"])

    def __repr__(self) -> str:
        return f"ArrayWeights(<{self.values.shape[0]} values>)"


class ShiftWeights(WeightScheme):
    """Covariate-shift weights: the density ratio p_target(X) / p_cal(X).

    A probabilistic classifier (L2 logistic regression, scikit-learn ``lbfgs``)
    is trained to tell calibration sites (label 0) from unlabelled target sites
    (label 1) on [standardised descriptors, one-hot species]; standardisation
    uses both sets. With c(x) = P(target | x) and the class sizes n_cal, n_target
    of its training data, the ratio is

        r(x) = c(x) / (1 - c(x)) · n_cal / n_target,

    clipped to [1 / clip, clip] so that a few sites far outside the
    calibration data cannot take all the weight (default clip = 20). A linear
    classifier gives the exact log-ratio for Gaussian domains that differ in
    their means; stronger shifts are approximated. Species never seen by the
    classifier get a zero one-hot part.

    Parameters
    ----------
    clip : float, default 20.0
        Ratios are clipped to [1/clip, clip]; must be > 1.
    C : float, default 1.0
        Inverse L2 regularisation strength of the logistic regression.
    max_samples : int, default 20000
        Each class is subsampled (seeded) to at most this many sites for the classifier.
    seed : int, default 0
    """

    name = "shift"
    site_dependent_test_weight = True
    intrinsic = False

    def __init__(self, clip: float = 20.0, *, C: float = 1.0, max_samples: int = 20000, seed: int = 0):
        self.clip = check_float("clip", clip, 1.0, np.inf, lo_open=True, hi_open=True)
        self.C = check_float("C", C, 0.0, np.inf, lo_open=True, hi_open=True)
        self.max_samples = check_int("max_samples", max_samples, 2)
        self.seed = check_seed(seed)
        self.mean_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        return {"clip": self.clip, "C": self.C, "max_samples": self.max_samples, "seed": self.seed}

    def fit(self, sites, target=None):
        """Train the domain classifier between ``sites`` (calibration) and ``target`` (unlabelled)."""
        from sklearn.linear_model import LogisticRegression

        _check_sites(sites)
        if target is None:
            raise ValueError(
                "target: weights='shift' needs unlabelled target-domain sites (fit(..., target=SiteTable)), got None"
            )
        _check_sites(target, "target")
        if target.n_descriptors != sites.n_descriptors:
            raise ValueError(
                f"target: descriptors have {target.n_descriptors} columns, calibration sites have {sites.n_descriptors}"
            )
        rng = np.random.default_rng(self.seed)

        def sample(n):
            return np.sort(rng.choice(n, self.max_samples, replace=False)) if n > self.max_samples else np.arange(n)

        ic, it = sample(len(sites)), sample(len(target))
        xc = np.asarray(sites.descriptors[ic], dtype=np.float64)
        xt = np.asarray(target.descriptors[it], dtype=np.float64)
        both = np.vstack([xc, xt])
        self.mean_ = both.mean(axis=0)
        std = both.std(axis=0)
        self.std_ = np.where(std > 1e-12, std, 1.0)
        self.species_ = np.union1d(sites.species, target.species)
        feats = self._features(both, np.concatenate([sites.species[ic], target.species[it]]))
        labels = np.r_[np.zeros(ic.size), np.ones(it.size)]
        clf = LogisticRegression(C=self.C, max_iter=2000)
        clf.fit(feats, labels)
        self.coef_ = np.asarray(clf.coef_[0], dtype=np.float64)
        self.intercept_ = float(clf.intercept_[0])
        self.log_prior_ = float(np.log(ic.size / it.size))
        return self

    def _features(self, x: np.ndarray, species: np.ndarray) -> np.ndarray:
        xs = (x - self.mean_) / self.std_
        onehot = (species[:, None] == self.species_[None, :]).astype(np.float64)
        return np.hstack([xs, onehot])

    def weights(self, sites):
        """Clipped density ratios p_target/p_cal at ``sites``, ndarray (n,)."""
        _check_sites(sites)
        if self.mean_ is None:
            raise RuntimeError("ShiftWeights is not fitted; call fit(sites, target) first")
        if sites.n_descriptors != self.mean_.shape[0]:
            raise ValueError(f"sites: descriptors have {sites.n_descriptors} columns, expected {self.mean_.shape[0]}")
        out = np.empty(len(sites))
        step = 65536  # chunks keep the float64 feature copy small for large tables
        for a in range(0, len(sites), step):
            sl = slice(a, a + step)
            feats = self._features(np.asarray(sites.descriptors[sl], dtype=np.float64), sites.species[sl])
            out[sl] = feats @ self.coef_ + self.intercept_ + self.log_prior_
        lo = np.log(self.clip)
        return np.exp(np.clip(out, -lo, lo))

    def get_state(self):
        if self.mean_ is None:
            raise RuntimeError("ShiftWeights is not fitted; call fit(sites, target) first")
        meta = {"name": self.name, "params": self.get_params()}
        arrays = {"mean": self.mean_, "std": self.std_, "species": self.species_, "coef": self.coef_,
                  "intercept": np.array(self.intercept_), "log_prior": np.array(self.log_prior_)}
        return meta, arrays

    @classmethod
    def from_state(cls, meta, arrays):
        self = cls(**meta.get("params", {}))
        self.mean_ = np.asarray(arrays["mean"], dtype=np.float64)
        self.std_ = np.asarray(arrays["std"], dtype=np.float64)
        self.species_ = np.asarray(arrays["species"], dtype=np.int64)
        self.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
        self.intercept_ = float(arrays["intercept"])
        self.log_prior_ = float(arrays["log_prior"])
        return self


#: Names accepted by :func:`make_weight_scheme` (besides arrays and instances).
WEIGHT_SCHEMES: dict[str, type[WeightScheme]] = {
    "uniform": UniformWeights,
    "structure": StructureWeights,
    "species": SpeciesWeights,
    "shift": ShiftWeights,
}


def make_weight_scheme(spec) -> WeightScheme:
    """A weight scheme from a name, an array of per-site weights, or an instance.

    An instance is returned as it is; calibrators clone it when they fit.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones) or a bad array.
    TypeError
        Anything else.
    """
    if isinstance(spec, WeightScheme):
        return spec
    if isinstance(spec, str):
        cls = WEIGHT_SCHEMES.get(spec)
        if cls is None:
            raise ValueError(
                f"weights: unknown scheme {spec!r}; valid schemes are {', '.join(WEIGHT_SCHEMES)} "
                "or an array of shape (n_sites,)"
            )
        return cls()
    if isinstance(spec, (np.ndarray, list, tuple)):
        return ArrayWeights(spec)
    raise TypeError(
        f"weights: expected one of {', '.join(WEIGHT_SCHEMES)}, an array of shape (n_sites,) or a WeightScheme, "
        f"got {type(spec).__name__}"
    )


def make_weights(spec, sites: SiteTable, target: SiteTable | None = None) -> np.ndarray:
    """Per-site weights (n,) of ``sites`` under scheme ``spec``.

    Parameters
    ----------
    spec : {"uniform", "structure", "species", "shift"}, array-like of shape (n,) or WeightScheme
    sites : SiteTable
        The (calibration) sites to weigh.
    target : SiteTable, optional
        Unlabelled target-domain sites; required by ``"shift"``.

    Returns
    -------
    ndarray of shape (n,)
        Finite weights >= 0, not all zero.
    """
    scheme = make_weight_scheme(spec)
    scheme.fit(sites, target)
    return check_weight_array(scheme.weights(sites), len(sites))


def weight_scheme_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> WeightScheme:
    """Rebuild a scheme saved with :meth:`WeightScheme.get_state`."""
    name = meta.get("name")
    cls = ArrayWeights if name == "array" else WEIGHT_SCHEMES.get(name)
    if cls is None:
        raise ValueError(f"weights state: unknown scheme {name!r}")
    return cls.from_state(meta, arrays)
