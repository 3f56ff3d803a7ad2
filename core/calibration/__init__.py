"""Calibrators: per-site half-widths w (eV/Å) with e <= w at a given confidence (METHOD §3).

``make_calibrator(method, confidence=0.9, seed=0, **options)`` builds any of
:data:`METHODS`; ``load_calibrator(path)`` reads any saved one.

==============  ==========================================  =========================
method          calibrator                                   label
==============  ==========================================  =========================
``flexible``    FlexibleQuantile (q_θ, conformal-corrected)  q_θ (flexible)
``split``       SplitConformal(heuristic="constant")         split CP
``knn``         SplitConformal(heuristic="knn")              kNN-normalised CP
``gmm``         SplitConformal(heuristic="gmm")              GMM-normalised CP
``force``       SplitConformal(heuristic="force")            force-normalised CP
``committee``   SplitConformal(heuristic="committee")        committee-normalised CP
``mondrian``    SplitConformal("constant", mondrian=True)    Mondrian CP
==============  ==========================================  =========================

Importing this package does not import torch (FlexibleQuantile imports it when used).
"""

from __future__ import annotations

from typing import Any

from core.calibration.base import Calibrator, load_calibrator
from core.calibration.conformal import SplitConformal, conformal_quantile, weighted_conformal_quantile
from core.calibration.flexible import FlexibleQuantile

__all__ = [
    "METHODS",
    "Calibrator",
    "FlexibleQuantile",
    "SplitConformal",
    "conformal_quantile",
    "load_calibrator",
    "make_calibrator",
    "weighted_conformal_quantile",
]

#: Names accepted by :func:`make_calibrator`.
METHODS = ("flexible", "split", "knn", "gmm", "force", "committee", "mondrian")



def make_calibrator(method: str, confidence: float = 0.9, seed: int = 0, **options: Any) -> Calibrator:
    """An unfitted calibrator by method name.

    Parameters
    ----------
    method : str
        One of :data:`METHODS`.
    confidence : float, default 0.9
        Target coverage, in (0, 1).
    seed : int, default 0
        Seeds q_θ (``flexible``) and the GMM initialisation (``gmm``); unused otherwise.
    **options
        ``flexible``: any :class:`FlexibleQuantile` parameter (``levels``, ``hidden``,
        ``weights``, ``max_epochs``, ...). Split methods: ``mondrian`` (bool) and the
        heuristic's own parameters (``knn``: ``k``; ``gmm``: ``max_components``,
        ``covariance_type``, ``reg_covar``, ``offset``; knn/gmm: ``unseen_score``).

    Raises
    ------
    ValueError
        Unknown ``method`` (the message lists :data:`METHODS`) or a bad option value.
    TypeError
        An option the method does not take.
    """
    from core.heuristics import make_heuristic

    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: unknown calibration method {method!r}; valid methods are {', '.join(METHODS)}")
    if method == "flexible":
        try:
            return FlexibleQuantile(confidence=confidence, seed=seed, **options)
        except TypeError as exc:
            raise TypeError(f"method 'flexible': bad option(s) {sorted(options)} ({exc})") from None
    mondrian = options.pop("mondrian", method == "mondrian")
    if "heuristic" in options:
        raise TypeError("method: 'heuristic' is fixed by the method name; use SplitConformal(heuristic=...) directly")
    name = "constant" if method in ("split", "mondrian") else method
    if name == "gmm":
        options.setdefault("seed", seed)
    return SplitConformal(confidence=confidence, heuristic=make_heuristic(name, **options), mondrian=mondrian)
