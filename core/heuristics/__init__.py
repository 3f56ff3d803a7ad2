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
``gmm``         √(2·Δnll + offset²), Δnll the negative log-likelihood      yes
                under a per-species Gaussian mixture (BIC-chosen size)
                above its smallest reference value
``force``       ‖F̂_i‖₂, the predicted force magnitude (eV/Å)              no
``committee``   committee spread of the predicted forces (eV/Å)            no
==============  =========================================================  ==========

Species absent from the reference set (``knn``, ``gmm``) get the large finite
score ``unseen_score`` (default 1e6): such a site is as untrusted as it gets,
and the arrays stay finite. Heuristic state is saved as plain arrays (never
pickled) and rebuilt by :func:`heuristic_from_state`.

Modules: :mod:`core.heuristics.base` (the contract, constant/force/committee),
:mod:`core.heuristics.knn`, :mod:`core.heuristics.gmm`. Numpy/scipy/scikit-learn only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.heuristics.base import (
    SCORE_FLOOR,
    UNSEEN_SCORE,
    CommitteeHeuristic,
    ConstantHeuristic,
    ForceHeuristic,
    Heuristic,
)
from core.heuristics.gmm import GMMHeuristic
from core.heuristics.knn import KNNHeuristic

__all__ = [
    "HEURISTICS",
    "SCORE_FLOOR",
    "UNSEEN_SCORE",
    "CommitteeHeuristic",
    "ConstantHeuristic",
    "ForceHeuristic",
    "GMMHeuristic",
    "Heuristic",
    "KNNHeuristic",
    "heuristic_from_state",
    "make_heuristic",
]


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
