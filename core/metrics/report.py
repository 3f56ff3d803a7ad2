"""One report of every METHOD §4 metric, and the comparison table of several reports.

Numpy/scipy only (pandas is imported inside :func:`report_table`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.metrics.basic import (
    _auroc,
    _check_groups,
    _check_level,
    _check_pair,
    _float,
    bootstrap_ci,
    correlation_or_reason,
    coverage,
    coverage_gap,
    mean_width,
    miscalibration_area,
    pearson,
    pinball_loss,
    spearman,
    spearman_ideal,
    species_coverage,
    structure_maxima,
    width_ratio,
)
from core.metrics.spread import expected_coverage_interval
from core.validation import check_int

__all__ = ["REPORT_COLUMNS", "REPORT_KEYS", "calibration_report", "report_table"]

#: Keys added by ``n_calibration`` / ``ood`` (always present; None without them), in order.
_SPREAD_AND_DOMAIN_KEYS = [
    "coverage_expected_lo",
    "coverage_expected_hi",
    "coverage_outside_expected",
    "ood_fraction",
    "coverage_in_domain",
    "coverage_out_of_domain",
]

#: Scalar keys of :func:`calibration_report`, in the order used for tables: the METHOD §4
#: metrics first, then the expected-spread and out-of-domain columns (in the order of
#: ``_SPREAD_AND_DOMAIN_KEYS``; ``coverage_outside_expected`` becomes 1.0/0.0 in a table).
REPORT_COLUMNS = [
    "n_sites",
    "n_structures",
    "confidence",
    "coverage",
    "coverage_gap",
    "mean_width",
    "width_ratio",
    "spearman",
    "pearson",
    "spearman_ideal",
    "auroc",
    "miscalibration_area",
    "worst_species_coverage",
    "pinball",
    "structure_spearman",
    "structure_auroc",
    *_SPREAD_AND_DOMAIN_KEYS,
]

#: All keys of :func:`calibration_report` without bootstrap (``coverage_ci`` and
#: ``spearman_ci`` are added when ``bootstrap > 0``).
REPORT_KEYS = [
    "n_sites",
    "n_structures",
    "confidence",
    "coverage",
    "coverage_gap",
    "mean_width",
    "width_ratio",
    "spearman",
    "spearman_note",
    "pearson",
    "spearman_ideal",
    "auroc",
    "miscalibration_area",
    "species_coverage",
    "worst_species_coverage",
    "pinball",
    "structure_spearman",
    "structure_auroc",
    *_SPREAD_AND_DOMAIN_KEYS,
]


def _check_flags(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected a boolean array of shape ({n},) (one per site, as errors), "
                         f"got shape {arr.shape}")
    if arr.dtype != bool:
        raise ValueError(f"{name}: expected booleans (True = outside the calibration domain), got dtype {arr.dtype}")
    return arr


def _spread_and_domain(e: np.ndarray, w: np.ndarray, c: float, cov: float, n_structures: int | None,
                       n_calibration, ood) -> dict[str, Any]:
    """The ``_SPREAD_AND_DOMAIN_KEYS`` entries of a report."""
    out: dict[str, Any] = dict.fromkeys(_SPREAD_AND_DOMAIN_KEYS)
    if n_calibration is not None:
        n_cal = check_int("n_calibration", n_calibration, 1)
        lo, hi = expected_coverage_interval(n_cal, c, n_test=n_structures)
        out.update(coverage_expected_lo=lo, coverage_expected_hi=hi, coverage_outside_expected=bool(cov < lo or cov > hi))
    if ood is not None:
        flags = _check_flags("ood", ood, e.shape[0])
        out["ood_fraction"] = float(np.mean(flags))
        if (~flags).any():
            out["coverage_in_domain"] = coverage(e[~flags], w[~flags])
        if flags.any():
            out["coverage_out_of_domain"] = coverage(e[flags], w[flags])
    return out


def calibration_report(
    errors,
    widths,
    confidence: float = 0.9,
    species=None,
    structure_ids=None,
    widths_at_levels=None,
    levels=None,
    reference_widths=None,
    bootstrap: int = 0,
    seed: int = 0,
    *,
    n_calibration: int | None = None,
    ood=None,
) -> dict[str, Any]:
    """All METHOD §4 metrics of one calibrator on one set of test sites.

    Parameters
    ----------
    errors, widths : array-like of shape (n,)
        Error norms and half-widths at ``confidence``, eV/Å. ``errors=None`` (the
        errors of an unlabelled SiteTable) raises ValueError "errors: these sites
        carry no reference labels (errors=None); ...".
    confidence : float in (0, 1)
    species : array-like of int, shape (n,), optional
        Atomic numbers; enables ``species_coverage`` / ``worst_species_coverage``.
    structure_ids : array-like of int, shape (n,), optional
        Enables the structure-level metrics and the bootstrap, and sets the test size
        (number of structures) of the expected coverage interval.
    widths_at_levels : array-like of shape (n, k), optional
        Half-widths at each of ``levels``; enables ``miscalibration_area``.
    levels : array-like of shape (k,), optional
        Defaults to :data:`CALIBRATION_LEVELS` (then k must be 19); ignored
        without ``widths_at_levels``.
    reference_widths : array-like, optional
        Widths of global split CP on the same sites; enables ``width_ratio``.
    bootstrap : int
        Number of by-structure bootstrap resamples for ``coverage_ci`` and
        ``spearman_ci`` (0 = none; > 0 needs ``structure_ids``).
    seed : int
        Seeds ``spearman_ideal`` and the bootstrap.
    n_calibration : int >= 1, optional, keyword-only
        Number of calibration **structures** behind the conformal factor. Enables
        ``coverage_expected_lo``/``_hi``: the central 95 % interval of the coverage
        expected for that calibration size (and, with ``structure_ids``, for the number
        of test structures), see :func:`expected_coverage_interval`; and
        ``coverage_outside_expected`` (True when ``coverage`` falls outside it).
    ood : array-like of bool, shape (n,), optional, keyword-only
        Per-site "outside the calibration domain" flags. Enables ``ood_fraction`` and the
        coverage of the in-domain and out-of-domain sites (each None when that group is empty).

    Returns
    -------
    dict
        Keys :data:`REPORT_KEYS` (plus ``coverage_ci``, ``spearman_ci`` when
        ``bootstrap > 0``); values are plain Python numbers, bools, strings, None,
        lists or dicts with string keys, so ``json.dumps`` works.
    """
    e, w = _check_pair(errors, widths)
    n = e.shape[0]
    c = _check_level("confidence", confidence)
    bootstrap = check_int("bootstrap", bootstrap, 0)
    ids = None if structure_ids is None else _check_groups("structure_ids", structure_ids, n)
    if bootstrap > 0 and ids is None:
        raise ValueError("bootstrap: needs structure_ids (the bootstrap resamples whole structures), got None")
    report = _site_metrics(e, w, c, reference_widths, seed)
    report.update(_group_metrics(e, w, species, ids, widths_at_levels, levels))
    report = {k: report[k] for k in REPORT_KEYS if k in report}  # the documented key order
    n_structures = report["n_structures"]
    report.update(_spread_and_domain(e, w, c, report["coverage"], n_structures, n_calibration, ood))
    if bootstrap > 0:
        report["coverage_ci"] = list(bootstrap_ci(e, w, ids, coverage, bootstrap, seed))
        report["spearman_ci"] = list(bootstrap_ci(e, w, ids, spearman, bootstrap, seed))
    return report


def _site_metrics(e: np.ndarray, w: np.ndarray, c: float, reference_widths, seed: int) -> dict[str, Any]:
    """The per-site entries of a report (everything that needs neither species nor structures)."""
    rho, note = correlation_or_reason(e, w, "spearman")
    return {
        "n_sites": int(e.shape[0]),
        "confidence": c,
        "coverage": coverage(e, w),
        "coverage_gap": coverage_gap(e, w, c),
        "mean_width": mean_width(w),
        "width_ratio": None if reference_widths is None else width_ratio(w, reference_widths),
        "spearman": _float(rho),
        "spearman_note": note,
        "pearson": _float(pearson(e, w)),
        "spearman_ideal": _float(spearman_ideal(w, c, seed=seed)),
        "auroc": _float(_auroc(e, w, 0.1)),
        "pinball": pinball_loss(e, w, c),
    }


def _group_metrics(e: np.ndarray, w: np.ndarray, species, ids, widths_at_levels, levels) -> dict[str, Any]:
    """The entries that need levels, species or structure ids (None without them)."""
    out: dict[str, Any] = {"n_structures": None, "miscalibration_area": None, "species_coverage": None,
                           "worst_species_coverage": None, "structure_spearman": None, "structure_auroc": None}
    if widths_at_levels is not None:  # levels alone (no widths at them) are ignored
        out["miscalibration_area"] = miscalibration_area(e, widths_at_levels, levels)
    if species is not None:
        per = species_coverage(e, w, species)
        out["species_coverage"] = {str(z): v for z, v in per.items()}
        out["worst_species_coverage"] = min(per.values())
    if ids is not None:
        out["n_structures"] = int(np.unique(ids).shape[0])
        me, mw = structure_maxima(e, w, ids)
        out["structure_spearman"] = _float(spearman(me, mw))
        out["structure_auroc"] = _float(_auroc(me, mw, 0.1))
    return out


def report_table(reports: dict[str, dict]):
    """One row per method, columns :data:`REPORT_COLUMNS` (None -> NaN, booleans -> 1.0/0.0).

    Parameters
    ----------
    reports : dict of label -> report from :func:`calibration_report`
        Reports without the newer keys (e.g. read from an older JSON file) get NaN there.

    Returns
    -------
    pandas.DataFrame
        Index named ``method``.
    """
    import pandas as pd

    if not isinstance(reports, dict) or not reports:
        raise ValueError(f"reports: expected a non-empty dict of label -> report, got {type(reports).__name__}")
    rows = []
    for label, rep in reports.items():
        if not isinstance(rep, dict):
            raise ValueError(f"reports[{label!r}]: expected a report dict, got {type(rep).__name__}")
        rows.append([_cell(rep.get(k)) for k in REPORT_COLUMNS])
    df = pd.DataFrame(rows, index=pd.Index([str(k) for k in reports], name="method"), columns=REPORT_COLUMNS)
    for col in REPORT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _cell(value):
    return float(value) if isinstance(value, (bool, np.bool_)) else value
