"""Calibrators: per-site half-widths w (eV/Å) with e <= w at a given confidence (METHOD §3).

``make_calibrator(method, confidence=0.9, seed=0, **options)`` builds any of
:data:`METHODS`; ``load_calibrator(path)`` reads any saved one.

The methods live in the registry (:mod:`core.calibration.registry`: name -> factory, label,
colour, help); built in: ``flexible`` (FlexibleQuantile, q_θ conformal-corrected),
``flexible-ood`` (FlexibleOOD, q_θ whose widths grow off the calibration domain), ``split``,
``knn``, ``gmm``, ``force``, ``committee`` (SplitConformal with that heuristic) and
``mondrian`` (SplitConformal(mondrian=True)). ``RescaledCalibrator`` rescales any fitted
calibrator on a few target labels; every calibrator's ``update(sites)`` recalibrates it.

Importing this package does not import torch (FlexibleQuantile imports it when used).
"""

from __future__ import annotations

from typing import Any

from core.calibration.base import Calibrator, load_calibrator
from core.calibration.conformal import SplitConformal, conformal_quantile, weighted_conformal_quantile
from core.calibration.flexible import FlexibleQuantile
from core.calibration.registry import MethodSpec, method_names, method_spec, register_method

__all__ = [
    "METHODS",
    "Calibrator",
    "MethodSpec",
    "method_names",
    "method_spec",
    "register_method",
    "FlexibleQuantile",
    "SplitConformal",
    "conformal_quantile",
    "load_calibrator",
    "make_calibrator",
    "weighted_conformal_quantile",
]

def __getattr__(name: str):
    # METHODS is live: methods registered later (core.calibration.registry) appear in it
    if name == "METHODS":
        return method_names()
    raise AttributeError(f"module 'core.calibration' has no attribute {name!r}")


def make_calibrator(method: str, confidence: float = 0.9, seed: int = 0, **options: Any) -> Calibrator:
    """An unfitted calibrator by method name (any name in the method registry).

    Parameters
    ----------
    method : str
        One of :func:`core.calibration.registry.method_names` (``METHODS``).
    confidence : float, default 0.9
        Target coverage, in (0, 1).
    seed : int, default 0
        Seeds q_θ (``flexible``, ``flexible-ood``) and the GMM initialisation (``gmm``).
    **options
        ``flexible``: any :class:`FlexibleQuantile` parameter (``levels``, ``hidden``,
        ``weights``, ``max_epochs``, ...). Split methods: ``mondrian`` (bool) and the
        heuristic's own parameters (``knn``: ``k``; ``gmm``: ``max_components``,
        ``covariance_type``, ``reg_covar``; knn/gmm: ``unseen_score``).

    Raises
    ------
    ValueError
        Unknown ``method`` (the message lists the valid names) or a bad option value.
    TypeError
        An option the method does not take.
    """
    if not isinstance(method, str):
        method_spec(str(method))  # raises the listing ValueError
    return method_spec(method).factory(confidence, seed, **options)
